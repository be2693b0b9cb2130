"""What every quantity is measured on: one vertebra's voxels, its body's, and the CT."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..volume import Volume


def to_lps(idx: np.ndarray, m_lps: np.ndarray) -> np.ndarray:
    """Voxel indices -> LPS mm through the voxel-to-LPS matrix ``m_lps``."""
    return idx @ m_lps[:3, :3].T + m_lps[:3, 3]


@dataclasses.dataclass
class Vertebra:
    """One label value of the label map, ready to be measured.

    A quantity module (see :mod:`spine_idc.measure`) reads what it needs from here and returns
    its fields: ``FIELDS`` (``(name, type)`` pairs, or ``(name, type, field)``), ``measure(v)
    -> dict`` and ``sr_items(m, site) -> list`` of highdicom measurements.
    """

    value: int
    level: str
    ct: Volume
    m_lps: np.ndarray  # voxel -> LPS (mm)
    box: tuple[slice, ...]  # the label's bounding box in the label map
    shape: tuple[int, ...]  # the label map's shape
    idx: np.ndarray  # voxel indices of the whole vertebra
    pts: np.ndarray  # the same voxels' centres in LPS (mm)
    options: dict[str, Any]  # the measure section's options (``erosion_mm``)
    axis_lps: tuple[float, float, float] | None = None  # the spine's long axis, if known
    body_box: tuple[slice, ...] | None = None
    body_mask: np.ndarray | None = None  # the body's voxels within ``body_box``
    body_pts: np.ndarray | None = None  # the body's voxel centres in LPS (mm)

    @property
    def spacing(self) -> np.ndarray:
        return self.ct.spacing

    @property
    def centroid(self) -> np.ndarray:
        return self.pts.mean(axis=0)
