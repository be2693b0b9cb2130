"""The segmentation interface every backend implements, and what each backend declares.

A backend turns a CT :class:`~spine_idc.volume.Volume` (HU) into a
:class:`SegmentationResult`: a whole-vertebra label map and a vertebral-body label map, both on
the input grid with values from :mod:`spine_idc.coding`, plus a :class:`QCRecord` that says how
sure the backend is and why.

Each backend class carries a :class:`Declaration`: its name, its version, the dataclass of its
own options (the ``segment`` keys it reads, with defaults and documentation) and the
:class:`Resources` a segment job needs for it.  The configuration validates the ``segment``
section against the chosen backend's options, and the workflow's rules read the job's memory,
GPU and threads from its resources, so that neither keeps a table keyed by backend name.

:class:`Backend` is what the workflow calls per series; :class:`StagedBackend` is a backend
that splits that call in three (``preprocess``, ``infer``, ``finish``) so that
:mod:`spine_idc.pipeline.segment_runner` can keep a GPU fed.  The registry that finds backends
by name is :mod:`spine_idc.segment` (``__init__``), which imports a backend's module only when it
is asked for, so that GPU backends do not make ``import spine_idc`` pull in torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from ..volume import Volume

log = logging.getLogger(__name__)

#: Per-vertebra QC flags (stable strings: they end up in JSON, the SR and reports).
FLAG_FOV_BORDER = "touches-fov-border"
FLAG_IMPLAUSIBLE_SIZE = "implausible-size"
FLAG_IMPLAUSIBLE_HEIGHT = "implausible-height"
FLAG_UNIDENTIFIED = "unidentified"
FLAG_ANCHOR_CONFLICT = "anchor-conflict"
FLAG_NO_BODY = "no-body"
FLAG_IMPLAUSIBLE_SPACING = "implausible-spacing"
#: Transitional anatomy (13 rib-bearing vertebrae, 6 lumbar ones): named by VerSe's rules.
FLAG_TRANSITIONAL = "transitional"


@dataclasses.dataclass
class Anchor:
    """One landmark used (or considered) to name the vertebrae.

    Attributes
    ----------
    kind:
        ``"sacrum"`` (the lowest segment is the sacrum, so the one above is L5),
        ``"lowest-rib"`` (the lowest rib-bearing vertebra with a rib-free one below is T12) or
        ``"highest-rib"`` (the highest rib-bearing vertebra with a rib-free one above is T1)
        or ``"dens"`` (the vertebra whose dens stands behind C1's anterior arch is C2).
    position:
        Cranio-caudal index (0 = most cranial vertebra found) of the vertebra the anchor names.
    level:
        The level name the anchor gives that vertebra (``"sacrum"``, ``"T12"``, ``"T1"``).
    used:
        Whether the final naming follows this anchor (false when it was outvoted).
    """

    kind: str
    position: int
    level: str
    used: bool = True


@dataclasses.dataclass
class VertebraQC:
    """QC facts about one labelled vertebra.

    ``axis_lps`` is the unit vector of the local spine axis at this vertebra in DICOM patient
    coordinates (LPS), pointing cranially; measurements use it to orient body heights.
    """

    label: int
    name: str
    voxels: int
    volume_ml: float
    body_voxels: int
    body_height_mm: float | None
    centroid_lps: tuple[float, float, float]
    axis_lps: tuple[float, float, float]
    flags: list[str] = dataclasses.field(default_factory=list)
    rib_sides: int = 0  # sides (0-2) on which a rib was seen attached: the rib anchors' evidence
    #: How sure the backend is of this vertebra's name (0..1), calibrated against measured
    #: errors; unidentified vertebrae carry a low value, their name is not claimed.
    confidence: float = 0.0


@dataclasses.dataclass
class StructureQC:
    """QC facts about a labelled structure that is not a vertebra: an intervertebral disc (with
    the vertebrae it joins, cranial first) or the spinal canal.  A disc's name is as sure as the
    less sure of its two vertebrae' names."""

    label: int
    name: str
    voxels: int
    volume_ml: float
    between: list[str] = dataclasses.field(default_factory=list)
    flags: list[str] = dataclasses.field(default_factory=list)
    confidence: float = 0.0


@dataclasses.dataclass
class QCRecord:
    """What a backend found and how far to trust it; serialises to JSON with :meth:`to_dict`.

    Attributes
    ----------
    series_key:
        The series this record is about.
    backend, version:
        The backend that produced it.
    levels:
        Level names in cranio-caudal order (``"T11"``, ``"L1"``, ``"vertebra1"`` ...).
    anchors:
        Anchors found, in the order they were considered; ``used`` says which ones the naming
        follows.
    confidence:
        0..1, the backend's overall confidence in the naming and the masks.
    vertebrae:
        One :class:`VertebraQC` per label, cranio-caudal.
    warnings:
        Free-text notes for people (anchor conflicts, skipped steps ...).
    timing_s:
        Wall time of the backend's steps, in seconds.
    thresholds_hu:
        Image-derived thresholds the backend settled on (for a person checking an odd result).
    structures:
        One :class:`StructureQC` per disc (cranio-caudal) and for the canal, from backends that
        label them.
    """

    series_key: str
    backend: str
    version: str
    levels: list[str] = dataclasses.field(default_factory=list)
    anchors: list[Anchor] = dataclasses.field(default_factory=list)
    confidence: float = 0.0
    vertebrae: list[VertebraQC] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    timing_s: dict[str, float] = dataclasses.field(default_factory=dict)
    thresholds_hu: dict[str, float] = dataclasses.field(default_factory=dict)
    structures: list[StructureQC] = dataclasses.field(default_factory=list)

    @property
    def flags(self) -> dict[int, list[str]]:
        """Flags per label value (vertebrae, discs and the canal)."""
        out = {v.label: list(v.flags) for v in self.vertebrae}
        out.update({s.label: list(s.flags) for s in self.structures})
        return out

    @property
    def axis_lps(self) -> dict[int, tuple[float, float, float]]:
        """Anatomical (cranial) axis per label value, unit vectors in LPS."""
        return {v.label: tuple(v.axis_lps) for v in self.vertebrae}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; label-keyed maps (``flags``, ``axis_lps``) have string keys."""
        data = dataclasses.asdict(self)
        data["flags"] = {str(k): v for k, v in self.flags.items()}
        data["axis_lps"] = {str(k): list(v) for k, v in self.axis_lps.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QCRecord":
        data = dict(data)
        # Derived views are recomputed from ``vertebrae``; extra keys added by callers (such as
        # the workflow's ``algorithm``) are not part of the record.
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        data["anchors"] = [Anchor(**a) for a in data.get("anchors", [])]
        data["vertebrae"] = [
            VertebraQC(
                **{
                    **v,
                    "centroid_lps": tuple(v["centroid_lps"]),
                    "axis_lps": tuple(v["axis_lps"]),
                }
            )
            for v in data.get("vertebrae", [])
        ]
        data["structures"] = [StructureQC(**s) for s in data.get("structures", [])]
        return cls(**data)


@dataclasses.dataclass
class SegmentationResult:
    """A backend's output.

    Attributes
    ----------
    labels:
        Whole vertebrae (body and posterior elements; no ribs) on the input CT grid, and, from
        backends that find them, the intervertebral discs and the spinal canal; ``uint8`` or
        ``uint16``, values from :mod:`spine_idc.coding`, 0 = background.
    bodies:
        The same values restricted to the vertebral bodies (for trabecular HU and heights).
    qc:
        The backend's :class:`QCRecord`.
    """

    labels: Volume
    bodies: Volume
    qc: QCRecord


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one segment job asks of the machine for a backend (read by ``workflow/rules``).

    Attributes
    ----------
    mem_mb:
        Memory of the job, MB.  The shard pipeline holds at most three series at once (loading,
        inferring, writing), so this does not grow with the shard.
    gpu:
        Whether the backend runs on a GPU when its options allow one (a ``device: cpu`` option
        pins it to the CPU: see :meth:`Declaration.resources_for`).
    threads:
        CPU threads: the loader and writer threads beside a GPU, or the one the method uses.
    """

    mem_mb: int
    gpu: bool = False
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What a backend class says about itself, before it is built (building one may load a model).

    Attributes
    ----------
    name:
        The ``segment.backend`` value that chooses it (its key in the registry).
    version:
        The version of spine-idc's method (or adapter) for this backend.  A built backend's own
        ``version``, recorded in the QC record and the SEG, may add what it loaded (library
        versions, the weights' checksum).
    options:
        A frozen dataclass of the backend's own ``segment`` keys, each with its default; its
        docstring documents them.  The backend is built as ``cls(**asdict(options))``.
    resources:
        What a segment job needs for it.
    check:
        Optional: ``check(options)`` raises :class:`~spine_idc.errors.ConfigError` when what
        the options name (a model folder, weights) is not on this machine, so that a run
        without them stops before any job starts.  Looks at files only; builds nothing.
    identity:
        Optional: ``identity(options)`` is what, beyond the options, a result depends on (the
        weights' checksum, a library's version); a change redoes the segmentation.
    """

    name: str
    version: str
    options: type
    resources: Resources
    check: Callable[[Any], None] | None = None
    identity: Callable[[Any], str] | None = None

    def resources_for(self, options: Any) -> Resources:
        """The job's resources under ``options``: no GPU where the backend is told ``device: cpu``."""
        if self.resources.gpu and getattr(options, "device", None) == "cpu":
            return dataclasses.replace(self.resources, gpu=False)
        return self.resources


@runtime_checkable
class Backend(Protocol):
    """What the workflow needs from a segmentation backend.

    A backend class also carries ``declaration`` (a :class:`Declaration`) and is built from its
    options as ``cls(**dataclasses.asdict(options))``; :func:`spine_idc.segment.build` does both.
    ``parameters``, when a backend sets it, goes into the SEG's algorithm identification
    instead of its options (a network's says which weights ran).
    """

    declaration: ClassVar[Declaration]
    name: str
    version: str

    def segment(self, ct: Volume, *, series_key: str) -> SegmentationResult:
        """Segment and name the vertebrae of ``ct`` (HU).

        Raises
        ------
        spine_idc.errors.SegmentationError
            With reason ``"no-spine"`` when the volume shows no spine.
        """
        ...


@runtime_checkable
class StagedBackend(Backend, Protocol):
    """A backend whose ``segment`` is three steps the shard pipeline runs on separate threads.

    ``preprocess`` (a loader thread: the next series onto the network's grid), ``infer`` (the
    calling thread: the network, one series at a time) and ``finish`` (a writer thread: back
    to the CT's grid, bodies, QC).  ``segment`` is the three in a row.
    """

    def preprocess(self, ct: Volume, series_key: str) -> Any:
        """The series ready for inference (the item ``infer`` and ``finish`` take)."""
        ...

    def infer(self, item: Any, series_key: str) -> tuple:
        """The network's output for ``item``: the extra arguments of ``finish``."""
        ...

    def finish(self, item: Any, *outcome: Any) -> SegmentationResult:
        """``finish(item, *infer(item, key), key)``: the result on the CT's grid."""
        ...
