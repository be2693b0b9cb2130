"""Intervertebral discs and the spinal canal, once the vertebrae are grown.

Both are soft tissue held in place by the bones already found, so both are read off the
straightened frame of the canal centreline (:mod:`.axis`) that the vertebrae were found in:

* **a disc** lies between two neighbouring bodies, within the outline of the body column
  (:mod:`.column`, the outline the bodies were cut from, with the same margin) and within the
  slab of its fitted mid-surface (:func:`.disc_extent.disc_planes`: the plane, tilt included, and
  half the disc's height, at least :data:`.grow.MIN_DISC_HALF_MM`).  In that slab it is what
  no vertebra took (the vertebrae keep only what is brighter than a disc can be there: the
  rims of the endplates) and brighter than fat (:data:`DISC_MIN_HU`).  Not "darker than the
  bone threshold": osteoporotic marrow is as dark as a disc, so where the disc is, is told by
  the endplates around it (the slab), not by its brightness.  One connected piece per disc,
  the largest;
* **the canal** is the dark space enclosed by the arches, in front of which the column lies:
  within an ellipse around the tracked canal centre, sized by the canal's own measured
  half-width and depth (:class:`.column.Column`) widened by :data:`CANAL_SLACK`, over the
  stretch of spine whose vertebrae were found.  What no bone took, darker than the bone
  threshold and not air, and connected to the canal's tracked core, is canal: cord, CSF and
  epidural fat together, as CT shows them.

The discs are numbered 1..n-1 caudal to cranial (disc ``k`` joins bodies ``k`` and ``k + 1``);
:mod:`.levels` names them from the vertebrae on either side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .grow import BODY_MARGIN_MM, BODY_SCALE, MIN_DISC_HALF_MM, _bbox, _column_tube
from .vertebrae import project_mask

if TYPE_CHECKING:  # pragma: no cover
    from .work import Work

#: Darker than this is fat or gas, not disc (discs are 50-110 HU on CT; fat about -100).
DISC_MIN_HU = -20.0
#: The canal ellipse is the measured canal widened by this factor (the measurement is taken at
#: the canal's centre, where it is narrowest between the pedicles).
CANAL_SLACK = 1.3
#: Darker than this is air (outside the patient), never canal.
CANAL_MIN_HU = -400.0
#: A disc piece smaller than this (mL) is a sliver at the view's edge, not reported.
MIN_DISC_ML = 0.3


def discs_and_canal(work: "Work") -> tuple[np.ndarray, np.ndarray]:
    """Disc index map (1..n-1, 0 elsewhere; ``int16``) and canal mask on ``work.hu``'s grid."""
    sp, line, col, st = work.spacing, work.line, work.column, work.planes
    shape = work.hu.shape
    discs = np.zeros(shape, np.int16)
    canal = np.zeros(shape, bool)
    if work.labels is None or not (work.labels > 0).any():
        return discs, canal
    box = _bbox(work.labels > 0, margin=int(round(10.0 / sp)))
    smooth = ndimage.gaussian_filter(work.hu[box], 0.7 / sp)
    free = (
        _column_tube(work)[box] & work.inside[box] & (work.labels[box] == 0)
        & ~work.other[box] & (smooth > CANAL_MIN_HU) & (smooth < work.cortical_hu)
    )
    if not free.any():
        return discs, canal
    off = np.array([b.start for b in box], float)
    from .axis import Centreline

    sub_line = Centreline(line.p - off, line.t, line.u, line.v, line.step)
    coords, idx, u, v, w = project_mask(free, sub_line)
    hu_c = smooth[coords]
    on = np.abs(w) <= 2.0 / sp
    bu, bv = st.body_u[idx], st.body_v[idx]
    hw = np.nan_to_num(col.half_width[idx], nan=10.0 / sp)
    hd = np.nan_to_num(col.half_depth[idx], nan=10.0 / sp)
    front_wall = np.nan_to_num(col.canal_front[idx], nan=-work.canal_r)
    outline = (((u - bu) / (BODY_SCALE * hw + BODY_MARGIN_MM / sp)) ** 2
               + ((v - bv) / (BODY_SCALE * hd + BODY_MARGIN_MM / sp)) ** 2) <= 1.0
    in_front = v < front_wall + 1.0 / sp
    disc_ok = on & outline & in_front & (hu_c >= DISC_MIN_HU)
    sub_discs = np.zeros(free.shape, np.int16)
    min_vox = MIN_DISC_ML * 1000.0 / sp**3
    for k, disc in enumerate(work.discs):
        lo, hi = work.bodies[k], work.bodies[k + 1]
        half = max(disc.half, MIN_DISC_HALF_MM / sp)
        sel = (disc_ok & (idx > lo.start) & (idx < hi.stop)
               & (np.abs(disc.offset(idx, u - bu, v - bv)) <= half))
        if not sel.any():
            continue
        mask = np.zeros(free.shape, bool)
        mask[tuple(c[sel] for c in coords)] = True
        mask &= sub_discs == 0
        lab, m = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        if m == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        if sizes.max() < min_vox:
            continue
        sub_discs[lab == int(np.argmax(sizes))] = k + 1
    # The canal: over the vertebrae found (only the top of a sacrum, whose canal flattens).
    first = work.bodies[0]
    a0 = first.stop - 20.0 / sp if work.sacrum else first.start
    a1 = work.bodies[-1].stop
    cu = CANAL_SLACK * np.nan_to_num(col.canal_half_width[idx], nan=work.canal_hw)
    cv = CANAL_SLACK * np.maximum(np.nan_to_num(-col.canal_front[idx], nan=work.canal_r),
                                  2.0 / sp)
    cu = np.maximum(cu, 2.0 / sp)
    ring = (on & (idx >= a0) & (idx <= a1) & ((u / cu) ** 2 + (v / cv) ** 2 <= 1.0)
            & (hu_c < work.bone_hu))
    ring &= sub_discs[coords] == 0
    sub_canal = np.zeros(free.shape, bool)
    sub_canal[tuple(c[ring] for c in coords)] = True
    core = work.canal_core[box]
    sub_canal |= core & free
    lab, m = ndimage.label(sub_canal, structure=np.ones((3, 3, 3), bool))
    if m:
        keep = np.unique(lab[core & sub_canal])
        keep = keep[keep > 0]
        sub_canal = np.isin(lab, keep)
        # Only where the ring also is: the core alone runs beyond the vertebrae found.
        in_ring = np.zeros(free.shape, bool)
        in_ring[tuple(c[ring] for c in coords)] = True
        sub_canal &= in_ring
    discs[box] = sub_discs
    canal[box] = sub_canal
    return discs, canal
