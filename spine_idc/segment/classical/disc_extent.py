"""Each disc's extent along the spine, the bodies between the discs, and each disc's tilted
mid-surface.

:mod:`.discs` says where the discs are (a centre plane each, from the evidence and the
spine's rhythm).  Here:

* :func:`refine_discs` finds how thick each disc is: the dark band between its two endplate
  peaks where there is one, else the middle 3 mm of the bright band where disc and endplates
  blurred together;
* :func:`edge_discs` moves an outermost disc that was put on the endplate beside a disc the
  view cuts onto that cut disc;
* :func:`between_bodies` keeps the outermost discs only when bone lies beyond them, and
  :func:`bodies_between` makes the bodies of the stretches between discs;
* :func:`disc_planes` fits each disc's mid-surface, tilt included, from where the HU is
  lowest between two bodies, so that a wedged disc is cleared as a whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .axis import Centreline
from .discs import FLOOR_PERCENTILE, Disc, smoothed_profile
from .vertebrae import BodyRun, Straightened


#: Two endplates of one disc lie at most this fraction of a level apart (a disc with its
#: endplates is at most about a third of a level), and at most :data:`PAIR_MAX_MM`.
PAIR_OF_PERIOD = 0.45
PAIR_MAX_MM = 16.0
#: A dip between two endplate peaks must be at least this deep (HU) to be a disc, and the
#: weaker peak at least this fraction of the stronger one's height above the local floor.
MIN_DIP_HU = 15.0
PAIR_BALANCE = 0.1
#: How much worse (sum of |log(level / rhythm)| over the two levels beside it) a paired centre
#: may fit the rhythm than the evidence peak's own before it is refused.
RHYTHM_SLACK = 0.15


def _endplate_pair(f: np.ndarray, c: int, span: float) -> tuple[int, int] | None:
    """The two endplate peaks of the disc whose evidence peaks at ``c``: the pair of
    neighbouring maxima of ``f`` at most ``span`` planes apart, with ``c`` between them or on
    one of them, that holds the deepest dip.  ``None`` when no such pair has a dip.

    With thick slices through a faint spine each endplate is a broad bright band of its own,
    and the brighter one alone looks bright "on both sides" of its own middle: the evidence may
    peak on that endplate, not on the disc beside it.
    """
    n = len(f)
    r = int(np.ceil(span))
    a, b = max(1, c - r), min(n - 2, c + r)
    maxima = [i for i in range(a, b + 1) if f[i] >= f[i - 1] and f[i] > f[i + 1]]
    floor = float(np.percentile(f[max(0, c - 2 * r): c + 2 * r + 1], FLOOR_PERCENTILE))
    best, pair = MIN_DIP_HU, None
    for p, q in zip(maxima[:-1], maxima[1:]):
        if q - p > span or not p <= c <= q:
            continue
        # Both must be endplates: a bump of marrow beside a bright disc band is not.
        lo_ex, hi_ex = sorted((f[p] - floor, f[q] - floor))
        if lo_ex < PAIR_BALANCE * hi_ex:
            continue
        depth = min(f[p], f[q]) - float(f[p: q + 1].min())
        if depth > best:
            best, pair = depth, (p, q)
    return pair


def refine_discs(profile: np.ndarray, evidence: np.ndarray, centres: list[int], spacing: float,
                 period: np.ndarray | None = None) -> list[Disc]:
    """Each disc's centre and half thickness from the profile around its evidence peak.

    Where the disc shows as a dark band between two endplate peaks, the disc is the band
    between them and its centre the middle of the band.  The two peaks are the neighbouring
    maxima around the evidence peak (or on it) at most :data:`PAIR_OF_PERIOD` of the local
    rhythm ``period`` apart (:data:`PAIR_MAX_MM` without one) with the deepest dip between
    them; failing that, the brightest planes within 8 mm either side.  Where disc and
    endplates blurred into one bright band, the disc is the band's middle 3 mm.
    """
    f = smoothed_profile(profile, spacing)
    reach = int(round(8.0 / spacing))
    plain, paired = [], []
    for c in centres:
        span = PAIR_MAX_MM / spacing
        if period is not None and np.isfinite(period[c]):
            span = min(span, PAIR_OF_PERIOD * period[c])
        a, b = max(0, c - reach), min(len(f) - 1, c + reach)
        brightest = (a + int(np.argmax(f[a: c + 1])), c + int(np.argmax(f[c: b + 1])))
        plain.append(_dark_band(f, c, *brightest, spacing, paired=False))
        pair = _endplate_pair(f, c, span)
        paired.append(None if pair is None else _dark_band(f, c, *pair, spacing, paired=True))
    # A pair may move a disc off its evidence peak, never off the spine's rhythm: a shift that
    # makes the levels beside it fit the rhythm worse than the plain centre is not taken (a
    # dip of marrow beside a thin disc's bright band is not the disc).
    chosen = [q if q is not None else p for p, q in zip(plain, paired)]
    if period is not None:
        for _ in range(2):  # a neighbour's choice changes the levels beside this one
            for i, c in enumerate(centres):
                if paired[i] is None or not np.isfinite(period[c]):
                    continue

                def misfit(centre: float, i=i, c=c) -> float:
                    # Levels beside the disc against the rhythm, and against each other.
                    gaps = [max(abs(centre - chosen[j][0]), 1.0) for j in (i - 1, i + 1)
                            if 0 <= j < len(centres)]
                    out = sum(abs(np.log(g / period[c])) for g in gaps)
                    return out + (abs(np.log(gaps[0] / gaps[1])) if len(gaps) == 2 else 0.0)

                better = misfit(paired[i][0]) <= misfit(plain[i][0]) + RHYTHM_SLACK
                chosen[i] = paired[i] if better else plain[i]
    return [Disc(centre=centre, half=float(half), evidence=float(evidence[c]))
            for c, (centre, half) in zip(centres, chosen)]


#: An outermost disc within this distance of the end of the view may sit on the endplate of a
#: disc that the view cuts (:func:`edge_discs`).
EDGE_DISC_MM = 8.0
#: The marrow an endplate band is compared with: this stretch beyond the band.
EDGE_PLATEAU_MM = (2.0, 12.0)


def edge_discs(profile: np.ndarray, discs: list[Disc], spacing: float) -> list[Disc]:
    """The outermost discs, moved onto the disc that the end of the view cuts.

    :func:`disc_evidence` gives nothing within :data:`EDGE_MM` of either end of the view: a
    disc centre needs an endplate seen on both sides.  Where the view ends inside a disc, the
    evidence then peaks on the bright endplate beside it (bright on both sides of its own
    middle), and the disc would be placed on that endplate: the endplate is cut from its
    body and the disc below becomes a sliver of "vertebra".  So an outermost disc within
    :data:`EDGE_DISC_MM` of the end is moved where

    * it lies on a band brighter than the marrow beyond it (by :data:`MIN_DIP_HU`), with no
      notch of that depth at its centre: an endplate, not a disc that shows as a dark band
      between two endplates;
    * between that band and the end of the view the profile falls to its lowest within one
      plane of the end, at least :data:`MIN_DIP_HU` below that marrow: soft tissue that the
      view cuts, not the marrow of a vertebra beyond.

    The disc is then the dark run at the end (below halfway from its floor up to the band),
    and the end piece beyond it is too short to be a body.
    """
    if not discs:
        return discs
    seen = np.flatnonzero(np.isfinite(profile))
    if seen.size < 5:
        return discs
    f = smoothed_profile(profile, spacing)
    first, last = int(seen[0]), int(seen[-1])
    reach = int(round(EDGE_DISC_MM / spacing))
    p0, p1 = (int(round(x / spacing)) for x in EDGE_PLATEAU_MM)
    out = list(discs)
    for i, end, step in ((0, first, 1), (len(out) - 1, last, -1)):
        d = out[i]
        # Along the profile from the end of the view inwards.
        g = f[first: last + 1] if step > 0 else f[first: last + 1][::-1]
        c = int(round(d.centre)) - first if step > 0 else last - int(round(d.centre))
        if not 0 <= c <= reach:
            continue
        beyond = g[c + int(np.ceil(d.half)) + p0: c + int(np.ceil(d.half)) + p1 + 1]
        if beyond.size < max(3, p1 - p0) // 2:
            continue
        marrow = float(np.median(beyond))
        # A dark notch between two endplates is a disc of its own, wherever it lies.
        notch = min(g[: c + 1].max(), g[c: c + reach + 1].max()) - g[c]
        if notch >= MIN_DIP_HU:
            continue
        band = int(np.argmax(g[: c + int(np.ceil(d.half)) + 1]))
        low = int(np.argmin(g[: band + 1]))
        if g[band] < marrow + MIN_DIP_HU or low > 1 or g[low] > marrow - MIN_DIP_HU:
            continue
        level = g[low] + 0.5 * (g[band] - g[low])
        run = low
        while run + 1 < band and g[run + 1] < level:
            run += 1
        centre = 0.5 * run
        half = max(1.5 / spacing, 0.5 * (run + 1))
        centre = first + centre if step > 0 else last - centre
        out[i] = Disc(centre=float(centre), half=float(half), evidence=d.evidence)
    return out


def _dark_band(f: np.ndarray, c: int, left: int, right: int, spacing: float, *, paired: bool
               ) -> tuple[float, float]:
    """Centre and half thickness of the dark band between endplate peaks ``left`` and
    ``right`` around ``c``; without one, ``c`` and 1.5 mm."""
    half = 1.5 / spacing
    centre = float(c)
    if left < c < right or paired:
        low = left + int(np.argmin(f[left: right + 1]))
        depth = min(f[left], f[right]) - f[low]
        if depth > 0.0 and left < low < right:
            # The dark band: where the profile is below halfway up the dip.
            level = f[low] + 0.5 * depth
            lo_, hi_ = low, low
            while lo_ - 1 > left and f[lo_ - 1] < level:
                lo_ -= 1
            while hi_ + 1 < right and f[hi_ + 1] < level:
                hi_ += 1
            centre = 0.5 * (lo_ + hi_)
            half = max(half, 0.5 * (hi_ - lo_ + 1))
    return centre, half


def between_bodies(discs: list[Disc], profile: np.ndarray, bone_hu: float, spacing: float,
                   flank_mm: float = 6.0) -> list[Disc]:
    """The discs that have bone on both sides: the profile over ``flank_mm`` beyond each
    half is mostly above ``bone_hu``.  (The last endplate of a column whose next vertebra is
    not there -- the top of the cervical spine, a phantom's last level -- looks like a disc's
    edge, but has soft tissue beyond it.)  Only the outermost discs are checked: one between
    two others has a body on each side by construction."""
    if len(discs) <= 2:
        ends = set(range(len(discs)))
    else:
        ends = {0, len(discs) - 1}
    out = []
    f = max(2, int(round(flank_mm / spacing)))
    gap = int(round(2.0 / spacing))  # past the endplate's own blur
    for i, d in enumerate(discs):
        if i not in ends:
            out.append(d)
            continue
        a = int(d.centre - d.half) - gap
        b = int(d.centre + d.half) + 1 + gap
        lo = profile[max(0, a - f): max(0, a)]
        hi = profile[b: b + f]
        # A flank the view does not show cannot tell: only soft tissue seen there rejects.
        ok = all(
            side.size == 0 or np.isfinite(side).mean() <= 0.5 or np.nanmedian(side) >= bone_hu
            for side in (lo, hi)
        )
        if ok:
            out.append(d)
    return out


def bodies_between(discs: list[Disc], lo: int, hi: int, st: Straightened, spacing: float,
                   bone_hu: float = -np.inf, min_end_mm: float = 4.0) -> list[BodyRun]:
    """Vertebral bodies as the stretches between discs, plus the partial ones at each end.

    ``lo``/``hi`` are the first and last planes the column was seen in.  An end piece shorter
    than ``min_end_mm`` is dropped (a sliver of endplate at the edge of the view), and so is
    one whose core is mostly darker than ``bone_hu`` (soft tissue beyond the last endplate).
    """
    edges = [(float(lo) - 1.0, 0.0)] + [(d.centre, d.half) for d in discs] + [(float(hi) + 1.0, 0.0)]
    out = []
    for (c0, h0), (c1, h1) in zip(edges[:-1], edges[1:]):
        start = max(lo, int(np.ceil(c0 + h0)))
        stop = min(hi, int(np.floor(c1 - h1)))
        if stop < start:
            continue
        end_piece = c0 < lo or c1 > hi
        if end_piece and (stop - start + 1) * spacing < min_end_mm:
            continue
        core = st.profile[start: stop + 1]
        core = core[np.isfinite(core)]
        if end_piece and (core.size == 0 or np.median(core) < bone_hu):
            continue
        sel = slice(start, stop + 1)
        w = st.width[sel]
        d = st.depth[sel]
        w = w[np.isfinite(w)]
        d = d[np.isfinite(d)]
        out.append(BodyRun(
            start, stop,
            float(np.median(w)) if w.size else 20.0 / spacing,
            float(np.median(d)) if d.size else 20.0 / spacing,
        ))
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


#: Steepest disc tilt accepted against the plane perpendicular to the canal (tan of ~15
#: degrees): the canal follows the column, so a disc is rarely tilted more against it.
MAX_DISC_TILT = 0.27
#: Planes beyond a disc's found extent searched for its dark band, mm.
DISC_FIT_MARGIN_MM = 2.0


def disc_planes(
    hu: np.ndarray, line: Centreline, st: Straightened, bodies: list[BodyRun], spacing: float,
    found: list[Disc] | None = None,
) -> list[DiscPlane]:
    """Each disc's mid-surface between two bodies, tilt included where the disc shows it.

    Discs are not always square to the spine's axis (wedged lordotic discs, tilted endplates);
    cutting them at planes perpendicular to the centreline would leave disc in one body and
    take marrow from the other.  Within the disc's own extent (``found``, from
    :func:`refine_discs`; else the gap between the bodies) and :data:`DISC_FIT_MARGIN_MM`
    around it, the darkest plane of every (u, v) column through the body is found and a plane
    fitted to those depths with the worst fifth trimmed.  The fit is kept only if the disc is
    darker than the bodies beside it and its tilt is within :data:`MAX_DISC_TILT`; otherwise
    (a disc blurred bright by thick slices, osteoporotic marrow darker than the disc) the
    perpendicular plane through the disc's centre is used.
    """
    out = []
    for lo, hi in zip(bodies[:-1], bodies[1:]):
        g0, g1 = lo.stop + 1, hi.start - 1
        mid = (g0 + g1) / 2.0
        half = max((g1 - g0 + 1) / 2.0, 1.5 / spacing)
        between = [d for d in (found or []) if lo.stop <= d.centre <= hi.start]
        if between:
            d = max(between, key=lambda d: d.evidence)
            mid, half = d.centre, max(d.half, 1.5 / spacing)
        perpendicular = DiscPlane(mid, 0.0, 0.0, half)
        w = int(round(DISC_FIT_MARGIN_MM / spacing))
        a0, a1 = int(np.floor(mid - half)) - w, int(np.ceil(mid + half)) + w
        idx = np.arange(max(0, a0 - 2 * w), min(len(line), a1 + 2 * w + 1))
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
        band = (idx >= a0) & (idx <= a1)
        if finite.mean() < 0.6 or not finite[band].any():
            out.append(perpendicular)  # the view cuts the disc: too little to fit a tilt
            continue
        vals = np.where(finite, vals, np.nanmax(vals))
        vals = ndimage.gaussian_filter(vals, (1.0 / spacing, 1.0, 1.0))
        centre_prof = vals[:, U.shape[0] // 2, U.shape[1] // 2]
        outside = ~band
        if not outside.any() or centre_prof[band].min() > np.median(centre_prof[outside]) - 30.0:
            out.append(perpendicular)
            continue
        # Depth of the dark band in each column: the darkness-weighted mean plane (steadier
        # than the single darkest plane), within the band only.
        sub = vals[band]
        sidx = idx[band]
        level = np.median(vals, axis=0, keepdims=True)
        dark = np.maximum(level - sub, 0.0)
        wsum = dark.sum(axis=0)
        depth = ((dark * sidx[:, None, None]).sum(axis=0) / np.maximum(wsum, 1e-6)).ravel()
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
            out.append(perpendicular)
            continue
        a = float(np.clip(coef[0], mid - half, mid + half))
        out.append(DiscPlane(a, b, cc, half))
    return out
