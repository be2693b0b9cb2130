"""Naming the vertebrae from anatomical anchors, the QC record, and the way back to the CT grid.

Vertebrae are only ever counted from a landmark that fixes one level:

* **sacrum** -- the caudal-most segment is sacrum-like (massive lateral masses), so the
  vertebra above it is L5;
* **lowest rib-bearing** -- a vertebra with a rib attached and a rib-free vertebra visible
  below it is T12;
* **highest rib-bearing** -- a vertebra with a rib attached and a rib-free vertebra visible
  above it is T1.

Each anchor implies an offset between position (cranio-caudal index among the vertebrae found)
and level.  Anchors that agree confirm each other; anchors that disagree are a conflict that is
flagged on every vertebra (the sacrum, the radiological convention for lumbar counting, wins,
then the lowest rib).  With no anchor the vertebrae keep unidentified values (101, 102, ...,
cranio-caudal) and the ``unidentified`` flag: a count from nothing would be a silent guess.
Numbering variants (13 rib pairs, six lumbar vertebrae, transitional L5/S1) are exactly what
makes anchors disagree; the QC record then says so instead of hiding it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

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
    FLAG_UNIDENTIFIED,
    Anchor,
    QCRecord,
    SegmentationResult,
    VertebraQC,
)

if TYPE_CHECKING:  # pragma: no cover
    from .classical import ClassicalBackend, Work

log = logging.getLogger(__name__)

#: A rib: bone of the "other" class reaching this far (mm) from the midline ...
RIB_MIN_LATERAL_MM = 40.0
#: ... whose medial end comes this close (mm) to a vertebra, this near the midline.
RIB_CONTACT_MM = 6.0
RIB_MEDIAL_MAX_MM = 38.0
#: Level indices of the anchors (coding order: C1 = 0 ... L5 = 23, sacrum = 24).
_T1 = coding.LEVEL_BY_NAME["T1"].index
_T12 = coding.LEVEL_BY_NAME["T12"].index
_L5 = coding.LEVEL_BY_NAME["L5"].index
_SACRUM = coding.LEVEL_BY_NAME["sacrum"].index


def rib_sides(work: "Work") -> np.ndarray:
    """For each vertebra (internal order, caudal to cranial), on how many sides a rib attaches.

    A rib is a connected piece of the bone taken away as "other" that reaches at least
    :data:`RIB_MIN_LATERAL_MM` from the midline and whose medial end lies within
    :data:`RIB_CONTACT_MM` of a vertebra, less than :data:`RIB_MEDIAL_MAX_MM` from the
    midline (a rib head or neck, not a rib passing by).  The sacrum never bears ribs.
    """
    sp = work.spacing
    n = len(work.bodies)
    sides = np.zeros((n, 2), bool)
    other, labels = work.other, work.labels
    if other is None or not other.any() or not (labels > 0).any():
        return sides.sum(axis=1)
    lab, k = ndimage.label(other, structure=np.ones((3, 3, 3)))
    reach = int(np.ceil(RIB_CONTACT_MM / sp))
    for c, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        # Only the component's box widened by the contact distance can hold its contacts.
        box = tuple(
            slice(max(0, s.start - reach), min(dim, s.stop + reach))
            for s, dim in zip(sl, lab.shape)
        )
        comp = lab[box] == c
        vert = labels[box] > 0
        if not vert.any():
            continue
        origin = np.array([s.start for s in box])
        pts = np.argwhere(comp) + origin
        idx, u, v, w = work.line.project(pts.T.astype(float))
        if np.abs(u).max() * sp < RIB_MIN_LATERAL_MM:
            continue
        dist, ind = ndimage.distance_transform_edt(~vert, return_indices=True)
        near = comp & (dist * sp <= RIB_CONTACT_MM)
        if not near.any():
            continue
        hit = np.argwhere(near)
        owners = labels[box][tuple(ind[d][tuple(hit.T)] for d in range(3))]
        owners = owners[owners > 0]
        if owners.size == 0:
            continue
        # The medial end: the contact points must sit near the spine, not far out.
        _, u_hit, _, _ = work.line.project((hit + origin).T.astype(float))
        if np.median(np.abs(u_hit)) * sp > RIB_MEDIAL_MAX_MM:
            continue
        owner = int(np.bincount(owners).argmax())
        if owner > n or (work.sacrum and owner == 1):
            continue
        sides[owner - 1, 0 if np.median(u) > 0 else 1] = True
    return sides.sum(axis=1)


def _rib_zone_visible(work: "Work", k: int) -> bool:
    """Whether vertebra ``k`` (internal index, 0-based) is seen well enough to be called
    rib-free.

    A body cut by either end of the view must show most of its height (a body is about 0.6-0.8
    of its width tall): a short rib may leave the view before it reaches out far enough to be
    recognised, and calling a vertebra rib-free wrongly would shift every name by one.
    """
    b = work.bodies[k]
    cut = b.stop >= len(work.line) - 3 or b.start <= 2
    return not cut or b.length >= 0.6 * b.width


def name_levels(work: "Work", ribs: np.ndarray) -> tuple[list[int], list[Anchor], list[str], bool]:
    """Label values per vertebra (internal order), the anchors, warnings, and identified or not."""
    n = len(work.bodies)
    # Positions count cranio-caudally: position 0 is the top vertebra (internal index n-1).
    pos = {k: n - 1 - k for k in range(n)}
    anchors: list[Anchor] = []
    offsets: list[tuple[str, int]] = []
    if work.sacrum and n >= 1:
        anchors.append(Anchor("sacrum", pos[0], "sacrum"))
        offsets.append(("sacrum", _SACRUM - pos[0]))
    bearing = [k for k in range(n) if ribs[k] > 0 and not (work.sacrum and k == 0)]
    if bearing:
        low = min(bearing)  # caudal-most rib-bearing (internal order runs caudal -> cranial)
        below = low - 1
        # (ribs straight above the sacrum would mean no lumbar spine: no anchor, let the
        # sacrum count)
        if (
            below >= 0 and ribs[below] == 0 and not (work.sacrum and below == 0)
            and _rib_zone_visible(work, below)
        ):
            anchors.append(Anchor("lowest-rib", pos[low], "T12"))
            offsets.append(("lowest-rib", _T12 - pos[low]))
        high = max(bearing)
        above = high + 1
        if above < n and ribs[above] == 0 and _rib_zone_visible(work, above):
            anchors.append(Anchor("highest-rib", pos[high], "T1"))
            offsets.append(("highest-rib", _T1 - pos[high]))
    warnings: list[str] = []
    if not offsets:
        return [coding.UNIDENTIFIED_BASE + pos[k] for k in range(n)], anchors, warnings, False
    chosen = offsets[0][1]
    agree = all(o == chosen for _, o in offsets)
    if not agree:
        warnings.append(
            "anchors disagree: "
            + ", ".join(
                f"{name} implies the top vertebra is level index {o}" for name, o in offsets
            )
            + f"; counted from {offsets[0][0]}"
        )
        for a, (_, o) in zip(anchors, offsets):
            a.used = o == chosen
    values = []
    for k in range(n):
        li = chosen + pos[k]
        if not 0 <= li < coding.N_NAMED_LEVELS or (li == _SACRUM and k != 0):
            warnings.append(
                f"counting from {offsets[0][0]} puts a vertebra at level index {li}, outside "
                "C1-sacrum: vertebrae are left unidentified"
            )
            return (
                [coding.UNIDENTIFIED_BASE + pos[j] for j in range(n)], anchors, warnings, False
            )
        if li == _SACRUM and not work.sacrum:
            warnings.append(
                "the caudal-most segment counts as the sacrum but does not look like one "
                "(no massive lateral masses): check it"
            )
        values.append(coding.level_for_index(li).value)
    if not agree:
        work.conflict = True
    return values, anchors, warnings, True


def finish(
    work: "Work", ct: Volume, series_key: str, backend: "ClassicalBackend"
) -> SegmentationResult:
    """Name the vertebrae, map labels to the CT grid, and assemble the QC record."""
    t = time.perf_counter()
    n = len(work.bodies)
    work.conflict = False
    ribs = rib_sides(work)
    values, anchors, warnings, identified = name_levels(work, ribs)
    lut = np.zeros(n + 2, np.int32)
    lut[1: n + 1] = values
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    lab_native = grid.labels_to_source_grid(lut[work.labels], work.affine, ct, dtype=dtype)
    body_native = grid.labels_to_source_grid(lut[work.body_labels], work.affine, ct, dtype=dtype)
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
        if counts[value] == 0:
            # Found along the spine but left with no voxel on the CT's grid (a sliver at the
            # edge of the view): not reported as a vertebra, but said.
            warnings.append(f"{level.name}: found but empty on the CT grid, not reported")
            continue
        flags: list[str] = []
        if not identified:
            flags.append(FLAG_UNIDENTIFIED)
        if work.conflict:
            flags.append(FLAG_ANCHOR_CONFLICT)
        if value in touching:
            flags.append(FLAG_FOV_BORDER)
        vol = float(counts[value] * vox_ml) if value < len(counts) else 0.0
        nbody = int(body_counts[value]) if value < len(body_counts) else 0
        if nbody == 0:
            flags.append(FLAG_NO_BODY)
        height = _body_height(work, k, body_objs[k] if k < len(body_objs) else None)
        cut = value in touching
        if not cut and value != coding.SACRUM_VALUE:
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
                rib_sides=int(ribs[k]),
            )
        )
    if not identified:
        warnings.append(
            "no anchor (sacrum, lowest or highest rib-bearing vertebra with a rib-free neighbour) "
            "is visible: vertebrae are left unidentified"
        )
    warnings.extend(work.notes)
    confidence = _confidence(identified, anchors, work.conflict, records)
    qc = QCRecord(
        series_key=series_key, backend=backend.name, version=backend.version,
        levels=[r.name for r in records], anchors=anchors, confidence=confidence,
        vertebrae=records, warnings=warnings,
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


def _confidence(identified, anchors, conflict, records) -> float:
    if not records:
        return 0.0
    if not identified:
        base = 0.3
    elif conflict:
        base = 0.5
    else:
        base = 0.8 if sum(a.used for a in anchors) == 1 else 0.95
    bad = sum(
        1 for r in records
        if {FLAG_IMPLAUSIBLE_SIZE, FLAG_IMPLAUSIBLE_HEIGHT, FLAG_NO_BODY} & set(r.flags)
    )
    return round(base * (1.0 - 0.5 * bad / len(records)), 3)
