"""From a spine axis and a bone mask to individual vertebrae.

1. **Straightened spine.**  The filled-bone mask is sampled in planes perpendicular to the canal
   centreline.  In each plane the vertebral body is the bone in front of the canal; its centre
   is tracked plane by plane and smoothed.
2. **Discs.**  The fraction of filled bone in a small box at the body centre is ~1 through a
   body (cortical endplates close the shell, so even 80 HU marrow counts) and ~0 through a disc
   (no enclosing cortex, whatever its HU).  Runs of high fraction are vertebral bodies; the
   gaps between them are discs.
3. **Markers.**  Each body, plus the ring of bone around the canal at mid-body height
   (pedicles, laminae), seeds its vertebra.  Bone far lateral or far anterior of the spine
   seeds "other bone" (ribs, ilium, sternum, a contrast-filled aorta).
4. **Ribs off.**  Ribs touch vertebrae only at small joints, which blur into thin bridges;
   a marker race on the distance-to-background of the bone mask hands each tube-shaped rib
   to the "other" seed up to the narrow joint, where the spine's flood meets it.
5. **Vertebrae.**  The remaining spine bone goes to the geodesically nearest vertebra seed
   (watershed on a flat image), which keeps pedicles, laminae, processes with their own body.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from .axis import Centreline, sample_planes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BodyRun:
    """One vertebral body found along the centreline (plane indices, caudal to cranial)."""

    start: int
    stop: int  # inclusive
    width: float  # body width (left-right), voxels
    depth: float  # body depth (anteroposterior), voxels

    @property
    def length(self) -> int:
        return self.stop - self.start + 1

    @property
    def centre(self) -> float:
        return (self.start + self.stop) / 2


@dataclasses.dataclass
class Straightened:
    """Per-plane findings along the centreline."""

    body_u: np.ndarray  # body centre offset (u) per plane, voxels, smoothed and interpolated
    body_v: np.ndarray  # body centre offset (v) per plane
    width: np.ndarray  # per-plane body width (nan where no body)
    depth: np.ndarray
    profile: np.ndarray  # filled-bone fraction at the body centre
    found: np.ndarray  # bool: a body was seen in this plane


def analyse_planes(
    filled: np.ndarray, line: Centreline, canal_r: float, spacing: float
) -> Straightened:
    """Track the vertebral body in planes perpendicular to ``line`` and build the disc profile.

    ``canal_r`` is the canal's anteroposterior half-depth (voxels): the body lies in front of it.
    In every plane the body is the filled-bone component (2-D) with most pixels in a narrow
    strip straight in front of the canal; its median position is the body centre, its 3-97 %
    extents the body's width and depth.
    """
    from .bone import _plane_structure

    half_u = 35.0 / spacing
    v_lo = -(canal_r + 70.0 / spacing)
    planes = sample_planes(filled.astype(np.float32), line, half_u, (v_lo, 0.0))
    n, nu, nv = planes.shape
    uu = np.arange(nu) - half_u
    vv = np.arange(nv) + v_lo
    front = vv < -(canal_r + 1.0)
    strip = np.abs(uu) <= 4.0 / spacing
    min_px = (4.0 / spacing) ** 2
    mask = (planes > 0.5) & front[None, None, :]
    # All planes at once: components never connect across planes.
    lab, k = ndimage.label(mask, structure=_plane_structure(0))
    bu = np.full(n, np.nan)
    bv = np.full(n, np.nan)
    wid = np.full(n, np.nan)
    dep = np.full(n, np.nan)
    if k:
        hits = np.bincount(lab[:, strip, :].ravel(), minlength=k + 1)
        hits[0] = 0
        plane_of = np.array([sl[0].start for sl in ndimage.find_objects(lab)])
        best = np.zeros(n, int)
        best_hits = np.zeros(n)
        order = np.argsort(hits[1:], kind="stable")
        for c in order + 1:  # ascending, so the last write per plane is its best component
            best[plane_of[c - 1]] = c
            best_hits[plane_of[c - 1]] = hits[c]
        chosen = np.zeros(k + 1, bool)
        chosen[best[best_hits >= min_px]] = True
        chosen[0] = False
        pi, iu, iv = np.nonzero(chosen[lab])
        if pi.size:
            cuts = np.flatnonzero(np.diff(pi)) + 1
            for grp_u, grp_v, p in zip(
                np.split(uu[iu], cuts), np.split(vv[iv], cuts), pi[np.r_[0, cuts]]
            ):
                bu[p] = float(np.median(grp_u))
                bv[p] = float(np.median(grp_v))
                lo_u, hi_u = np.percentile(grp_u, [3, 97])
                lo_v, hi_v = np.percentile(grp_v, [3, 97])
                wid[p] = float(hi_u - lo_u)
                dep[p] = float(hi_v - lo_v)
    found = np.isfinite(bu)
    if found.sum() < 2:
        return Straightened(
            np.zeros(n), np.full(n, -(canal_r + 15.0 / spacing)), wid, dep, np.zeros(n), found
        )
    idx = np.arange(n)
    su = np.interp(idx, idx[found], bu[found])
    sv = np.interp(idx, idx[found], bv[found])
    su = ndimage.gaussian_filter1d(su, 6.0 / spacing, mode="nearest")
    sv = ndimage.gaussian_filter1d(sv, 6.0 / spacing, mode="nearest")
    # Disc profile: filled fraction in a box a little smaller than the body core.
    w_med = float(np.nanmedian(wid[found]))
    d_med = float(np.nanmedian(dep[found]))
    hu_ = int(max(2.0 / spacing, 0.2 * w_med))
    hv_ = int(max(2.0 / spacing, 0.2 * d_med))
    ci = np.clip(np.rint(su + half_u).astype(int), hu_, nu - 1 - hu_)
    cj = np.clip(np.rint(sv - v_lo).astype(int), hv_, nv - 1 - hv_)
    du, dv = np.meshgrid(np.arange(-hu_, hu_ + 1), np.arange(-hv_, hv_ + 1), indexing="ij")
    box = planes[
        idx[:, None, None], ci[:, None, None] + du[None], cj[:, None, None] + dv[None]
    ]
    prof = box.reshape(n, -1).mean(axis=1)
    return Straightened(su, sv, wid, dep, prof, found)


def find_bodies(st: Straightened, spacing: float, *, level: float = 0.5) -> list[BodyRun]:
    """Runs of high filled fraction (bodies) separated by dips (discs), caudal to cranial."""
    high = st.profile >= level
    runs = []
    n = len(high)
    i = 0
    while i < n:
        if not high[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and high[j + 1]:
            j += 1
        runs.append([i, j])
        i = j + 1
    # A one-plane dip inside a body is noise, not a disc: a disc is at least ~1.5 mm and the
    # fraction drops well below the threshold in it.
    merged: list[list[int]] = []
    for r in runs:
        if merged:
            gap = r[0] - merged[-1][1] - 1
            low = st.profile[merged[-1][1] + 1: r[0]].min() if gap > 0 else 1.0
            if gap * spacing < 1.5 and low > 0.25:
                merged[-1][1] = r[1]
                continue
        merged.append(r)
    bodies = []
    min_len = max(2, int(round(4.0 / spacing)))
    # A body cut by the end of the view may show only a few millimetres.
    end_len = max(2, int(round(2.0 / spacing)))
    for a, b in merged:
        at_end = a <= 1 or b >= n - 2
        if b - a + 1 < (end_len if at_end else min_len):
            continue
        w = st.width[a: b + 1]
        d = st.depth[a: b + 1]
        w = w[np.isfinite(w)]
        d = d[np.isfinite(d)]
        bodies.append(
            BodyRun(
                a, b,
                float(np.percentile(w, 30)) if w.size else 20.0 / spacing,
                float(np.percentile(d, 50)) if d.size else 20.0 / spacing,
            )
        )
    return bodies


def project_mask(mask: np.ndarray, line: Centreline):
    """Coordinates of ``mask`` voxels and their (index, u, v, w) relative to ``line``."""
    coords = np.nonzero(mask)
    pts = np.vstack(coords).astype(float)
    idx, u, v, w = line.project(pts)
    return coords, idx, u, v, w


def territories(bodies: list[BodyRun], n: int) -> np.ndarray:
    """Per plane, the index of the vertebra whose disc-to-disc interval holds it."""
    owner = np.zeros(n, dtype=int)
    cuts = [(bodies[k].stop + bodies[k + 1].start) / 2 for k in range(len(bodies) - 1)]
    planes = np.arange(n)
    for c in cuts:
        owner += planes > c
    return owner


def lateral_mass(
    bone: np.ndarray, line: Centreline, st: Straightened, bodies: list[BodyRun], spacing: float
) -> list[float]:
    """Per body, how massive the bone beside it is: the 80th percentile over its planes of the
    largest in-plane distance-to-background found 28-45 mm either side of the midline.

    The sacrum's lateral masses (alae) are solid bone several centimetres thick; beside any
    mobile vertebra there are only transverse processes and rib necks, a few millimetres
    thick.  Values are in mm.
    """
    half_u = 48.0 / spacing
    out = []
    for b in bodies:
        idx = np.arange(b.start, b.stop + 1)
        v0 = float(np.min(st.body_v[idx])) - b.depth / 2
        planes = sample_planes(
            bone.astype(np.float32), line, half_u, (v0, v0 + b.depth + 45.0 / spacing), idx=idx
        ) > 0.5
        # In-plane distances only: a huge spacing across planes keeps them apart.
        dist = ndimage.distance_transform_edt(planes, sampling=(1e4, spacing, spacing))
        uu = np.arange(planes.shape[1]) - half_u
        band = (np.abs(uu) >= 28.0 / spacing) & (np.abs(uu) <= 45.0 / spacing)
        per_plane = dist[:, band, :].max(axis=(1, 2))
        out.append(float(np.percentile(per_plane, 80)))
    return out


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
    return max(vals) if vals else float("-inf")


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
