"""Discs between the vertebral bodies found along the straightened spine.

* :func:`disc_brightness` -- how bright discs look at their darkest, which a shell threshold
  must exceed so that bodies never fuse through a disc;
* :func:`split_long` -- runs too long for one body are split at the gaps a stricter mask shows;
* :func:`hu_profile`, :func:`split_at_dips` -- where shells are too faint to close at all, discs
  are found as dips of the HU profile at the body centre;
* :func:`disc_planes` -- each disc's mid-surface, tilt included, fitted from where the HU is
  lowest between two bodies, so that a wedged disc is cleared as a whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .axis import Centreline
from .vertebrae import BodyRun, Straightened

#: Which of the discs' floors sets the shell threshold (100 = the brightest disc).
DISC_FLOOR_PERCENTILE = 75


def disc_brightness(
    hu: np.ndarray, line: Centreline, st: Straightened, bodies: list[BodyRun], spacing: float,
    bone_hu: float,
) -> float:
    """How bright the discs between ``bodies`` are at their darkest (-inf if no discs).

    For each gap between bodies, the median HU of a small box at the body centre is taken in
    every plane of the gap and the minimum kept: the disc's floor, which a shell threshold must
    exceed to keep the bodies on either side apart.  The highest floor is returned.  Floors
    brighter than ``bone_hu`` are bone whose shell did not close, not discs, and are ignored.
    """
    vals = []
    for lo, hi in zip(bodies[:-1], bodies[1:]):
        planes = np.arange(lo.stop + 1, hi.start)
        if planes.size == 0:
            continue
        half = max(2.0, 0.15 * min(lo.width, hi.width))
        uu = np.arange(-half, half + 1e-9)
        U, V = np.meshgrid(uu, uu, indexing="ij")
        floor = np.inf
        for i in planes:
            pts = line.plane_points([i], U + st.body_u[i], V + st.body_v[i])
            vals_i = ndimage.map_coordinates(hu, pts.reshape(3, -1), order=1)
            floor = min(floor, float(np.median(vals_i)))
        vals.append(floor)
    vals = [v for v in vals if v < bone_hu - 30.0]
    return float(np.percentile(vals, DISC_FLOOR_PERCENTILE)) if vals else float("-inf")


#: A run of body planes longer than this many body widths holds more than one vertebra
#: (a vertebral body is never taller than ~0.85 of its width, C2 with its dens aside).
MAX_BODY_ASPECT = 1.15


def split_long(
    bodies: list[BodyRun], hint: list[BodyRun], st: Straightened
) -> list[BodyRun]:
    """Split runs too long for one body at the gaps of ``hint`` (a stricter pass) inside them.

    The sacrum (the long caudal run) is handled by the caller and not passed here split.
    """
    out: list[BodyRun] = []
    cuts = [((a.stop + b.start) / 2, a.stop, b.start) for a, b in zip(hint[:-1], hint[1:])]
    for b in bodies:
        if b.length <= MAX_BODY_ASPECT * b.width or b is bodies[0]:
            out.append(b)
            continue
        inner = [c for c in cuts if b.start + 0.3 * b.width < c[0] < b.stop - 0.3 * b.width]
        if not inner:
            out.append(b)
            continue
        start = b.start
        for _, lo, hi in inner:
            out.append(BodyRun(start, int(lo), b.width, b.depth))
            start = int(hi)
        out.append(BodyRun(start, b.stop, b.width, b.depth))
    return out


def hu_profile(hu: np.ndarray, line: Centreline, st: Straightened, spacing: float) -> np.ndarray:
    """Median HU in a small box at the body centre, per plane, lightly smoothed."""
    half = max(2.0, 4.0 / spacing)
    uu = np.arange(-half, half + 1e-9)
    U, V = np.meshgrid(uu, uu, indexing="ij")
    out = np.zeros(len(line))
    for a in range(0, len(line), 200):
        idx = np.arange(a, min(len(line), a + 200))
        pts = line.plane_points(idx, U, V)
        pts += (st.body_u[idx][None, :, None, None] * line.u[idx].T[:, :, None, None]
                + st.body_v[idx][None, :, None, None] * line.v[idx].T[:, :, None, None])
        vals = ndimage.map_coordinates(hu, pts.reshape(3, -1), order=1, cval=np.nan)
        vals = vals.reshape(len(idx), -1)
        seen = np.isfinite(vals).any(axis=1)  # planes beyond the view have no HU at all
        out[idx[~seen]] = -1000.0
        if seen.any():
            out[idx[seen]] = np.nanmedian(vals[seen], axis=1)
    return ndimage.gaussian_filter1d(out, 1.5 / spacing, mode="nearest")


#: A disc found from HU alone: at least this much darker than the marrow on both sides ...
DIP_PROMINENCE_HU = 50.0
#: ... and no brighter than this at its darkest.
DIP_MAX_HU = 170.0


def split_at_dips(bodies: list[BodyRun], profile: np.ndarray, spacing: float) -> list[BodyRun]:
    """Split body runs where the HU profile dips like a disc between two bodies' marrow.

    Used when cortical shells are too faint for the filled-fraction profile to show discs: a
    disc is then a local minimum at most :data:`DIP_MAX_HU`, at least
    :data:`DIP_PROMINENCE_HU` below the brightest plane within 15 mm on *each* side.  The
    split leaves the planes darker than halfway up the dip to neither body.
    """
    reach = int(round(15.0 / spacing))
    edge = int(round(5.0 / spacing))
    out: list[BodyRun] = []
    for b in bodies:
        pieces = [(b.start, b.stop)]
        changed = True
        while changed:
            changed = False
            for pi, (a, z) in enumerate(pieces):
                best = None
                for i in range(a + edge, z - edge + 1):
                    h = profile[i]
                    if h > DIP_MAX_HU or h > profile[i - 1] or h > profile[i + 1]:
                        continue
                    left = profile[max(a, i - reach): i].max()
                    right = profile[i + 1: min(z, i + reach) + 1].max()
                    prom = min(left, right) - h
                    if prom >= DIP_PROMINENCE_HU and (best is None or prom > best[1]):
                        best = (i, prom)
                if best is None:
                    continue
                i, prom = best
                level = profile[i] + prom / 2
                lo_ = i
                while lo_ - 1 > a and profile[lo_ - 1] < level:
                    lo_ -= 1
                hi_ = i
                while hi_ + 1 < z and profile[hi_ + 1] < level:
                    hi_ += 1
                pieces[pi: pi + 1] = [(a, lo_ - 1), (hi_ + 1, z)]
                changed = True
                break
        out.extend(BodyRun(a, z, b.width, b.depth) for a, z in pieces if z >= a)
    return out


@dataclasses.dataclass
class DiscPlane:
    """A disc's mid-surface between two bodies: plane index ``s = a + b*u + c*v`` (voxels,
    ``u``/``v`` relative to the body centre) and its half thickness in planes."""

    a: float
    b: float
    c: float
    half: float

    def offset(self, idx, u, v) -> np.ndarray:
        """Signed distance (planes) of points from the disc's mid-surface."""
        return idx - (self.a + self.b * u + self.c * v)


