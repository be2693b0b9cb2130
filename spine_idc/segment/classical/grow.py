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

Over 400 lines: the seeds, the two races and the clean-up share one straightened frame of
projected voxels (``coords``, ``idx``, ``u``, ``v``); the skirt trim and C1's seeds are here
because they read that frame too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .axis import Centreline
from .bone import half_max_skirt
from .disc_extent import disc_planes
from .sacrum import assess
from .vertebrae import BodyRun, project_mask

if TYPE_CHECKING:  # pragma: no cover
    from .work import Work

log = logging.getLogger(__name__)

#: How far back (fraction of the body's depth behind its centre) the rib-head zone reaches.
RIB_ZONE_BACK = 0.35
#: Beyond this distance from the midline (mm) bone is not a vertebra's (lumbar transverse
#: processes reach about 46 mm); beside the sacrum, whose alae reach 50-55 mm, the ilium starts.
LATERAL_LIMIT_MM = 50.0
#: Discs are cleared at least this far (mm) either side of their mid-surface: a 2-3 mm slice
#: through a thin disc blurs it over its endplates' thickness.
MIN_DISC_HALF_MM = 2.5
#: Within this fraction of the outline every voxel brighter than MARROW_MIN_HU is marrow.
CORE_SCALE = 0.85
MARROW_MIN_HU = 0.0
#: How far (mm) beyond the column seen the top and the lowest vertebra may reach (superior
#: articular processes above, a spinous process below).
END_REACH_MM = (12.0, 30.0)
#: The body is what lies within the column's outline, scaled by this and widened by this
#: margin (mm): the outline is drawn where the column's HU, smoothed along the spine, crosses
#: the bone threshold, a little inside the cortex at the bodies' waists.
BODY_SCALE = 1.0
BODY_MARGIN_MM = 2.0
SACRAL_LATERAL_LIMIT_MM = 56.0
#: How far (mm) inside the surface the bone whose half-maximum places the edge is looked for.
SKIRT_REACH_MM = 2.0


