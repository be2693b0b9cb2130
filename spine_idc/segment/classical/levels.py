"""The QC record of the classical backend, and the way back to the CT grid.

Names come from :mod:`.naming` (verified anchors only: the sacrum, the lowest and the highest
rib-bearing vertebra; withheld when they disagree or do not fit the ribs or the spacing), rib
evidence from :mod:`.ribs`.  Here the labels are mapped back onto the CT's own grid (nearest
neighbour through the affines) and every vertebra gets its QC facts: volume, body height,
centroid, axis, rib sides, the confidence of its name, and flags.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

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
    FLAG_NO_BODY,
    FLAG_TRANSITIONAL,
    FLAG_UNIDENTIFIED,
    QCRecord,
    SegmentationResult,
    VertebraQC,
)
from .grow import trim_skirt
from .naming import name_vertebrae
from .ribs import RibSides, RibState, find_ribs

if TYPE_CHECKING:  # pragma: no cover
    from ..base import Backend
    from .work import Work

log = logging.getLogger(__name__)

#: A name on a mask that looks wrong (too big or small, too tall: a segment spanning two
#: levels, or half a body) is less sure: its confidence is multiplied by this.
BAD_MASK = {FLAG_IMPLAUSIBLE_SIZE, FLAG_IMPLAUSIBLE_HEIGHT, FLAG_NO_BODY}
BAD_MASK_FACTOR = 0.6
#: A piece smaller than this (mL) on the CT's grid, at the edge of the view, is a sliver of a
#: vertebra the view cuts off: not reported as one (but said in the warnings).
MIN_REPORTED_ML = 1.0


def _level_lengths(work: "Work") -> list[float | None]:
    """Each vertebra's length (mm) from the disc below to the disc above, where both are in
    view."""
    centres = sorted(d.centre for d in work.found_discs)
    out: list[float | None] = []
    reach = 12.0 / work.spacing
    for b in work.bodies:
        below = [c for c in centres if b.start - reach <= c <= b.start + 1]
        above = [c for c in centres if b.stop - 1 <= c <= b.stop + reach]
        out.append((above[0] - below[-1]) * work.spacing if below and above else None)
    return out


def _complete(work: "Work") -> list[bool]:
    """Whether each vertebra lies wholly within the stretch the column was seen over."""
    lo, hi = work.seen
    margin = 2
    out = [b.start > lo + margin and b.stop < hi - margin for b in work.bodies]
    if work.atlas:  # the column ends at the dens' tip: C2 and C1 are whole
        out[-1] = out[-2] = work.bodies[-2].start > lo + margin
    return out


def finish(
    work: "Work", ct: Volume, series_key: str, backend: "Backend"
) -> SegmentationResult:
    """Name the vertebrae, map labels to the CT grid, and assemble the QC record."""
    t = time.perf_counter()
    n = len(work.bodies)
    work.conflict = False
    ribs = find_ribs(work)
    if work.atlas:  # C1 never bears ribs; beside it lies the skull's base
        ribs[-1] = RibSides(RibState.NONE, RibState.NONE)
    naming = name_vertebrae(
        ribs, work.sacrum_evidence, work.sacrum, _complete(work), _level_lengths(work),
        [(b.stop - b.start + 1) * work.spacing for b in work.bodies], atlas=work.atlas,
    )
    values, anchors, warnings = naming.values, naming.anchors, list(naming.warnings)
    trim_skirt(work)
    work.conflict = naming.conflict
    lut = np.zeros(n + 2, np.int32)
    lut[1: n + 1] = values
    # No disc joins C1 and C2: the discs join the bodies below.
    last = n - 1 if work.atlas else n
    disc_values, disc_between = _disc_values(values[:last], naming.confidence[:last])
    combined = lut[work.labels]
    if work.disc_labels is not None and disc_values:
        dlut = np.zeros(n + 1, np.int32)
        dlut[1: len(disc_values) + 1] = disc_values
        free = combined == 0
        combined[free] = dlut[work.disc_labels[free]]
    if work.canal is not None:
        combined[(combined == 0) & work.canal] = coding.SPINAL_CANAL_VALUE
    dtype = np.uint8 if max(values + disc_values) <= 255 else np.uint16
    lab_native = grid.labels_to_source_grid(combined, work.affine, ct, dtype=dtype)
    body_native = grid.labels_to_source_grid(lut[work.body_labels], work.affine, ct, dtype=dtype)
    trim_native(lab_native, body_native, ct, [v for v in values if v])
    touching = _touching_border(lab_native)
    vox_ml = ct.voxel_volume_mm3 / 1000.0
    counts = np.bincount(lab_native.ravel(), minlength=max(values) + 1)
    body_counts = np.bincount(body_native.ravel(), minlength=max(values) + 1)
    aff_lps = work.affine
    objs = ndimage.find_objects(work.labels)
    body_objs = ndimage.find_objects(work.body_labels)
    records: list[VertebraQC] = []
    order = sorted(range(n), key=lambda k: -k)  # cranio-caudal
    for k in order:
        value = values[k]
        b = work.bodies[k]
        level = coding.level_for_value(value)
        vol = float(counts[value] * vox_ml) if value < len(counts) else 0.0
        if counts[value] == 0 or (vol < MIN_REPORTED_ML and value in touching):
            # Found along the spine but left with (almost) nothing on the CT's grid, at the
            # edge of the view: not reported as a vertebra, but said.
            warnings.append(f"{level.name}: a sliver at the edge of the view ({vol:.2f} mL), "
                            "not reported")
            continue
        flags: list[str] = []
        if coding.is_unidentified_vertebra(value):
            flags.append(FLAG_UNIDENTIFIED)
        if work.conflict:
            flags.append(FLAG_ANCHOR_CONFLICT)
        if naming.transitional and level.name in ("T13", "L6", "T12", "L5", "sacrum", "L1"):
            flags.append(FLAG_TRANSITIONAL)
        if value in touching:
            flags.append(FLAG_FOV_BORDER)
        nbody = int(body_counts[value]) if value < len(body_counts) else 0
        atlas = work.atlas and k == n - 1  # C1 has no body
        if nbody == 0 and not atlas:
            flags.append(FLAG_NO_BODY)
        height = _body_height(work, k, body_objs[k] if k < len(body_objs) else None)
        cut = value in touching
        if not cut and value != coding.SACRUM_VALUE and not atlas:
            if not 1.5 <= vol <= 200.0:
                flags.append(FLAG_IMPLAUSIBLE_SIZE)
            if (
                height is None or not (6.0 <= height <= 45.0)
                or height > 1.1 * b.width * work.spacing
            ):
                flags.append(FLAG_IMPLAUSIBLE_HEIGHT)
        mid = int(round(b.centre))
        axis = work.line.t[mid] / np.linalg.norm(work.line.t[mid])
        sl = objs[k] if k < len(objs) else None
        if sl is not None:
            pts = np.argwhere(work.labels[sl] == k + 1) + np.array([s.start for s in sl])
            cen = (aff_lps @ np.r_[pts.mean(axis=0), 1.0])[:3]
        else:
            cen = np.full(3, np.nan)
        records.append(
            VertebraQC(
                label=int(value), name=level.name, voxels=int(counts[value]),
                volume_ml=round(vol, 3), body_voxels=nbody,
                body_height_mm=None if height is None else round(height, 2),
                centroid_lps=tuple(round(float(c), 2) for c in cen),
                axis_lps=tuple(round(float(a), 5) for a in axis),
                flags=flags,
                rib_sides=ribs[k].count,
                confidence=round(
                    naming.confidence[k] * (BAD_MASK_FACTOR if BAD_MASK & set(flags) else 1.0), 3
                ),
            )
        )
    structures = _structures(disc_values, disc_between, counts, vox_ml, touching)
    warnings.extend(work.notes)
    confidence = round(float(np.median([r.confidence for r in records])), 3) if records else 0.0
    qc = QCRecord(
        series_key=series_key, backend=backend.name, version=backend.version,
        levels=[r.name for r in records], anchors=anchors, confidence=confidence,
        vertebrae=records, warnings=warnings, structures=structures,
        timing_s={k: round(v, 3) for k, v in work.timing.items() if isinstance(v, float)},
        thresholds_hu={
            name: round(float(value), 1)
            for name, value in (
                ("bone", work.bone_hu), ("joint", work.joint_hu),
                ("cortical", work.cortical_hu), ("disc", work.disc_hu),
            )
            if np.isfinite(value) and value
        },
    )
    qc.timing_s["finish"] = round(time.perf_counter() - t, 3)
    return SegmentationResult(
        labels=Volume(lab_native, ct.affine.copy()),
        bodies=Volume(body_native, ct.affine.copy()),
        qc=qc,
    )


def _disc_values(values: list[int], confidence: list[float]):
    """Label values of the discs between bodies k and k+1 (caudal to cranial, like ``values``)
    and the names and name confidence of the vertebrae each joins (cranial first).

    A disc is named by the levels it joins when both are named and neighbours
    (:func:`spine_idc.coding.disc_value`), else it is an unidentified disc, numbered
    cranio-caudally like unidentified vertebrae.
    """
    n = len(values)
    out, between = [], []
    unnamed = 0
    for k in range(n - 2, -1, -1):  # cranio-caudal, to number the unnamed ones in that order
        upper, lower = coding.level_for_value(values[k + 1]), coding.level_for_value(values[k])
        value = None
        if not (coding.is_unidentified_vertebra(upper.value)
                or coding.is_unidentified_vertebra(lower.value)):
            value = coding.disc_value(upper.name, lower.name)
        if value is None:
            unnamed += 1
            value = min(coding.DISC_UNIDENTIFIED_BASE + unnamed - 1, coding.DISC_UNIDENTIFIED_MAX)
        out.append(value)
        between.append(([upper.name, lower.name], min(confidence[k], confidence[k + 1])))
    return out[::-1], between[::-1]


def _structures(disc_values, disc_between, counts, vox_ml, touching):
    """QC records of the discs (cranio-caudal) and the canal present on the CT's grid."""
    from ..base import StructureQC

    out = []
    for value, (names, conf) in reversed(list(zip(disc_values, disc_between))):
        voxels = int(counts[value]) if value < len(counts) else 0
        if voxels == 0:
            continue
        flags = [FLAG_FOV_BORDER] if value in touching else []
        if coding.DISC_UNIDENTIFIED_BASE <= value <= coding.DISC_UNIDENTIFIED_MAX:
            flags.append(FLAG_UNIDENTIFIED)
        out.append(StructureQC(
            label=value, name=coding.level_for_value(value).name, voxels=voxels,
            volume_ml=round(voxels * vox_ml, 3), between=names, flags=flags,
            confidence=round(float(conf), 3),
        ))
    canal = coding.SPINAL_CANAL_VALUE
    if canal < len(counts) and counts[canal]:
        out.append(StructureQC(
            label=canal, name="spinal_canal", voxels=int(counts[canal]),
            volume_ml=round(int(counts[canal]) * vox_ml, 3),
            flags=[FLAG_FOV_BORDER] if canal in touching else [], confidence=1.0,
        ))
    return out


