"""The state of one run of the classical segmenter, passed from step to step.

Each step (:mod:`.backend`'s ``prepare``, ``find_bodies`` and ``grow``, then :mod:`.grow`,
:mod:`.softparts`, :mod:`.ribs`, :mod:`.sacrum` and :mod:`.levels`) reads what the earlier
ones left here and adds its own; keeping it in one record also lets a developer stop after
any step and look.  It lives in its own module so that the steps depend on it, not on the
backend that runs them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .axis import Centreline
    from .canal import CanalTrack
    from .column import Column
    from .dens import Dens
    from .discs import Disc
    from .vertebrae import BodyRun, Straightened


@dataclasses.dataclass
class SacrumEvidence:
    """What the lowest segments show.

    ``index`` is the internal index (caudal to cranial) of the most cranial sacrum-like
    segment (``None`` if none), ``alae_mm`` its left and right ala thickness, ``ilium`` whether
    an iliac bone was seen on each side (``None``: outside the view), ``verified`` whether it
    may name the levels, and ``reason`` a sentence for the QC record.
    """

    index: int | None = None
    alae_mm: tuple[float, float] = (0.0, 0.0)
    ilium: tuple[bool | None, bool | None] = (None, None)
    verified: bool = False
    reason: str = ""


@dataclasses.dataclass
class Work:
    """Intermediate state of one run, kept together for the later steps and for debugging."""

    hu: np.ndarray  # working-grid HU (float32), cropped to the spine
    affine: np.ndarray  # voxel -> LPS of ``hu``
    spacing: float
    inside: np.ndarray | None = None  # voxels inside the CT's field of view
    canal_core: np.ndarray | None = None  # a thin tube along the tracked canal: never bone
    track: CanalTrack | None = None  # in voxels of ``hu``
    cortical_hu: float = 0.0  # half the brightness of the spine's cortical bone
    bone_hu: float = 0.0  # bone against soft tissue: the column's own threshold
    joint_hu: float = 0.0  # bone that leaves a gap at blurred joints (rib heads, facets)
    disc_hu: float = 0.0  # how bright the discs are at their darkest
    strict: np.ndarray | None = None  # bone above ``joint_hu``
    full: np.ndarray | None = None  # bone above ``bone_hu``
    line: Centreline | None = None
    column: Column | None = None
    disc_evidence: np.ndarray | None = None
    found_discs: list[Disc] = dataclasses.field(default_factory=list)
    seen: tuple[int, int] = (0, 0)  # first and last plane the column was seen in
    probe: bool = False  # bodies[0] is a tentative segment below the lowest disc (the sacrum?)
    probe_replaced: list = dataclasses.field(default_factory=list)  # what the probe stood for
    canal_r: float = 0.0
    canal_hw: float = 0.0
    planes: Straightened | None = None
    bodies: list[BodyRun] = dataclasses.field(default_factory=list)
    labels: np.ndarray | None = None  # vertebra index 1..n, caudal to cranial
    body_labels: np.ndarray | None = None
    other: np.ndarray | None = None  # bone handed to ribs / ilium / other
    sacrum: bool = False  # bodies[0] is sacrum-like (its pieces merged)
    sacrum_evidence: SacrumEvidence | None = None
    conflict: bool = False  # naming anchors disagree
    notes: list[str] = dataclasses.field(default_factory=list)  # for the QC warnings
    discs: list = dataclasses.field(default_factory=list)  # DiscPlane between bodies k, k+1
    disc_labels: np.ndarray | None = None  # disc index 1..n-1 (joins bodies k, k+1), 0 elsewhere
    canal: np.ndarray | None = None  # the spinal canal over the vertebrae found
    timing: dict[str, float] = dataclasses.field(default_factory=dict)
    coarse_track: CanalTrack | None = None  # the canal as found, on the canal search's grid
    dens: Dens | None = None  # C2's dens and C1's arch at the top of the column (:mod:`.dens`)
    atlas: bool = False  # bodies[-1] is C1 (no body; its planes are the dens')