def grow_vertebrae(work: "Work") -> None:
    """Fill ``work.labels`` (vertebra index 1..n, caudal to cranial), ``work.body_labels`` and
    ``work.other`` from the bodies found along ``work.line``.

    The bodies come first, from the intensities: within the column's outline (:mod:`.column`),
    between the mid-surfaces of the discs above and below, whatever is brighter than the
    column's own bone threshold -- so faint osteoporotic marrow, whose cortical shell never
    closes at any threshold, is body all the same.  The rest of each vertebra is grown from
    its body and the arch around the canal: the races run on the stricter mask (shells at
    the surface threshold), since a lower threshold also closes the slits between a rib neck
    and its transverse process, which would let a vertebra's flood run along the rib; the
    result is then grown into the fuller mask.
    """
    from skimage.segmentation import watershed

    sp, line, st = work.spacing, work.line, work.planes
    col = work.column
    n = len(work.bodies)
    near_column = _column_tube(work)
    candidates = near_column & work.full
    # Inside the core of the outline, marrow of any density is body: fatty or osteoporotic
    # marrow can be darker than the bone threshold, and nothing but marrow lies there.
    marrow = near_column & work.inside & ~work.canal_core & (
        ndimage.gaussian_filter(work.hu, 0.7 / sp) > MARROW_MIN_HU)
    strict_all, full_all = work.strict, work.full
    # Work inside the bounding box of the bone only: the watershed and distance transform
    # cost grows with the box, and most of the crop is soft tissue.
    box = _bbox(strict_all | full_all | candidates, margin=2)
    marrow = marrow[box]
    strict, full = strict_all[box], full_all[box]
    off = np.array([b.start for b in box], float)
    sub_line = Centreline(line.p - off, line.t, line.u, line.v, line.step)
    _merge_sacrum(work, full, work.inside[box], sub_line)
    work.discs = disc_planes(work.hu, line, st, work.bodies, sp, work.found_discs)
    either = strict | full | candidates[box] | marrow
    coords, idx, u, v, w = project_mask(either, sub_line)
    hu_c = ndimage.gaussian_filter(work.hu[box], 0.7 / sp)[coords]
    bu, bv = st.body_u[idx], st.body_v[idx]
    on = np.abs(w) <= 2.0 / sp
    cr, chw = work.canal_r, work.canal_hw
    # Bodies from intensity: each body's territory lies between the mid-surfaces of its discs.
    territory = _disc_territory(work, idx, u - bu, v - bv)
    hw = np.nan_to_num(col.half_width[idx], nan=10.0 / sp)
    hd = np.nan_to_num(col.half_depth[idx], nan=10.0 / sp)
    front_wall = np.nan_to_num(col.canal_front[idx], nan=-cr)
    ellipse = (((u - bu) / (BODY_SCALE * hw + BODY_MARGIN_MM / sp)) ** 2
               + ((v - bv) / (BODY_SCALE * hd + BODY_MARGIN_MM / sp)) ** 2)
    core = ((u - bu) / (CORE_SCALE * hw)) ** 2 + ((v - bv) / (CORE_SCALE * hd)) ** 2
    body_voxel = (
        on & (v < front_wall + 1.0 / sp) & (territory > 0)
        & (((ellipse <= 1.0) & candidates[box][coords]) | ((core <= 1.0) & marrow[coords]))
    )
    body_seed = np.where(body_voxel, territory, 0).astype(np.int32)
    body_lab = np.zeros(strict.shape, np.int32)
    body_lab[tuple(c[body_voxel] for c in coords)] = body_seed[body_voxel]
    _fill_marrow(body_lab, candidates[box] | strict | full)
    either_body = body_lab > 0
    # The filled marrow joins the candidates and the seeds.
    body_seed = body_lab[coords]
    body_voxel = body_seed > 0
    strict = strict | either_body
    full = full | either_body
    # Chamfer distance is plenty for ordering a flood and much cheaper than Euclidean.
    dist = ndimage.distance_transform_cdt(strict, metric="chessboard").astype(np.float32)
    in_strict = strict[coords]
    in_full = full[coords]
    seed = body_seed.copy()
    for k, b in enumerate(work.bodies):
        a0, a1 = b.start + 0.25 * b.length, b.stop - 0.25 * b.length
        arch = (
            on & (idx >= a0) & (idx <= a1) & (v >= -(cr + 1.0)) & (v <= cr + 10.0 / sp)
            & (np.abs(u) <= chw + 8.0 / sp) & (seed == 0)
        )
        seed[arch] = k + 1
    # Other bone: far lateral (ribs, ilium, scapula), far in front of the bodies (sternum),
    # or anywhere in front of the canal's wall but outside the body's outline (a
    # contrast-filled aorta against the body, rib heads, calcified crura).  Beside the
    # sacrum its alae reach further out than any process, and they are its own bone.
    sacral = (idx <= work.bodies[0].stop + 5.0 / sp) if work.sacrum else np.zeros(len(idx), bool)
    lat = np.where(sacral, SACRAL_LATERAL_LIMIT_MM, LATERAL_LIMIT_MM) / sp
    deep = max(b.depth for b in work.bodies)
    other = (np.abs(u) > lat) | (v < bv - deep / 2 - 10.0 / sp)
    outside_body = (ellipse > 1.25 ** 2) & (v < front_wall - 2.0 / sp) & ~sacral
    other |= outside_body & (np.abs(u - bu) > hw + 3.0 / sp) | (
        outside_body & (v < bv - hd - 4.0 / sp)
    )
    # Beside the back half of a body, in front of the arch (where transverse processes start),
    # the only bone is a rib head.  Seeding it matters where the rib's far end is out of view.
    dv = v - bv
    other |= (
        (np.abs(u - bu) > hw + 5.0 / sp) & (dv < RIB_ZONE_BACK * 2 * hd) & (dv > -0.2 * hd)
        & ~sacral
    )
    atlas = n + 2  # C1's seeds while the races run (n + 1 is other bone)
    if work.dens is not None:
        other = _atlas_seeds(work, seed, other, idx, u, v, atlas)
    other &= seed == 0
    seed[other] = n + 1
    other_full = np.zeros(strict.shape, bool)
    other_full[tuple(c[other & in_full] for c in coords)] = True
    markers = np.zeros(strict.shape, np.int32)
    keep = in_strict & (seed > 0)
    markers[tuple(c[keep] for c in coords)] = seed[keep]
    # Race 1: spine (all vertebra seeds) against other bone, on the distance to background,
    # so that floods stop at the narrow bridges of blurred joints.
    m1 = np.where(markers == n + 1, 2, np.where(markers > 0, 1, 0)).astype(np.int32)
    race = watershed(-dist, markers=m1, mask=strict)
    work.debug = dict(box=box, strict=strict, full=full, markers=markers, race=race)
    # Race 2: vertebra seeds within the spine, geodesically (flat image).
    m2 = np.where((race == 1) & (markers != n + 1), markers, 0)
    labels = watershed(-dist, markers=m2, mask=race == 1)
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
    # Discs are never bone.  The slab of each disc (its fitted mid-surface +- half its
    # height), in front of the canal, keeps only what is brighter than a disc can be: the
    # rims of the endplates, not the disc between.
    column = (v < front_wall + 1.0 / sp) & (np.abs(u - bu) <= hw + 6.0 / sp)
    in_disc = np.zeros(len(idx), bool)
    for k, disc in enumerate(work.discs):
        near = column & (idx > work.bodies[k].start) & (idx < work.bodies[k + 1].stop)
        in_disc |= near & (np.abs(disc.offset(idx, u - bu, v - bv)) <= max(disc.half, MIN_DISC_HALF_MM / sp))
    in_disc &= hu_c < work.cortical_hu
    labels[tuple(c[in_disc] for c in coords)] = 0
    # The end vertebrae must not claim bone beyond the column seen: above the top body there
    # is at most its superior articular processes, below the lowest its spinous process; bone
    # further out belongs to a vertebra whose body is not in view (the race had no seed for it).
    lab_c = labels[coords]
    lo_seen, hi_seen = work.seen
    beyond = (lab_c == n) & (idx > hi_seen + END_REACH_MM[0] / sp)
    if not work.sacrum:
        beyond |= (lab_c == 1) & (idx < lo_seen - END_REACH_MM[1] / sp)
    if work.dens is not None:
        beyond |= (lab_c == atlas) & (idx > work.dens.tip + END_REACH_MM[0] / sp)
    labels[tuple(c[beyond] for c in coords)] = 0
    _adopt_fragments(labels, other_mask, full, work, box, sub_line)
    labels[labels == atlas] = n + 1
    out = np.zeros(work.hu.shape, np.int16)
    out[box] = labels
    work.labels = out
    work.other = np.zeros(work.hu.shape, bool)
    work.other[box] = other_mask
    bodies = np.zeros(labels.shape, np.int16)
    lab_c = labels[coords]
    keep = body_voxel & (lab_c == body_seed)
    bodies[tuple(c[keep] for c in coords)] = lab_c[keep]
    work.body_labels = np.zeros(work.hu.shape, np.int16)
    work.body_labels[box] = bodies