def trim_native(labels: np.ndarray, bodies: np.ndarray, ct: Volume, vertebrae: list[int]
                ) -> None:
    """Trim, in place, the blurred skirt of the vertebrae on the CT's own grid, in its planes.

    One layer of each plane's outline, where the CT is darker than halfway between soft
    tissue and the brightest of the vertebra's bone within :data:`SKIRT_REACH_MM` (the
    half-maximum edge).  The working grid's trim (:func:`.grow.trim_skirt`) sees the scan
    through trilinear resampling, which blurs the edge once more; on the CT's own pixels the
    edge is sharper.  Only in-plane: across slices a thick slice's profile is real bone.
    Faces between two labels (vertebra, disc, canal) are not an outside.
    """
    from .bone import half_max_skirt
    from .grow import SKIRT_REACH_MM

    vert = np.isin(labels, vertebrae)
    if not vert.any():
        return
    box = tuple(slice(max(0, int(ix.min()) - 3), int(ix.max()) + 4) for ix in np.nonzero(vert))
    sub, v = labels[box], vert[box]
    smooth = ndimage.gaussian_filter(ct.array[box].astype(np.float32), (0.5, 0.5, 0.0))
    size = tuple(2 * max(1, int(round(SKIRT_REACH_MM / p))) + 1 for p in ct.spacing[:2]) + (1,)
    cut = half_max_skirt(v, sub > 0, smooth, size, in_planes=True)
    sub[cut] = 0
    bodies[box][cut] = 0


def _touching_border(labels: np.ndarray) -> set[int]:
    faces = [
        labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]
    ]
    return {int(v) for f in faces for v in np.unique(f) if v}


def _body_height(work: "Work", k: int, sl) -> float | None:
    """Body height (mm) along the spine axis: extent of the body voxels along the tangent."""
    if sl is None:
        return None
    pts = np.argwhere(work.body_labels[sl] == k + 1) + np.array([s.start for s in sl])
    if len(pts) < 10:
        return None
    b = work.bodies[k]
    t = work.line.t[int(round(b.centre))]
    h = pts @ t
    return float((np.percentile(h, 99) - np.percentile(h, 1) + 1.0) * work.spacing)
