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
* **axis**: from each vertebra's neighbours' centroids (the local spine direction, cranial);
* **spacing**: the distance between the centroids of any two named vertebrae must fit the
  levels between them (:data:`PITCH_MM`, within :data:`PITCH_RATIO`): five lumbar names on 5 cm
  of thoracic spine, or "neighbours" 12 cm apart, are flagged ``implausible-spacing``, however
  good each mask looks.

The flags and the size and height limits are those of the classical backend (:mod:`.levels`),
so QC reads the same whichever backend ran.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import ndimage

from ... import coding
from ...volume import Volume
from .. import grid
from ..base import (
    FLAG_ANCHOR_CONFLICT,
    FLAG_FOV_BORDER,
    FLAG_IMPLAUSIBLE_HEIGHT,
    FLAG_IMPLAUSIBLE_SIZE,
    FLAG_IMPLAUSIBLE_SPACING,
    FLAG_NO_BODY,
    QCRecord,
    SegmentationResult,
    VertebraQC,
)

log = logging.getLogger(__name__)

#: Radius (mm) of the ball that opens a vertebra down to its body.
BODY_OPENING_MM = 3.5
#: Expected centroid-to-centroid distance (mm) from a level to the next one down: body height
#: plus the disc below, rough adult figures (the phantom's anatomy table has the same sizes).
#: By region: C2..C7, T1..T6, T7..T12, L1..L4 (L5's next is the sacrum, not checked).
PITCH_MM = {"C": 18.0, "T_upper": 22.0, "T_lower": 27.0, "L": 36.0}
#: Observed over expected distance outside this range flags both neighbours (wide enough for
#: small and large adults, a kyphotic curve and partial volumes; not for a level's name being
#: wrong by two or more).
PITCH_RATIO = (0.5, 1.8)
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


#: 26-connectivity: voxels touching by a corner belong together.
FULL = np.ones((3, 3, 3), bool)


def largest_piece(mask: np.ndarray, structure=FULL) -> np.ndarray:
    """The largest connected piece of ``mask`` (all False when the mask is empty)."""
    cc, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return cc > 0
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    return cc == int(np.argmax(sizes))


def largest_components(labels: np.ndarray, values=None) -> np.ndarray:
    """Keep, in place, only the largest 26-connected component of each label value."""
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        value = idx + 1
        if sl is None or (values is not None and value not in values):
            continue
        crop = labels[sl]
        mask = crop == value
        crop[mask & ~largest_piece(mask)] = 0
    return labels


