"""Whole vertebrae from seeds: ribs and other bones off, then a geodesic split of the spine.

Seeds (in the straightened frame of the canal centreline, per body found):

* each vertebral body, and the ring of bone around the canal at mid-body height (pedicles,
  laminae), seeds its vertebra;
* bone far lateral (ribs, ilium, scapula), far in front of the bodies (sternum, a
  contrast-filled aorta), or beside the back half of a body where only a rib head can be,
  seeds "other".

Ribs touch vertebrae only at small joints, which blur into thin bridges.  A first race on the
distance-to-background of the bone mask (a watershed of ``-distance``) lets each tube-shaped rib
fill from its seed up to the narrow bridge, where the spine's flood meets it.  A second race,
on a flat image, hands every remaining spine voxel to the geodesically nearest vertebra seed,
so pedicles, laminae and processes stay with their own body.  Finally discs -- never bone -- are
cleared between bodies, and pieces of arch cut off by the edge of the view are adopted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .axis import Centreline
from .discs import disc_planes
from .vertebrae import BodyRun, lateral_mass, project_mask, territories

if TYPE_CHECKING:  # pragma: no cover
    from .classical import Work

log = logging.getLogger(__name__)

#: Bone this thick (in-plane distance to background, mm) 28-45 mm beside a body makes it the
#: sacrum (its alae); transverse processes and rib necks are a few millimetres thick.
SACRUM_LATERAL_MASS_MM = 6.5
#: How far back (fraction of the body's depth behind its centre) the rib-head zone reaches.
RIB_ZONE_BACK = 0.35
#: Beyond this distance from the midline (mm) bone is not a vertebra's (lumbar transverse
#: processes reach about 46 mm); beside the sacrum, whose alae reach ~58 mm, the ilium starts.
LATERAL_LIMIT_MM = 50.0
SACRAL_LATERAL_LIMIT_MM = 75.0


def grow_vertebrae(work: "Work") -> None:
    """Fill ``work.labels`` (vertebra index 1..n, caudal to cranial), ``work.body_labels`` and
    ``work.other`` from the bodies found along ``work.line``.

    The races run on the stricter mask (shells at the surface threshold): a lower threshold
    also closes the slits between a rib neck and its transverse process, which would let a
    vertebra's flood run along the rib.  The result is then grown into the fuller mask.
    """
    from skimage.segmentation import watershed

    sp, line, st = work.spacing, work.line, work.planes
    strict, full = work.profile_mask, work.filled
    # Work inside the bounding box of the bone only: the watershed and distance transform
    # cost grows with the box, and most of the crop is soft tissue.
    box = _bbox(strict | full, margin=2)
    strict, full = strict[box], full[box]
    # Chamfer distance is plenty for ordering a flood and much cheaper than Euclidean.
    dist = ndimage.distance_transform_cdt(strict, metric="chessboard").astype(np.float32)
    off = np.array([b.start for b in box], float)
    sub_line = Centreline(line.p - off, line.t, line.u, line.v, line.step)
    _merge_sacrum(work, full, sub_line)
    either = strict | full
    coords, idx, u, v, w = project_mask(either, sub_line)
    in_strict = strict[coords]
    bu, bv = st.body_u[idx], st.body_v[idx]
    on = np.abs(w) <= 2.0 / sp
    n = len(work.bodies)
    cr, chw = work.canal_r, work.canal_hw
    seed = np.zeros(len(idx), np.int32)
    body_zone = np.zeros(len(idx), np.int32)
    for k, b in enumerate(work.bodies):
        inb = on & (idx >= b.start) & (idx <= b.stop)
        body = (
            inb & (v < -(cr + 1.0)) & (np.abs(u - bu) <= b.width / 2)
            & (np.abs(v - bv) <= b.depth / 2 + 2.0 / sp)
        )
        a0, a1 = b.start + 0.25 * b.length, b.stop - 0.25 * b.length
        arch = (
            on & (idx >= a0) & (idx <= a1) & (v >= -(cr + 1.0)) & (v <= cr + 10.0 / sp)
            & (np.abs(u) <= chw + 8.0 / sp)
        )
        seed[body | arch] = k + 1
        # Where the body's own bone may be: the body run plus its endplates, in front of the
        # canal, within the body's outline and a margin.
        zone = (
            (idx >= b.start - 2) & (idx <= b.stop + 2) & (v < -(cr + 0.5))
            & (np.abs(u - bu) <= b.width / 2 + 4.0 / sp)
        )
        body_zone[zone & (body_zone == 0)] = k + 1
    # Other bone: far lateral (ribs, ilium, scapula) or far in front of the bodies (sternum,
    # a contrast-filled aorta).  The sacrum's alae reach further out than any process.
    sacral = (idx <= work.bodies[0].stop + 5.0 / sp) if work.sacrum else np.zeros(len(idx), bool)
    lat = np.where(sacral, SACRAL_LATERAL_LIMIT_MM, LATERAL_LIMIT_MM) / sp
    deep = max(b.depth for b in work.bodies)
    other = (np.abs(u) > lat) | (v < bv - deep / 2 - 10.0 / sp)
    # Beside the back half of a body, in front of the arch (where transverse processes start),
    # the only bone is a rib head.  Seeding it matters where the rib's far end is out of view.
    terr = territories(work.bodies, len(line))[idx]
    bw = np.array([b.width for b in work.bodies])[terr]
    bd = np.array([b.depth for b in work.bodies])[terr]
    dv = v - bv
    other |= (
        (np.abs(u - bu) > bw / 2 + 5.0 / sp) & (dv < RIB_ZONE_BACK * bd) & (dv > -0.1 * bd)
        & ~sacral
    )
    other &= seed == 0
    seed[other] = n + 1
    other_full = np.zeros(strict.shape, bool)
    other_full[tuple(c[other] for c in coords)] = True
    seed[~in_strict] = 0
    markers = np.zeros(strict.shape, np.int32)
    markers[coords] = seed
    # Race 1: spine (all vertebra seeds) against other bone, on the distance to background,
    # so that floods stop at the narrow bridges of blurred joints.
    m1 = np.where(markers == n + 1, 2, np.where(markers > 0, 1, 0)).astype(np.int32)
    race = watershed(-dist, markers=m1, mask=strict)
    # Race 2: vertebra seeds within the spine, geodesically (flat image).
    m2 = np.where((race == 1) & (markers <= n), markers, 0)
    labels = watershed(np.zeros(strict.shape, np.float32), markers=m2, mask=race == 1)
    labels[race == 2] = n + 1
    if not np.array_equal(full, strict):
        # Grow into the fuller mask: faint shells and marrow the strict mask missed.
        # Other bone seen only in the fuller mask (a contrast-filled aorta, faint ribs) is
        # seeded too, or the vertebrae would flood it.
        grow_seeds = labels * full
        grow_seeds[other_full & full & (grow_seeds == 0)] = n + 1
        labels = watershed(np.zeros(full.shape, np.float32), markers=grow_seeds, mask=full)
    other_mask = labels == n + 1
    labels[other_mask] = 0
    # Discs are never bone.  Where faint shells made the fuller mask close over a disc, the
    # slab of each disc (its fitted mid-surface +- half its height), in front of the canal,
    # keeps only dense (cortical) voxels: the rims of the endplates, not the disc between.
    column = (v < -(cr + 0.5)) & (np.abs(u - bu) <= bw / 2 + 6.0 / sp)
    in_disc = np.zeros(len(idx), bool)
    work.discs = disc_planes(work.hu, line, st, work.bodies, sp)
    for k, disc in enumerate(work.discs):
        near = column & (idx > work.bodies[k].start) & (idx < work.bodies[k + 1].stop)
        in_disc |= near & (np.abs(disc.offset(idx, u - bu, v - bv)) <= disc.half)
    in_disc &= work.hu[box][coords] < work.cortical_hu
    labels[tuple(c[in_disc] for c in coords)] = 0
    _adopt_fragments(labels, other_mask, full, work, box, sub_line)
    out = np.zeros(work.hu.shape, np.int16)
    out[box] = labels
    work.labels = out
    work.other = np.zeros(work.hu.shape, bool)
    work.other[box] = other_mask
    bodies = np.zeros(labels.shape, np.int16)
    lab_c = labels[coords]
    keep = (body_zone > 0) & (lab_c == body_zone)
    bodies[tuple(c[keep] for c in coords)] = lab_c[keep]
    work.body_labels = np.zeros(work.hu.shape, np.int16)
    work.body_labels[box] = bodies


def _merge_sacrum(work: "Work", full: np.ndarray, line: Centreline) -> None:
    """Decide whether the caudal-most body is the sacrum, merging its pieces.

    The sacrum is the most cranial body, among the caudal ones, with massive bone beside it
    (measured on the fuller mask: the alae's marrow may not close in the strict one).  Bodies
    below it are the same fused bone, cut into pieces by faint lines or by the straight
    centreline leaving the sacrum's curve, so they are merged into it.
    """
    sp = work.spacing
    work.lateral_mass = lateral_mass(full, line, work.planes, work.bodies, sp)
    work.sacrum = False
    start0 = work.bodies[0].start
    cand = [
        j for j, b in enumerate(work.bodies[:5])
        if work.lateral_mass[j] >= SACRUM_LATERAL_MASS_MM and (b.start - start0) * sp <= 130.0
    ]
    if not cand:
        return
    j = max(cand)
    work.sacrum = True
    parts = work.bodies[: j + 1]
    work.bodies[: j + 1] = [
        BodyRun(parts[0].start, parts[-1].stop, max(p.width for p in parts),
                max(p.depth for p in parts))
    ]
    work.lateral_mass[: j + 1] = [max(work.lateral_mass[: j + 1])]


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` widened by ``margin`` voxels."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            out.append(slice(0, 0))
            continue
        out.append(slice(max(0, hit[0] - margin), min(mask.shape[ax], hit[-1] + margin + 1)))
    return tuple(out)


def _adopt_fragments(labels, other_mask, full, work: "Work", box, line: Centreline) -> None:
    """Give unreached bone at the edge of the view to the vertebra it must belong to.

    A vertebra cut by the field of view can leave a piece (a spinous process, an articular
    process) whose connection to its body lies outside the view.  Such a piece, if it lies in
    the posterior column, goes to the end vertebra on its side of the view.
    """
    sp = work.spacing
    rest = full & (labels == 0) & ~other_mask
    if not rest.any():
        return
    inside = work.inside[box]
    edge = inside & ~ndimage.binary_erosion(inside, iterations=2, border_value=0)
    lab, k = ndimage.label(rest, structure=np.ones((3, 3, 3)))
    if k == 0:
        return
    touching = np.unique(lab[edge & (lab > 0)])
    if touching.size == 0:
        return
    zs = np.flatnonzero(inside.any(axis=(0, 1)))
    z_lo, z_hi = zs[0], zs[-1]
    n = len(work.bodies)
    for c in touching:
        pts = np.argwhere(lab == c)
        if len(pts) * sp**3 < 5.0:
            continue
        idx, u, v, w = line.project(pts.T.astype(float))
        # Only the posterior column: pieces of arch and processes.  (A contrast-filled aorta
        # or a rib cut by the view is also unreached bone-bright tissue; it lies elsewhere.)
        if np.median(np.abs(u)) > 20.0 / sp or np.median(v) < -work.canal_r:
            continue
        # Which end of the view the piece is cut by decides the vertebra it belongs to.
        if pts[:, 2].max() >= z_hi - 2:
            k_ = n
        elif pts[:, 2].min() <= z_lo + 2:
            k_ = 1
        else:
            continue
        labels[tuple(pts.T)] = k_
