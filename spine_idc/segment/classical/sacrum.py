"""Is the lowest segment the sacrum?  The evidence, side by side, and a verdict.

Counting lumbar vertebrae up from the sacrum is the radiological convention, and the most
damaging mistake a labeller can make is to call something else the sacrum: every name above
it shifts.  (The iliac bone of a 3 mm abdominal CT, or the lowest thoracic vertebra at the
edge of a cropped angiography, have both been called sacrum by earlier versions of this
backend.)  So the sacrum is named only when all of this holds:

* it is the caudal end of the column, below a disc (the L5/S1 disc must be in view, or
  nothing can be counted from it);
* it has **alae** on *both* sides: solid bone at least :data:`ALA_MM` thick (in-plane
  distance to its surface) 28-45 mm out from the midline -- beside a lumbar vertebra there
  are only transverse processes, a few millimetres thick;
* the **ilia** lie beyond them on *both* sides (bone 52-82 mm out, where the sacroiliac
  joints and the iliac wings are), and the view is wide enough to see them.

A segment with alae on both sides is still one bone (the sacral pieces the discs finder cut
are merged into it), but without the ilia in view, or with alae on one side only (a
sacralised L5 with one transverse process fused to the sacrum), it is not an anchor.  With
both ilia's bands in view and empty it is not a sacrum at all: L5's transverse processes can
be as thick as alae (8 mm to their surface in VerSe's sub-verse004), and a view that ends at
L5 shows nothing under them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage


from .work import SacrumEvidence

if TYPE_CHECKING:  # pragma: no cover
    from .work import Work

#: Thickness (mm, in-plane distance to the bone's surface) of the bone beside a body that
#: makes it an ala; transverse processes and rib necks are a few millimetres thick.
ALA_MM = 6.5
#: Where the alae and the ilia lie (mm from the midline).
ALA_BAND_MM = (28.0, 45.0)
ILIUM_BAND_MM = (52.0, 82.0)
#: The top of a candidate sacrum is looked at from this far to this far (mm) under the disc
#: above it.
TOP_MM = (4.0, 26.0)
#: Bone area (mm^2) in a plane's ilium band that counts as an iliac bone there, and the
#: fraction of the sacrum's top planes it must be seen in.
ILIUM_AREA_MM2 = 150.0
ILIUM_PLANES = 0.5
#: How far up the column (mm) from its caudal end the sacrum's top may lie, and among how
#: many of the lowest segments it is looked for.
MAX_HEIGHT_MM = 130.0
LOWEST = 10
#: A band less than this fraction inside the CT's view cannot show what is there.
MIN_VISIBLE = 0.8


def assess(work: "Work", full: np.ndarray, inside: np.ndarray) -> SacrumEvidence:
    """Look for the sacrum among the lowest segments of ``work.bodies``.

    Each candidate is looked at just under the disc above it (the top of S1, where the alae
    and the sacroiliac joints are), in planes parallel to that disc and centred on the column
    of the vertebra above: the sacrum curves backwards, away from any straightened view of
    the mobile spine, but its top sits under the last lumbar body.  ``full`` is the bone mask
    and ``inside`` the CT's field of view, on the working grid.
    """
    sp = work.spacing
    bodies = work.bodies
    start0 = bodies[0].start
    cands = []
    for j, b in enumerate(bodies[:LOWEST]):
        if (b.start - start0) * sp > MAX_HEIGHT_MM:
            break
        planes = _top_planes(work, j, full, inside)
        if planes is None:
            continue
        bone, seen, uu = planes
        cands.append((j, _alae(bone, uu, sp), bone, seen, uu))
    like = [c for c in cands if min(c[1]) >= ALA_MM]
    if not like:
        one_sided = [c for c in cands if max(c[1]) >= ALA_MM]
        reason = (
            "bone as thick as an ala beside one of the lowest segments, on one side only: no sacrum"
            if one_sided else ""
        )
        return SacrumEvidence(reason=reason)
    j, alae, bone, seen, uu = max(like, key=lambda c: c[0])
    ilium = _ilia(bone, seen, uu)
    ev = SacrumEvidence(index=j, alae_mm=(round(alae[0], 1), round(alae[1], 1)), ilium=ilium)
    if ilium == (False, False):
        # Both ilia in view and neither there: S1's alae always meet the ilia at the
        # sacroiliac joints, so this is a vertebra whose transverse processes are stout (L5's
        # are, and a view that ends at L5 shows nothing below them).
        return SacrumEvidence(
            reason="bone as thick as alae beside the lowest segments, but no iliac bone beyond "
                   "it on either side: transverse processes, not a sacrum")
    if j == len(bodies) - 1:
        ev.reason = "sacrum-like bone with no vertebra above it in view: nothing to count"
    elif ilium != (True, True):
        words = {None: "outside the view", False: "absent", True: "seen"}
        ev.reason = (
            "sacrum-like bone, but the iliac bones beside it are "
            f"{words[ilium[0]]} (left) and {words[ilium[1]]} (right): not used to name levels"
        )
    else:
        ev.verified = True
        ev.reason = "sacrum: alae and both sacroiliac joints in view"
    return ev


def _top_planes(work: "Work", j: int, full: np.ndarray, inside: np.ndarray):
    """Bone and field of view in planes parallel to the disc above segment ``j``, from
    :data:`TOP_MM` under it, centred on the column above (``None`` without a segment above).

    Returns ``(bone, seen, uu)``: arrays ``[plane, u, v]`` sampled every 2 mm and the u
    offsets in mm.
    """
    sp = work.spacing
    bodies, line, st = work.bodies, work.line, work.planes
    if j + 1 >= len(bodies):
        return None
    above = bodies[j + 1]
    c = int(round(above.centre))
    t, u, v = line.t[c], line.u[c], line.v[c]
    centre = line.p[c] + st.body_u[c] * u + st.body_v[c] * v
    disc = 0.5 * (bodies[j].stop + above.start)
    step = 2.0 / sp
    depths = np.arange(TOP_MM[0], TOP_MM[1] + 1e-9, 2.0) / sp + (c - disc)
    half_u = ILIUM_BAND_MM[1] / sp
    uu = np.arange(-half_u, half_u + 1e-9, step)
    vv = np.arange(-above.depth / 2 - 10.0 / sp, above.depth / 2 + 60.0 / sp + 1e-9, step)
    U, V = np.meshgrid(uu, vv, indexing="ij")
    pts = (
        centre[None, :, None, None] - depths[:, None, None, None] * t[None, :, None, None]
        + U[None, None] * u[None, :, None, None] + V[None, None] * v[None, :, None, None]
    )
    pts = np.moveaxis(pts, 1, 0).reshape(3, -1)
    shape = (len(depths),) + U.shape
    bone = ndimage.map_coordinates(full.astype(np.float32), pts, order=0, cval=0.0) > 0.5
    seen = ndimage.map_coordinates(inside.astype(np.float32), pts, order=0, cval=0.0) > 0.5
    return bone.reshape(shape), seen.reshape(shape), uu * sp


def _alae(bone: np.ndarray, uu: np.ndarray, sp: float) -> tuple[float, float]:
    """Left and right ala thickness (mm): the 80th percentile over the planes of the largest
    in-plane distance-to-background in the ala band on that side."""
    # In-plane distances only: a huge spacing across planes keeps them apart.
    dist = ndimage.distance_transform_edt(bone, sampling=(1e4, 2.0, 2.0))
    out = []
    for sign in (1.0, -1.0):
        band = (uu * sign >= ALA_BAND_MM[0]) & (uu * sign <= ALA_BAND_MM[1])
        per_plane = dist[:, band, :].max(axis=(1, 2))
        out.append(float(np.percentile(per_plane, 80)))
    return out[0], out[1]


def _ilia(bone: np.ndarray, seen: np.ndarray, uu: np.ndarray):
    """Whether iliac bone lies beyond the alae on each side (``None`` for a side the view does
    not cover)."""
    px_area = 4.0  # mm^2 per sample
    out = []
    for sign in (1.0, -1.0):
        band = (uu * sign >= ILIUM_BAND_MM[0]) & (uu * sign <= ILIUM_BAND_MM[1])
        if seen[:, band, :].mean() < MIN_VISIBLE:
            out.append(None)
            continue
        area = bone[:, band, :].sum(axis=(1, 2)) * px_area
        out.append(bool(np.mean(area >= ILIUM_AREA_MM2) >= ILIUM_PLANES))
    return out[0], out[1]
