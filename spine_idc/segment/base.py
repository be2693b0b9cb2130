"""The segmentation interface every backend implements, and the registry that finds backends.

A backend turns a CT :class:`~spine_idc.volume.Volume` (HU) into a
:class:`SegmentationResult`: a whole-vertebra label map and a vertebral-body label map, both on
the input grid with values from :mod:`spine_idc.coding`, plus a :class:`QCRecord` that says how
sure the backend is and why.

Backends are looked up by name with :func:`get_backend`.  The registry maps a name to
``"module:attribute"`` and imports the module only when that backend is asked for, so GPU
backends (MONAI, TotalSegmentator) can be registered here without making ``import spine_idc``
pull in torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
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
        ``"highest-rib"`` (the highest rib-bearing vertebra with a rib-free one above is T1).
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


@runtime_checkable
class Backend(Protocol):
    """What the workflow needs from a segmentation backend."""

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


#: name -> "module:attribute" of a class (or factory) taking keyword options.  GPU backends are
#: added here by the issues that implement them; their modules are imported only on request.
_REGISTRY: dict[str, str] = {
    "classical": "spine_idc.segment.classical:ClassicalBackend",
    "monai": "spine_idc.segment.networks.monai:MonaiBackend",
    "totalsegmentator": "spine_idc.segment.networks.totalseg:TotalSegmentatorBackend",
}


def available_backends() -> list[str]:
    """Names :func:`get_backend` accepts."""
    return sorted(_REGISTRY)


def backend_factory(name: str):
    """The class (or factory) registered as ``name``; imports its module."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown segmentation backend {name!r}; choose one of: "
            + ", ".join(available_backends())
        )
    module_name, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend called ``name`` with its keyword ``options``.

    Raises
    ------
    ConfigError
        If ``name`` is not a known backend (the message lists the choices) or an option is not
        one the backend takes.
    """
    factory = backend_factory(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ConfigError(
                f"segmentation backend {name!r} does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(sorted(params)) or 'none'}"
            )
    return factory(**options)
