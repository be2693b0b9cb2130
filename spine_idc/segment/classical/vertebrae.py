"""Vertebral bodies and discs along the straightened spine.

1. **Straightened spine.**  The filled-bone mask is sampled in planes perpendicular to the canal
   centreline.  In each plane the vertebral body is the bone in front of the canal; its centre
   is tracked plane by plane and smoothed (:func:`analyse_planes`).
2. **Bodies.**  The fraction of filled bone in a small box at the body centre is ~1 through a
   body (cortical endplates close the shell, so even 80 HU marrow counts) and ~0 through a disc
   (no enclosing cortex, whatever its HU).  Runs of high fraction are vertebral bodies; the
   gaps between them are discs (:func:`find_bodies`).
3. **Sacrum evidence.**  The thickness of the bone beside each body (:func:`lateral_mass`):
   only the sacrum's alae are centimetres thick.

Refining the discs is :mod:`.discs`; seeding and growing whole vertebrae is :mod:`.grow`.
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
    from .bone import plane_structure

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
    lab, k = ndimage.label(mask, structure=plane_structure(0))
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