#: Steepest disc tilt accepted against the spine's axis (tan of ~25 degrees).
MAX_DISC_TILT = 0.47
#: Planes either side of a gap searched for the disc's dark band, mm.
DISC_FIT_MARGIN_MM = 4.0


def disc_planes(
    hu: np.ndarray, line: Centreline, st: Straightened, bodies: list[BodyRun], spacing: float
) -> list[DiscPlane]:
    """Fit each disc's mid-surface from where the HU is lowest between two bodies.

    Discs are rarely square to the spine's axis (wedged lordotic discs, tilted endplates);
    cutting them at planes perpendicular to the centreline would leave disc in one body and
    take marrow from the other.  For every (u, v) column through the body, the darkest plane
    near the gap is found; a plane is fitted to those depths with the worst fifth trimmed, and
    its tilt is capped at :data:`MAX_DISC_TILT`.  A gap in which the disc is not darker than
    the bodies (thick slices blur bright endplates into it) keeps the perpendicular plane.
    """
    out = []
    for lo, hi in zip(bodies[:-1], bodies[1:]):
        g0, g1 = lo.stop + 1, hi.start - 1
        mid = (g0 + g1) / 2.0
        half = max((g1 - g0 + 1) / 2.0, 1.5 / spacing)
        perpendicular = DiscPlane(mid, 0.0, 0.0, half)
        w = int(round(DISC_FIT_MARGIN_MM / spacing))
        idx = np.arange(max(0, g0 - w), min(len(line), g1 + w + 1))
        c = int(round(mid))
        hw = max(2.0, 0.35 * min(lo.width, hi.width))
        hd = max(2.0, 0.35 * min(lo.depth, hi.depth))
        uu = np.arange(-hw, hw + 1e-9, 2.0 / spacing)
        vv = np.arange(-hd, hd + 1e-9, 2.0 / spacing)
        U, V = np.meshgrid(uu, vv, indexing="ij")
        pts = line.plane_points(idx, U + st.body_u[c], V + st.body_v[c])
        vals = ndimage.map_coordinates(hu, pts.reshape(3, -1), order=1, cval=np.nan)
        vals = vals.reshape((len(idx),) + U.shape)
        finite = np.isfinite(vals)
        if finite.mean() < 0.6 or not finite[(idx >= g0) & (idx <= g1)].any():
            out.append(perpendicular)  # the view cuts the disc: too little to fit a tilt
            continue
        # Outside the view counts as bright (not disc), so it draws no weight below.
        vals = np.where(finite, vals, np.nanmax(vals))
        vals = ndimage.gaussian_filter(vals, (1.0 / spacing, 1.0, 1.0))
        centre_prof = vals[:, U.shape[0] // 2, U.shape[1] // 2]
        inside = (idx >= g0) & (idx <= g1)
        bodies_lvl = min(
            np.median(centre_prof[idx < g0]) if (idx < g0).any() else np.inf,
            np.median(centre_prof[idx > g1]) if (idx > g1).any() else np.inf,
        )
        if not inside.any() or centre_prof[inside].min() > bodies_lvl - 30.0:
            out.append(perpendicular)
            continue
        # Depth of the dark band in each column: the darkness-weighted mean plane (steadier
        # than the single darkest plane).
        level = np.median(vals, axis=0, keepdims=True)
        dark = np.maximum(level - vals, 0.0)
        wsum = dark.sum(axis=0)
        depth = ((dark * idx[:, None, None]).sum(axis=0) / np.maximum(wsum, 1e-6)).ravel()
        depth[wsum.ravel() <= 0] = mid
        A = np.column_stack([np.ones(depth.size), U.ravel(), V.ravel()])
        keep = np.ones(depth.size, bool)
        coef = np.array([mid, 0.0, 0.0])
        for _ in range(3):
            coef, *_ = np.linalg.lstsq(A[keep], depth[keep], rcond=None)
            res = np.abs(A @ coef - depth)
            keep = res <= np.percentile(res, 80)
        b, cc = (float(x) for x in coef[1:])
        if max(abs(b), abs(cc)) > MAX_DISC_TILT:
            # Steeper than any disc: the darkest planes are noise, not a surface.
            out.append(perpendicular)
            continue
        # The fitted plane must still pass through the gap at the body centre.
        a = float(np.clip(coef[0], g0 - 1, g1 + 1))
        out.append(DiscPlane(a, b, cc, half))
    return out