#: C1's seeds: bone this far (mm) beyond the dens' surface, within this distance of the
#: midline; the skull's base: bone this far (mm) above the dens' tip.
ATLAS_CLEAR_MM = 1.5
ATLAS_REACH_MM = 40.0
SKULL_ABOVE_TIP_MM = 1.0
ATLAS_BEHIND_MM = 18.0


def _atlas_seeds(work: "Work", seed, other, idx, u, v, atlas: int) -> np.ndarray:
    """Seed C1 (value ``atlas``) where its anterior arch was seen, everywhere but the dens;
    take nothing near the spine in the dens' planes for other bone, but all bone above the
    dens' tip (the skull's base).  Returns the new ``other``."""
    d, sp = work.dens, work.spacing
    top = work.bodies[-1].stop
    dist = np.hypot(u, v - d.centre_v)
    near = np.abs(u) <= ATLAS_REACH_MM / sp
    # C1's posterior arch lies within about 25 mm of the canal's centre (the canal at C1 is
    # about 30 mm deep); further back at its height is the occipital bone.
    behind = v > work.canal_r + ATLAS_BEHIND_MM / sp
    ring = ((idx >= d.arch[0]) & (idx <= d.arch[1]) & near & (seed == 0) & ~behind
            & (dist > d.radius + ATLAS_CLEAR_MM / sp)
            & (v >= d.centre_v - d.radius - 12.0 / sp))
    seed[ring] = atlas
    zone = (idx > top) & (idx <= d.tip + SKULL_ABOVE_TIP_MM / sp) & near & ~behind
    skull = (idx > d.tip + SKULL_ABOVE_TIP_MM / sp) | ((idx > top) & behind)
    return (other & ~zone) | skull


def trim_skirt(work: "Work") -> None:
    """Trim the blurred skirt off ``work.labels`` (and ``work.body_labels``), in place.

    Done once the vertebrae are named: the ribs are found against the untrimmed outline.
    """
    box = _bbox(work.labels > 0, margin=3)
    sub = work.labels[box]
    _trim_skirt(sub, work.hu[box], work.spacing)
    work.body_labels[box][sub == 0] = 0