def _boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every value present (one pass over the volume)."""
    return {i + 1: sl for i, sl in enumerate(ndimage.find_objects(labels)) if sl is not None}


def _centroids(labels: np.ndarray, values, affine_lps: np.ndarray, boxes=None) -> dict[int, np.ndarray]:
    boxes = boxes if boxes is not None else _boxes(labels)
    out = {}
    for v in values:
        sl = boxes[v]
        idx = np.argwhere(labels[sl] == v).mean(axis=0) + [s.start for s in sl]
        out[v] = (affine_lps @ np.r_[idx, 1.0])[:3]
    return out


def order_levels(labels: np.ndarray, affine_lps: np.ndarray, boxes=None) -> tuple[np.ndarray, bool]:
    """Re-deal C1..L5 names so they run head to feet; returns (labels, whether names moved)."""
    boxes = boxes if boxes is not None else _boxes(labels)
    present = [v for v in _ORDERED if v in boxes]
    if len(present) < 2:
        return labels, False
    cen = _centroids(labels, present, affine_lps, boxes)
    by_height = sorted(present, key=lambda v: -cen[v][2])  # LPS z grows towards the head
    if by_height == present:
        return labels, False
    lut = np.arange(max(int(labels.max()), max(present)) + 1, dtype=labels.dtype)
    for old, new in zip(by_height, present):
        lut[old] = new
    return lut[labels], True


def bodies_of(labels: np.ndarray, spacing: np.ndarray, radius_mm: float = BODY_OPENING_MM,
              boxes=None) -> np.ndarray:
    """Vertebral bodies: each vertebra opened by a ball of ``radius_mm``, largest piece kept.

    The opening is computed with two Euclidean distance transforms in mm (erosion: farther than
    ``radius_mm`` from the background; dilation back: within ``radius_mm`` of what is left),
    whose cost does not grow with the radius as a structuring element's does.
    """
    boxes = boxes if boxes is not None else _boxes(labels)
    spacing = np.asarray(spacing, float)
    margin = np.ceil(radius_mm / spacing).astype(int) + 1
    out = np.zeros_like(labels)
    for value, sl in boxes.items():
        if value not in VERTEBRA_VALUES or value == coding.SACRUM_VALUE:
            continue
        pad = tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                    for s, m, n in zip(sl, margin, labels.shape))
        mask = labels[pad] == value
        inner = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > radius_mm
        if not inner.any():
            continue
        opened = (ndimage.distance_transform_edt(~inner, sampling=spacing) <= radius_mm) & mask
        out[pad][largest_piece(opened, structure=None)] = value
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


def _height(bodies: np.ndarray, value: int, affine_lps: np.ndarray, axis: np.ndarray, box) -> float | None:
    if box is None:
        return None
    pts = np.argwhere(bodies[box] == value) + [s.start for s in box]
    if len(pts) < 10:
        return None
    mm = pts @ affine_lps[:3, :3].T
    h = mm @ axis
    step = float(np.abs(affine_lps[:3, :3].T @ axis).max())  # one voxel along the axis, about
    return float(np.percentile(h, 99) - np.percentile(h, 1) + step)


def _pitch(name: str) -> float | None:
    """Expected distance (mm) from level ``name`` to the next level down; None if unchecked."""
    if name in ("C1", "L5") or name[0] not in "CTL":  # C1 has no body; below L5 the sacrum
        return None
    if name[0] == "T":
        return PITCH_MM["T_upper"] if int(name[1:]) <= 6 else PITCH_MM["T_lower"]
    return PITCH_MM[name[0]]


def _badly_spaced(order: list[int], centroids: dict, touching: set[int]) -> set[int]:
    """Values of named vertebrae whose distance to another named vertebra does not fit the
    levels between them: every pair is judged, so a run of names squeezed into too short a
    stretch is caught even when neighbours alone would pass.  A vertebra cut by the field of
    view has its centroid up to half a level off, so each cut end widens the bounds by that."""
    bad: set[int] = set()
    for i, upper in enumerate(order):
        for lower in order[i + 1:]:
            a, b = coding.level_for_value(upper), coding.level_for_value(lower)
            if a.index < 0 or b.index <= a.index:
                continue  # S1 and the cord have no place in the sequence
            pitches = [_pitch(lv.name) for lv in coding.LEVELS[a.index:b.index]]
            if None in pitches:
                continue
            expected = sum(pitches)
            slack = 0.5 * ((pitches[0] if upper in touching else 0.0)
                           + (pitches[-1] if lower in touching else 0.0))
            found = float(np.linalg.norm(np.subtract(centroids[upper], centroids[lower])))
            if not PITCH_RATIO[0] * expected - slack <= found <= PITCH_RATIO[1] * expected + slack:
                log.info("%s to %s: %.0f mm between centroids, %.0f mm expected", a.name, b.name,
                         found, expected)
                bad |= {upper, lower}
    return bad


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
    boxes = _boxes(labels)
    labels, moved = order_levels(labels, aff, boxes)
    if moved:
        warnings.append("the network's levels were out of head-to-feet order: names re-dealt by position")
        boxes = _boxes(labels)
    bodies = bodies_of(labels, ct.spacing, boxes=boxes)
    body_boxes = _boxes(bodies)
    present = [v for v in boxes if v in VERTEBRA_VALUES]
    cen = _centroids(labels, present, aff, boxes)
    order = sorted(present, key=lambda v: coding.level_for_value(int(v)).rank)
    axes = _axes(order, cen)
    # Counted inside each level's box: a bincount of the whole volume costs more than all
    # the rest of the QC (it widens 80 M label bytes to 8-byte counts indices).
    counts = {v: int(np.count_nonzero(labels[boxes[v]] == v)) for v in present}
    body_counts = {v: int(np.count_nonzero(bodies[body_boxes[v]] == v)) if v in body_boxes else 0
                   for v in present}
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
        height = (_height(bodies, v, aff, axes[v], body_boxes.get(v))
                  if v != coding.SACRUM_VALUE else None)
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
    for v in _badly_spaced(order, cen, touching):
        records[order.index(v)].flags.append(FLAG_IMPLAUSIBLE_SPACING)
    bad = sum(1 for r in records if {FLAG_IMPLAUSIBLE_SIZE, FLAG_IMPLAUSIBLE_HEIGHT, FLAG_NO_BODY,
                                     FLAG_IMPLAUSIBLE_SPACING} & set(r.flags))
    confidence = 0.0 if not records else round((0.6 if moved else 0.9) * (1.0 - 0.5 * bad / len(records)), 3)
    timing = dict(timing or {})
    timing["finish"] = round(time.perf_counter() - t, 3)
    qc = QCRecord(series_key=series_key, backend=backend, version=version,
                  levels=[r.name for r in records], confidence=confidence, vertebrae=records,
                  warnings=warnings, timing_s=timing)
    return SegmentationResult(labels=Volume(labels, ct.affine.copy()),
                              bodies=Volume(bodies, ct.affine.copy()), qc=qc)
