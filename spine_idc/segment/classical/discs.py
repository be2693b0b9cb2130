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

How thick each disc is, which bodies lie between the discs, and each disc's tilted
mid-surface are in :mod:`.disc_extent`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


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
    f = smoothed_profile(profile, spacing)
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


def local_period(evidence: np.ndarray, spacing: float, *, lo: int = 0, hi: int | None = None,
                 width: np.ndarray | None = None) -> np.ndarray:
    """The spine's local rhythm (planes from one disc to the next) along the centreline.

    For windows of :data:`PERIOD_WINDOW_MM` every 10 mm, the lag (within :data:`GAP_MM`) at
    which the evidence best correlates with itself; the windows' answers are smoothed with a
    running median and interpolated.  Planes outside ``lo..hi`` are ignored.  Where no window
    has a clear rhythm the result is ``nan``.  With the body column's ``width`` (voxels per
    plane), a lag shorter than :data:`MIN_LEVEL_TO_WIDTH` of the window's median width is no
    level's rhythm: on 3 mm slices the endplates' and marrow's own wobble can correlate at the
    shortest lag (11 mm measured through the lumbar spine of VerSe's sub-verse004, whose
    levels are 24-32 mm), and a chain at that rhythm cuts every body in two.
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
        shortest = 0.0
        if width is not None:
            w = width[a:b]
            w = w[np.isfinite(w)]
            shortest = MIN_LEVEL_TO_WIDTH * float(np.median(w)) if w.size else 0.0
        # A rhythm needs a few repeats in the window to be told at all.
        score = np.array([
            (x[:-lag] * x[lag:]).sum() / denom if 2.5 * lag <= len(x) and lag >= shortest
            else -np.inf
            for lag in lags
        ])
        if not np.isfinite(score).any():
            continue
        # A lag counts only if it is a local maximum of the autocorrelation and clearly positive.
        k = int(np.argmax(score))
        k0 = int(np.flatnonzero(np.isfinite(score))[0])  # the shortest lag allowed
        if score[k] < 0.15 or k in (k0, len(lags) - 1) and score[k] <= score[min(k + 1, len(lags) - 1)]:
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
    period = local_period(e, spacing, lo=lo, hi=hi,
                          width=None if np.isnan(width).all() else width)
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


def smoothed_profile(profile: np.ndarray, spacing: float) -> np.ndarray:
    """The profile with unseen planes interpolated, lightly smoothed (as the evidence sees it)."""
    seen = np.isfinite(profile)
    idx = np.arange(len(profile))
    f = np.interp(idx, idx[seen], profile[seen]) if seen.any() else np.zeros(len(profile))
    return ndimage.gaussian_filter1d(f, 0.7 / spacing, mode="nearest")