def _trim_skirt(labels: np.ndarray, hu: np.ndarray, spacing: float) -> None:
    """Clear, in place, the outermost layer of the vertebrae where it is darker than halfway
    between soft tissue and the brightest of their bone within :data:`SKIRT_REACH_MM`.

    The scanner's blur spreads every bone edge over a voxel or two; the edge itself is where
    the intensity is halfway from the tissue outside to the bone inside (the half-maximum
    edge).  The bone masks are thresholded at the scan's faint-bone level, so around dense
    cortex they take the blurred skirt too: a rim a voxel thick all round every vertebra,
    which is a tenth to a third of a thin thoracic or cervical vertebra's volume.  Only the
    outside of the spine is trimmed (faces between two vertebrae are not an outside), and only
    one layer, in 3-D: faint bone, whose halfway level is low, keeps its edge.
    """
    inside = labels > 0
    if not inside.any():
        return
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), 0.5)
    size = 2 * max(1, int(round(SKIRT_REACH_MM / spacing))) + 1
    # The outside only: the walls of enclosed holes (dark marrow, a basivertebral vein) are
    # inside the bone.
    labels[half_max_skirt(inside, inside, smooth, size, in_planes=False)] = 0


def _fill_marrow(body_lab: np.ndarray, allowed: np.ndarray) -> None:
    """Fill, in place, the holes of each body in its axial planes: marrow darker than the
    bone threshold (osteoporosis, the basivertebral veins) enclosed by the body's brighter
    bone.  Only voxels already among ``allowed`` positions' neighbours are ever added: holes
    are filled in 2-D, so nothing beyond the body's own outline."""
    for k, sl in enumerate(ndimage.find_objects(body_lab), start=1):
        if sl is None:
            continue
        sub = body_lab[sl]
        mask = sub == k
        filled = np.zeros_like(mask)
        for z in range(mask.shape[2]):
            if mask[:, :, z].any():
                filled[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
        sub[filled & (sub == 0)] = k


def _column_tube(work: "Work") -> np.ndarray:
    """Voxels within the widest body's half-width + 15 mm of the body column's centre curve.

    Computed on a grid four times coarser (a distance transform of the whole crop at full
    resolution would cost seconds).
    """
    sp, line, col = work.spacing, work.line, work.column
    shape = work.hu.shape
    f = 4
    small_shape = tuple(int(np.ceil(s / f)) for s in shape)
    centre = line.p + (np.nan_to_num(col.centre_u)[:, None] * line.u
                       + np.nan_to_num(col.centre_v)[:, None] * line.v)
    mark = np.ones(small_shape, bool)
    ijk = np.rint(centre / f).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(small_shape)), axis=1) & col.found
    mark[tuple(ijk[ok].T)] = False
    if mark.all():
        return np.zeros(shape, bool)
    dist = ndimage.distance_transform_edt(mark) * f * sp
    reach = float(np.nanmax(col.half_width)) * sp + 15.0
    tube = dist <= reach
    big = np.repeat(np.repeat(np.repeat(tube, f, 0), f, 1), f, 2)
    return big[: shape[0], : shape[1], : shape[2]]


def _disc_territory(work: "Work", idx, du, dv) -> np.ndarray:
    """For points at centreline plane ``idx`` with offsets ``du``/``dv`` from the body centre,
    the body (1..n) whose disc-to-disc stretch holds them, 0 beyond the ends of the column.

    Between two bodies the boundary is the disc's fitted (tilted) mid-surface; the ends are
    the first and last body's own extent.
    """
    n = len(work.bodies)
    out = np.zeros(len(idx), np.int32)
    inside = (idx >= work.bodies[0].start - 1) & (idx <= work.bodies[-1].stop + 1)
    out[inside] = 1
    for k, disc in enumerate(work.discs):
        out[inside & (disc.offset(idx, du, dv) > 0)] = k + 2
    return np.clip(out, 0, n)


def _merge_sacrum(work: "Work", full: np.ndarray, inside: np.ndarray, line: Centreline) -> None:
    """Decide whether the caudal-most segment is the sacrum (:mod:`.sacrum`), merging its
    pieces.

    The sacrum is the most cranial of the lowest segments with alae on both sides.  Segments
    below it are the same fused bone, cut into pieces by the remnants of sacral discs or by
    the centreline leaving the sacrum's curve, so they are merged into it.  Whether it may
    name the levels (:attr:`.work.SacrumEvidence.verified`) is decided there too.
    """
    ev = assess(work, work.full, work.inside)
    work.sacrum_evidence = ev
    work.sacrum = ev.index is not None
    if work.probe and ev.index != 0:
        # The tentative segment under the lowest disc is not the sacrum's top: put back what
        # was seen there (a vertebra cut by the view), or nothing.
        work.bodies = list(work.probe_replaced) + work.bodies[1:]
        work.probe = False
        if ev.index is not None:
            ev.index += len(work.probe_replaced) - 1
    if not work.sacrum:
        return
    j = ev.index
    parts = work.bodies[: j + 1]
    work.bodies[: j + 1] = [
        BodyRun(parts[0].start, parts[-1].stop, max(p.width for p in parts),
                max(p.depth for p in parts))
    ]


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
