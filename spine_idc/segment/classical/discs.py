"""Discs along the straightened spine: where they are, how thick, and their tilted mid-surfaces.

A disc is rarely a clear dark band on real CT.  With 1 mm slices through a lumbar spine it is:
soft tissue (70-110 HU) between two bright endplates.  With 2-3 mm slices through the thorax
the 3-5 mm disc and its two sclerotic endplates blur into one *bright* band; in osteoporotic
bone the marrow (60-120 HU) is no brighter than the disc, and only the endplates tell them
apart.  What every disc has, whatever the scan, is a short stretch (a few millimetres) where
the body column's HU departs from the plateau of the bodies on either side -- darker, brighter,
or both in turn.  So (:func:`disc_evidence`):

* the column's core profile (mean HU inside the body outline, :mod:`.column`) is compared with
  its running median over 25 mm (the plateau: a body is taller than a disc complex, so the
  median follows the bodies), and the absolute departure is averaged over 7 mm;
* the result is expressed in units of how much the bodies' own planes depart from the plateau
  (a low percentile of the departures along the spine), so the same numbers serve noisy 3 mm
  scans and crisp 1 mm ones.

That evidence alone also fires on a Schmorl node, a bone island or a band of contrast.  What a
profile cannot fake is the rhythm of the spine: discs follow each other every 15-50 mm, and
the distance from one disc to the next changes slowly along the spine (a level is rarely more
than a third taller than its neighbour).  :func:`choose_discs` picks, by dynamic programming,
the set of peaks with the most evidence whose spacing obeys that rhythm, so a thin disc that a
threshold would miss is still found where the rhythm expects one, and a missed disc -- which
would leave one segment spanning two levels -- costs the chain its rhythm.

:func:`disc_planes` then fits each disc's mid-surface, tilt included, from where the HU is
lowest between two bodies, so that a wedged disc is cleared as a whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .axis import Centreline
from .vertebrae import BodyRun, Straightened

#: The floor an endplate's brightness is measured from: this percentile of the profile over
#: this window (about a level).
FLOOR_PERCENTILE = 20
FLOOR_WINDOW_MM = 25.0
#: The evidence is expressed in units of this percentile of the bright excess along the spine
#: (about the height of a typical endplate).
SCALE_PERCENTILE = 90
#: How far (mm) either side of a disc centre its endplates may be: half a tall lumbar disc
#: with its endplate, less than half the shortest body.
REACH_MM = 6.0
#: With a known rhythm, the reach is this fraction of the level's length, within a range.
REACH_OF_PERIOD = 0.27
REACH_RANGE_MM = (4.0, 11.0)
#: No disc centre is taken within this distance (mm) of either end of the seen column: both its
#: endplates must be in view.
EDGE_MM = 4.0
#: Weight of a disc's own darkness between its two endplates.
DARK_WEIGHT = 0.5
#: Smallest noise scale (HU) the evidence is divided by (a very smooth scan).
MIN_SCALE_HU = 6.0
#: No disc is placed where the evidence is below this, whatever the rhythm says.
MIN_EVIDENCE = 0.25
#: Evidence a disc must bring to be worth choosing (in units of the profile's noise).
DISC_COST = 0.3
#: Distance (mm along the canal) from one disc to the next: a cervical level is about 15 mm
#: with its disc, a lumbar one up to 45 mm.
GAP_MM = (11.0, 50.0)
#: Length (mm) of the stretch of spine whose rhythm is measured at once (three to five levels).
PERIOD_WINDOW_MM = 110.0
#: Without a rhythm, a level is at least this fraction of its body's width long (adult
#: anatomy tables give 0.6-0.8 with the disc; the real T12 of the 20-slice TotalSegmentator
#: test series measures 0.44, 22 mm on a 50 mm wide body).
MIN_LEVEL_TO_WIDTH = 0.42
#: A step of the chain must lie within this fraction of the local rhythm.
PERIOD_TOLERANCE = (0.65, 1.5)
#: How much longer or shorter one level may be than the next.
GAP_RATIO = (0.7, 1.43)
#: Penalties per unit of |log(ratio)|: against the size prior, and between neighbours.
SIZE_COST = 0.5
RHYTHM_COST = 0.6
#: Cost of starting a new chain of discs after an earlier one (a stretch without a rhythm).
RESTART_COST = 0.8


@dataclasses.dataclass
class Disc:
    """A disc found along the centreline: centre plane and half thickness (planes), and its
    evidence."""

    centre: float
    half: float
    evidence: float


def disc_evidence(profile: np.ndarray, spacing: float, period: np.ndarray | None = None
                  ) -> np.ndarray:
    """Per plane, how much it looks like the centre of a disc, in units of the scan's own
    endplate brightness.

    Every disc on CT lies between two endplates, each brighter than the marrow of its body,
    whatever the bone density and slice thickness.  What differs is the shape: with thin
    slices through a lumbar spine, two sharp endplate lines with the darker disc between;
    with 2-3 mm slices through a thin thoracic disc, one broad bright band (endplates and
    the dense bone under them blurred together) with at most a notch in its middle.  Both
    are *bright on both sides of the disc's centre, close to it*:

    * the bright excess of each plane is its HU above the floor of the stretch around it
      (a low percentile over about a level: the marrow, or the disc where it is darker);
    * a plane is a disc centre by the weaker of the brightest excess within reach above it
      and below it, plus, where the disc is darker than its endplates, that darkness.

    The reach is :data:`REACH_MM`, or, where the spine's rhythm is known (``period``, planes
    from one disc to the next), :data:`REACH_OF_PERIOD` of it: a disc with its endplates takes
    at most about a third of a level (lumbar 10-12 mm of 35, thoracic 4-6 of 24), a body the
    rest, so the middle of a body -- however dark its marrow against its own endplates -- has
    no bright plane within reach on either side.  ``profile`` may hold ``nan`` (unseen
    planes), which get no evidence.
    """
    n = len(profile)
    seen = np.isfinite(profile)
    out = np.zeros(n)
    if seen.sum() < 5:
        return out
    idx = np.arange(n)
    f = np.interp(idx, idx[seen], profile[seen])
    f = ndimage.gaussian_filter1d(f, 0.7 / spacing, mode="nearest")
    window = max(5, int(round(FLOOR_WINDOW_MM / spacing)) | 1)
    floor = ndimage.percentile_filter(f, FLOOR_PERCENTILE, size=window, mode="nearest")
    excess = np.clip(f - floor, 0.0, None)
    reach = np.full(n, REACH_MM / spacing)
    if period is not None:
        known = np.isfinite(period)
        reach[known] = np.clip(REACH_OF_PERIOD * period[known], REACH_RANGE_MM[0] / spacing,
                               REACH_RANGE_MM[1] / spacing)
    g_min = max(1, int(round(1.0 / spacing)))
    g_max = int(np.ceil(reach.max()))
    pad = np.r_[np.zeros(g_max), excess, np.zeros(g_max)]
    # Brightest excess within g_min..reach above and below each plane.
    above = np.zeros(n)
    below = np.zeros(n)
    for g in range(g_min, g_max + 1):
        ok = g <= reach
        np.maximum(above, np.where(ok, pad[g_max + g: g_max + g + n], 0.0), out=above)
        np.maximum(below, np.where(ok, pad[g_max - g: g_max - g + n], 0.0), out=below)
    sides = np.minimum(above, below)
    notch = np.clip(sides + floor - f, 0.0, None)  # darker than its endplates
    raw = sides + DARK_WEIGHT * np.minimum(notch, sides)
    first, last = np.flatnonzero(seen)[[0, -1]]
    edge = max(g_min, int(round(EDGE_MM / spacing)))
    raw[(idx < first + edge) | (idx > last - edge)] = 0.0
    scale = max(float(np.percentile(excess[seen], SCALE_PERCENTILE)), MIN_SCALE_HU)
    out[seen] = raw[seen] / scale
    return out


def local_period(evidence: np.ndarray, spacing: float, *, lo: int = 0, hi: int | None = None
                 ) -> np.ndarray:
    """The spine's local rhythm (planes from one disc to the next) along the centreline.

    For windows of :data:`PERIOD_WINDOW_MM` every 10 mm, the lag (within :data:`GAP_MM`) at
    which the evidence best correlates with itself; the windows' answers are smoothed with a
    running median and interpolated.  Planes outside ``lo..hi`` are ignored.  Where no window
    has a clear rhythm the result is ``nan``.
    """
    n = len(evidence)
    hi = n - 1 if hi is None else hi
    e = evidence.astype(float)
    half = int(round(PERIOD_WINDOW_MM / 2 / spacing))
    lags = np.arange(int(round(GAP_MM[0] / spacing)), int(round(GAP_MM[1] / spacing)) + 1)
    centres, periods = [], []
    for c in range(lo, hi + 1, max(1, int(round(10.0 / spacing)))):
        a, b = max(lo, c - half), min(hi + 1, c + half)
        x = e[a:b] - e[a:b].mean()
        if len(x) < 2 * lags[0] or not np.any(x):
            continue
        denom = float((x * x).sum())
        # A rhythm needs a few repeats in the window to be told at all.
        score = np.array([
            (x[:-lag] * x[lag:]).sum() / denom if 2.5 * lag <= len(x) else -np.inf
            for lag in lags
        ])
        if not np.isfinite(score).any():
            continue
        # A lag counts only if it is a local maximum of the autocorrelation and clearly positive.
        k = int(np.argmax(score))
        if score[k] < 0.15 or k in (0, len(lags) - 1) and score[k] <= score[min(k + 1, len(lags) - 1)]:
            continue
        # Prefer the shortest lag that is nearly as good (2T also correlates).
        good = np.flatnonzero(score >= 0.8 * score[k])
        first = int(good[0])
        while first + 1 < len(score) and score[first + 1] > score[first]:
            first += 1
        centres.append(c)
        periods.append(float(lags[first]))
    out = np.full(n, np.nan)
    if not centres:
        return out
    periods = ndimage.median_filter(np.array(periods), 5, mode="nearest")
    idx = np.arange(n)
    out[lo: hi + 1] = np.interp(idx[lo: hi + 1], centres, periods)
    return out


def choose_discs(evidence: np.ndarray, spacing: float, width: np.ndarray | None = None, *,
                 lo: int = 0, hi: int | None = None) -> list[int]:
    """Planes of the discs: the rhythmic chain of evidence peaks with the largest total.

    Each step of the chain must fit the local rhythm (:func:`local_period`, within
    :data:`PERIOD_TOLERANCE`) and differ little from the step before (:data:`GAP_RATIO`).

    Parameters
    ----------
    evidence:
        From :func:`disc_evidence`.
    width:
        The body column's width per plane (voxels).  Where the stretch is too short for a
        rhythm, a step must still be at least :data:`MIN_LEVEL_TO_WIDTH` of it (no vertebral
        body is much flatter than that: a 15 mm "level" on a 48 mm wide lower thoracic body is
        a disc found inside a body).
    lo, hi:
        Only planes within ``lo..hi`` (inclusive) are considered (the stretch the column was
        seen over).
    """
    n = len(evidence)
    hi = n - 1 if hi is None else hi
    e = evidence
    if width is None:
        width = np.full(n, np.nan)
    peaks = np.array([
        i for i in range(max(1, lo), min(n - 1, hi + 1))
        if e[i] >= e[i - 1] and e[i] > e[i + 1] and e[i] > MIN_EVIDENCE
    ], dtype=int)
    m = len(peaks)
    if m == 0:
        return []
    gain = e[peaks] - DISC_COST
    period = local_period(e, spacing, lo=lo, hi=hi)
    g_lo, g_hi = (g / spacing for g in GAP_MM)
    # value[(j, i)]: best chain ending with discs i -> j (i = -1: j starts the chain).
    value: dict[tuple[int, int], float] = {}
    back: dict[tuple[int, int], tuple[int, int] | None] = {}
    ending: dict[int, list[tuple[int, int]]] = {}
    best_end = np.full(m, -np.inf)  # best chain ending at peak i (any link)
    for j in range(m):
        key = (j, -1)
        value[key], back[key] = gain[j], None
        # A chain may also restart here after an earlier one, across a stretch where discs
        # were not seen (a missed disc, a change of rhythm): at a cost, and with no rhythm
        # carried over.  The levels of that stretch are then checked by their lengths.
        def skipped(i: int) -> bool:  # too long for one level: at least one disc unseen
            typical = period[(peaks[i] + peaks[j]) // 2]
            limit = PERIOD_TOLERANCE[1] * typical if np.isfinite(typical) else g_hi
            return peaks[j] - peaks[i] > min(limit, g_hi)

        before = [i for i in range(j) if skipped(i)]
        if before:
            i = max(before, key=lambda q: best_end[q])
            if best_end[i] - RESTART_COST > 0:
                value[key] = gain[j] + best_end[i] - RESTART_COST
                back[key] = max(ending[i], key=value.get)
        ending.setdefault(j, []).append(key)
        for i in range(j - 1, -1, -1):
            gap = peaks[j] - peaks[i]
            if gap > g_hi:
                break
            if gap < g_lo:
                continue
            typical = period[(peaks[i] + peaks[j]) // 2]
            size_pen = 0.0
            w_mid = width[(peaks[i] + peaks[j]) // 2]
            if not np.isfinite(typical) and np.isfinite(w_mid) and gap < MIN_LEVEL_TO_WIDTH * w_mid:
                continue
            if np.isfinite(typical):
                if not PERIOD_TOLERANCE[0] * typical <= gap <= PERIOD_TOLERANCE[1] * typical:
                    continue
                size_pen = SIZE_COST * abs(np.log(gap / typical))
            best, arg = -np.inf, None
            for prev in ending.get(i, []):
                v = value[prev]
                if prev[1] >= 0:
                    ratio = gap / (peaks[i] - peaks[prev[1]])
                    if not GAP_RATIO[0] <= ratio <= GAP_RATIO[1]:
                        continue
                    v -= RHYTHM_COST * abs(np.log(ratio))
                if v > best:
                    best, arg = v, prev
            if arg is None:
                continue
            key = (j, i)
            value[key], back[key] = best + gain[j] - size_pen, arg
            ending[j].append(key)
        best_end[j] = max(value[k] for k in ending[j])
    key = max(value, key=value.get)
    if value[key] <= 0:
        return []
    chain = []
    while key is not None:
        chain.append(int(peaks[key[0]]))
        key = back[key]
    return _fill_long_levels(sorted(chain), peaks, e, period)


def _fill_long_levels(chain: list[int], peaks: np.ndarray, e: np.ndarray, period: np.ndarray
                      ) -> list[int]:
    """Discs inside stretches of the chain too long for one level (where a restart skipped
    them): the strongest peaks there, strongest first, each at least
    :data:`PERIOD_TOLERANCE`\\ [0] of the rhythm from the discs already placed."""
    if len(chain) < 2:
        return chain
    gaps = np.diff(chain)
    out = list(chain)
    for a, b in zip(chain[:-1], chain[1:]):
        typical = period[(a + b) // 2]
        if not np.isfinite(typical):
            typical = float(np.median(gaps))
        if b - a <= PERIOD_TOLERANCE[1] * typical:
            continue
        placed = [a, b]
        inside = [int(p) for p in peaks if a < p < b]
        for p in sorted(inside, key=lambda q: -e[q]):
            if all(abs(p - q) >= PERIOD_TOLERANCE[0] * typical for q in placed):
                placed.append(p)
        out.extend(placed[2:])
    return sorted(out)


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
    f = _smoothed(profile, spacing)
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


def _smoothed(profile: np.ndarray, spacing: float) -> np.ndarray:
    """The profile with unseen planes interpolated, lightly smoothed (as the evidence sees it)."""
    seen = np.isfinite(profile)
    idx = np.arange(len(profile))
    f = np.interp(idx, idx[seen], profile[seen]) if seen.any() else np.zeros(len(profile))
    return ndimage.gaussian_filter1d(f, 0.7 / spacing, mode="nearest")


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
    f = _smoothed(profile, spacing)
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
