"""From a network's level label map to a :class:`SegmentationResult` (shared by network backends).

Networks (the MONAI backend, TotalSegmentator) give one label value per voxel and nothing else.
The workflow also needs the vertebral bodies (for trabecular HU and body heights), a cranial axis
per vertebra and a QC record; this module derives them, the same way for every network backend:

* **one component per level**: a level's largest connected component is kept, stray islands
  (a patch of L3 inside L4, a speck on a rib) are dropped;
* **anatomical order**: the named vertebrae C1..L5 must follow each other from head to feet.
  If their centroids do not, the network's names are kept as a set and re-dealt in the order
  the vertebrae actually lie, with a warning and the ``anchor-conflict`` flag (the names are
  then less certain, and the QC confidence says so);
* **bodies**: a morphological opening with a ball of :data:`BODY_OPENING_MM` removes the thin
  posterior elements (pedicles, laminae, processes are 5-8 mm thick) and keeps the body, which
  is 12-50 mm across at every level; the largest opened piece is the body;
* **axis**: from each vertebra's neighbours' centroids (the local spine direction, cranial).

The flags and the size and height limits are those of the classical backend (:mod:`.levels`),
so QC reads the same whichever backend ran.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import ndimage

from .. import coding
from ..volume import Volume
from . import grid
from .base import (
    FLAG_ANCHOR_CONFLICT,
    FLAG_FOV_BORDER,
    FLAG_IMPLAUSIBLE_HEIGHT,
    FLAG_IMPLAUSIBLE_SIZE,
    FLAG_NO_BODY,
    QCRecord,
    SegmentationResult,
    VertebraQC,
)

log = logging.getLogger(__name__)

#: Radius (mm) of the ball that opens a vertebra down to its body.
BODY_OPENING_MM = 3.5
#: Label values this module treats as bone of the spine (C1..L5, sacrum, S1).
VERTEBRA_VALUES = frozenset(lv.value for lv in coding.LABEL_TABLE if lv.is_vertebra)
#: The values whose cranio-caudal order is checked (S1 and the sacrum overlap in height).
_ORDERED = tuple(lv.value for lv in coding.LEVELS if lv.name != "sacrum")


def level_value(name: str) -> int | None:
    """Our label value for a structure name as networks spell them, or ``None`` if not spine.

    Accepts ``L1``, ``vertebrae_L1`` (TotalSegmentator, MONAI's whole-body bundle),
    ``vertebra L1``, ``L1 vertebra``, ``sacrum``, ``S1``/``vertebrae_S1``, ``spinal_cord``.
    """
    text = name.strip().replace("-", "_").replace(" ", "_").lower()
    for prefix in ("vertebrae_", "vertebra_"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if text.endswith("_vertebra"):
        text = text[: -len("_vertebra")]
    if text in ("sacrum", "spinal_cord"):
        return coding.LEVEL_BY_NAME[text].value
    upper = text.upper()
    if upper in coding.LEVEL_BY_NAME and upper != "SACRUM":
        return coding.LEVEL_BY_NAME[upper].value
    return None


def largest_components(labels: np.ndarray, values=None) -> np.ndarray:
    """Keep, in place, only the largest 26-connected component of each label value."""
    objs = ndimage.find_objects(labels)
    full = np.ones((3, 3, 3), bool)
    for idx, sl in enumerate(objs):
        value = idx + 1
        if sl is None or (values is not None and value not in values):
            continue
        crop = labels[sl]
        cc, n = ndimage.label(crop == value, structure=full)
        if n > 1:
            sizes = np.bincount(cc.ravel())
            sizes[0] = 0
            crop[(cc != int(np.argmax(sizes))) & (cc > 0)] = 0
    return labels


def _centroids(labels: np.ndarray, values, affine_lps: np.ndarray) -> dict[int, np.ndarray]:
    idx = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, list(values))
    return {v: (affine_lps @ np.r_[c, 1.0])[:3] for v, c in zip(values, idx)}


def order_levels(labels: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, bool]:
    """Re-deal C1..L5 names so they run head to feet; returns (labels, whether names moved)."""
    present = [v for v in _ORDERED if np.any(labels == v)]
    if len(present) < 2:
        return labels, False
    cen = _centroids(labels, present, affine_lps)
    by_height = sorted(present, key=lambda v: -cen[v][2])  # LPS z grows towards the head
    if by_height == present:
        return labels, False
    lut = np.arange(max(int(labels.max()), max(present)) + 1, dtype=labels.dtype)
    for old, new in zip(by_height, present):
        lut[old] = new
    return lut[labels], True


def bodies_of(labels: np.ndarray, spacing: np.ndarray, radius_mm: float = BODY_OPENING_MM) -> np.ndarray:
    """Vertebral bodies: each vertebra opened by a ball of ``radius_mm``, largest piece kept."""
    r = np.maximum(np.round(radius_mm / np.asarray(spacing, float)).astype(int), 1)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    ball = (zz / max(r[0], 1e-9)) ** 2 + (yy / max(r[1], 1e-9)) ** 2 + (xx / max(r[2], 1e-9)) ** 2 <= 1.0
    out = np.zeros_like(labels)
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        value = idx + 1
        if sl is None or value not in VERTEBRA_VALUES or value == coding.SACRUM_VALUE:
            continue
        pad = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[pad] == value
        opened = ndimage.binary_opening(mask, structure=ball)
        cc, n = ndimage.label(opened)
        if n == 0:
            continue
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        out[pad][cc == int(np.argmax(sizes))] = value
    return out


def _axes(order: list[int], cen: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Cranial unit axis per vertebra from its neighbours' centroids (head first in ``order``)."""
    axes = {}
    for i, v in enumerate(order):
        up = cen[order[max(i - 1, 0)]]
        down = cen[order[min(i + 1, len(order) - 1)]]
        d = up - down
        n = np.linalg.norm(d)
        axes[v] = d / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])
    return axes


def _height(bodies: np.ndarray, value: int, affine_lps: np.ndarray, axis: np.ndarray) -> float | None:
    pts = np.argwhere(bodies == value)
    if len(pts) < 10:
        return None
    mm = pts @ affine_lps[:3, :3].T
    h = mm @ axis
    step = float(np.abs(affine_lps[:3, :3].T @ axis).max())  # one voxel along the axis, about
    return float(np.percentile(h, 99) - np.percentile(h, 1) + step)


def finish_labels(
    ct: Volume,
    labels: np.ndarray,
    *,
    series_key: str,
    backend: str,
    version: str,
    timing: dict | None = None,
    warnings: list[str] | None = None,
    components_done: bool = False,
) -> SegmentationResult:
    """A network's label map (our values, on ``ct``'s grid) -> labels, bodies and QC record.

    ``components_done`` says the caller already kept one component per level (the MONAI
    backend does that on the GPU).  Values that are not spine (the cord) are kept in the label
    map but get no vertebra record.
    """
    t = time.perf_counter()
    warnings = list(warnings or [])
    labels = np.ascontiguousarray(labels)
    if labels.shape != ct.array.shape:
        raise ValueError(f"label map {labels.shape} is not on the CT grid {ct.array.shape}")
    dtype = np.uint8 if int(labels.max(initial=0)) <= 255 else np.uint16
    labels = labels.astype(dtype, copy=False)
    aff = grid.lps_affine(ct)
    if not components_done:
        largest_components(labels)
    labels, moved = order_levels(labels, aff)
    if moved:
        warnings.append("the network's levels were out of head-to-feet order: names re-dealt by position")
    bodies = bodies_of(labels, ct.spacing)
    present = [v for v in np.unique(labels) if v in VERTEBRA_VALUES]
    cen = _centroids(labels, present, aff) if present else {}
    order = sorted(present, key=lambda v: coding.level_for_value(int(v)).rank)
    axes = _axes(order, cen)
    counts = np.bincount(labels.ravel(), minlength=int(max(present, default=0)) + 1)
    body_counts = np.bincount(bodies.ravel(), minlength=len(counts))
    touching = {int(v) for f in (labels[0], labels[-1], labels[:, 0], labels[:, -1],
                                 labels[:, :, 0], labels[:, :, -1]) for v in np.unique(f) if v}
    vox_ml = ct.voxel_volume_mm3 / 1000.0
    records = []
    for v in order:
        v = int(v)
        level = coding.level_for_value(v)
        flags = [FLAG_ANCHOR_CONFLICT] if moved else []
        if v in touching:
            flags.append(FLAG_FOV_BORDER)
        vol = float(counts[v] * vox_ml)
        height = _height(bodies, v, aff, axes[v]) if v != coding.SACRUM_VALUE else None
        if v != coding.SACRUM_VALUE:
            if body_counts[v] == 0:
                flags.append(FLAG_NO_BODY)
            if v not in touching:
                if not 1.5 <= vol <= 200.0:
                    flags.append(FLAG_IMPLAUSIBLE_SIZE)
                if height is None or not 6.0 <= height <= 45.0:
                    flags.append(FLAG_IMPLAUSIBLE_HEIGHT)
        records.append(VertebraQC(
            label=v, name=level.name, voxels=int(counts[v]), volume_ml=round(vol, 3),
            body_voxels=int(body_counts[v]),
            body_height_mm=None if height is None else round(height, 2),
            centroid_lps=tuple(round(float(c), 2) for c in cen[v]),
            axis_lps=tuple(round(float(a), 5) for a in axes[v]), flags=flags))
    bad = sum(1 for r in records if {FLAG_IMPLAUSIBLE_SIZE, FLAG_IMPLAUSIBLE_HEIGHT, FLAG_NO_BODY} & set(r.flags))
    confidence = 0.0 if not records else round((0.6 if moved else 0.9) * (1.0 - 0.5 * bad / len(records)), 3)
    timing = dict(timing or {})
    timing["finish"] = round(time.perf_counter() - t, 3)
    qc = QCRecord(series_key=series_key, backend=backend, version=version,
                  levels=[r.name for r in records], confidence=confidence, vertebrae=records,
                  warnings=warnings, timing_s=timing)
    return SegmentationResult(labels=Volume(labels, ct.affine.copy()),
                              bodies=Volume(bodies, ct.affine.copy()), qc=qc)
