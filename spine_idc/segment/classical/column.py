"""The column of vertebral bodies, measured in planes perpendicular to the canal's centreline.

The spine is straightened along the canal (a curved planar reformat: one plane per millimetre of
arc length, ``u`` towards patient left, ``v`` posterior, the canal's centre at ``u = v = 0``).
In every plane the vertebral body -- or the disc between two bodies -- lies straight in front
of the canal, so the column's outline can be read from the intensities alone, without a bone
mask or any fixed threshold:

* the reformat is smoothed along the spine (about the height of a disc), which bridges the
  discs, so the column is one continuous bright bar;
* the bone threshold is halfway between soft tissue and the scan's own body HU (the median
  just in front of the canal), so faint osteoporotic bone (80-120 HU) and dense bone alike give
  an outline;
* in each plane the posterior wall is where the canal ends in front, the anterior wall where
  the bar ends along the midline, the width where it ends left and right at mid-depth.  The
  body is symmetric about the canal's midline; anything that widens it on one side only (a
  contrast-filled aorta against its left side, a rib head, an osteophyte) is not taken as body
  width;
* the outline is smoothed along the spine with running medians (robust to a plane that caught
  the aorta or a rib).

The result also carries each plane's mean HU within the inner 70 % of the outline: the profile
from which :mod:`.discs` finds the discs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .axis import Centreline, sample_planes
from .bone import SOFT_HU
#: Half-length (mm) of the along-spine smoothing that bridges discs.
BRIDGE_MM = 5.0
#: Extent of the reformat: half-width and the range in front of (negative) and behind the
#: canal centre, mm.
HALF_U_MM = 42.0
V_RANGE_MM = (-85.0, 40.0)
#: A body is never deeper than this times its width (lumbar about 0.7, thoracic 0.8-0.9).
MAX_DEPTH_TO_WIDTH = 1.15
#: Where the body's front is also looked for, either side of the midline (fractions of its
#: half-width), and where an elliptical front lies there as a fraction of the midline depth
#: from the back wall (flat back, half an ellipse in front: (1 + sqrt(1 - f^2)) / 2).  A real
#: body's front is flatter than an ellipse, so the estimate errs deep (it cuts less).  An aorta
#: right in front of the body is about as wide as the middle of it: only the outer samples
#: miss it.
SIDE_OFFSETS = ((0.45, 0.947), (0.7, 0.857))
#: The midline depth is cut only when it exceeds the sides' by more than this (mm), and by at
#: most this fraction (a faint side that stops early must not halve a body).
SIDE_SLACK_MM = 3.0
MAX_SIDE_CUT = 0.45
#: Nothing in a vertebral body's core is this bright but metal (sclerotic endplates reach about
#: 1000 HU); such voxels are left out of the disc profile.
METAL_MIN_HU = 1500.0
#: Inner part of the outline whose mean HU makes the disc profile.
CORE_FRACTION = 0.7
#: Across the body, a dip below the threshold shorter than this (mm) with bone beyond it is
#: faint marrow, not the body's side (osteoporotic or noisy scans).
LATERAL_GAP_MM = 3.0


@dataclasses.dataclass
class Column:
    """Per-plane outline of the body column along a centreline (all lengths in voxels).

    ``centre_u``/``centre_v`` are the body centre's offsets from the centreline (``v``
    negative: in front of the canal), ``half_width``/``half_depth`` its half-axes,
    ``canal_front`` the offset of the canal's anterior wall (the back of the body),
    ``canal_half_width`` the canal's half-width at its centre, ``found``
    whether the plane showed the column itself (elsewhere values are interpolated), ``profile``
    the mean HU within :data:`CORE_FRACTION` of the outline (``nan`` where unseen), ``body_hu``
    the scan's body HU and ``threshold`` the bone threshold used.
    """

    centre_u: np.ndarray
    centre_v: np.ndarray
    half_width: np.ndarray
    half_depth: np.ndarray
    canal_front: np.ndarray
    canal_half_width: np.ndarray
    found: np.ndarray
    profile: np.ndarray
    body_hu: float
    threshold: float

    def __len__(self) -> int:
        return len(self.found)


def reformat(hu: np.ndarray, line: Centreline, spacing: float, inside: np.ndarray | None = None):
    """The straightened spine: ``[plane, u, v]`` HU, and the (u, v) offsets of its pixels.

    Pixels outside the CT's field of view (``inside`` false, or beyond the array) are ``nan``,
    so that later steps can tell "unseen" from "dark".
    """
    half_u = HALF_U_MM / spacing
    v_lo, v_hi = (v / spacing for v in V_RANGE_MM)
    planes = sample_planes(hu, line, half_u, (v_lo, v_hi), cval=np.nan)
    if inside is not None:
        seen = sample_planes(inside.astype(np.float32), line, half_u, (v_lo, v_hi), order=0)
        planes[seen < 0.5] = np.nan
    uu = np.arange(planes.shape[1]) - half_u
    vv = np.arange(planes.shape[2]) + v_lo
    return planes, uu, vv


def measure_column(planes: np.ndarray, uu: np.ndarray, vv: np.ndarray, spacing: float) -> Column:
    """Outline the body column in a reformat from :func:`reformat`."""
    n, nu, nv = planes.shape
    mm = lambda x: x / spacing  # noqa: E731  mm -> voxels
    seen = np.isfinite(planes)
    clipped = np.where(seen, np.clip(planes, -200.0, 1200.0), SOFT_HU).astype(np.float32)
    u0 = int(np.argmin(np.abs(uu)))
    v0 = int(np.argmin(np.abs(vv)))
    # The scan's body HU: just in front of the canal, near the midline, over the whole spine.
    strip = clipped[:, max(0, u0 - int(mm(5))): u0 + int(mm(5)) + 1,
                    max(0, v0 - int(mm(30))): max(1, v0 - int(mm(10)))]
    strip_seen = seen[:, max(0, u0 - int(mm(5))): u0 + int(mm(5)) + 1,
                      max(0, v0 - int(mm(30))): max(1, v0 - int(mm(10)))]
    body_hu = float(np.median(strip[strip_seen])) if strip_seen.any() else 200.0
    threshold = SOFT_HU + 0.5 * max(body_hu - SOFT_HU, 50.0)
    smooth = ndimage.gaussian_filter(clipped, (mm(BRIDGE_MM), mm(1.0), mm(1.0)))
    midline = smooth[:, max(0, u0 - int(mm(3))): u0 + int(mm(3)) + 1, :].mean(axis=1)
    front_wall = np.full(n, np.nan)
    anterior = np.full(n, np.nan)
    half_w = np.full(n, np.nan)
    canal_hw = np.full(n, np.nan)
    max_gap = max(1, int(round(mm(2.5))))
    lateral_gap = max(1, int(round(mm(LATERAL_GAP_MM))))
    for s in range(n):
        prof = midline[s]
        j = v0
        while j > 0 and prof[j] < threshold:
            j -= 1
        if (v0 - j) > mm(22) or j <= 0:
            continue  # no bone within reach in front of the canal
        back = j
        k = j
        while k > 0:
            if prof[k] >= threshold:
                k -= 1
                continue
            # A dip shorter than ``max_gap`` inside the body is noise, not its front.
            if (prof[max(0, k - max_gap): k] >= threshold).any():
                k -= 1
                continue
            break
        front = k + 1
        if back - front < mm(6):
            continue
        # The width across the body's middle, and a centimetre or so in front of the canal: a
        # front edge fused with something in front (a contrast-filled aorta) puts the middle
        # too far forward, where the body narrows; the median of the three is the body's.
        mids = {int(round(front + 0.45 * (back - front)))}
        mids |= {max(front + int(mm(2)), back - int(mm(d))) for d in (10.0, 16.0)}
        widths = [w for w in (_half_width(smooth[s], m, u0, threshold, mm, lateral_gap)
                              for m in sorted(mids)) if w is not None]
        if not widths:
            continue
        half_w[s] = float(np.median(widths))
        # Off the midline on each side: a body is symmetric, something fused to its front
        # (a contrast-filled aorta, its calcified wall, on the left) is not.  The front seen
        # on the shallower side, corrected for the body's rounded front, caps the midline's.
        sides = []
        for frac, ratio in SIDE_OFFSETS:
            off = max(1, int(round(frac * half_w[s])))
            sides += [(back - _front_along(
                smooth[s, max(0, u0 + d * off - int(mm(1))): u0 + d * off + int(mm(1)) + 1, :]
                .mean(axis=0), back, threshold, max_gap)) / ratio
                for d in (-1, 1) if 0 <= u0 + d * off < nu]
        if sides:
            side_depth = min(sides)
            depth_mid = back - front
            if side_depth < depth_mid - mm(SIDE_SLACK_MM):
                front = int(round(back - max(side_depth, (1.0 - MAX_SIDE_CUT) * depth_mid)))
        # The canal's half-width: dark on both sides of its centre, to the nearer wall.
        row = smooth[s, :, max(0, v0 - int(mm(1))): v0 + int(mm(1)) + 1].mean(axis=1)
        left = u0
        while left < nu - 1 and row[left + 1] < threshold:
            left += 1
        right = u0
        while right > 0 and row[right - 1] < threshold:
            right -= 1
        canal_hw[s] = min(left - u0, u0 - right)
        front_wall[s] = vv[back]
        anterior[s] = vv[front]
    found = np.isfinite(anterior)
    idx = np.arange(n)

    def steady(x: np.ndarray, length_mm: float) -> np.ndarray:
        if found.sum() < 2:
            return np.full(n, np.nan)
        filled = np.interp(idx, idx[found], x[found])
        size = max(3, int(round(mm(length_mm))) | 1)
        return ndimage.median_filter(filled, size, mode="nearest")

    back = steady(front_wall, 21.0)
    front = steady(anterior, 21.0)
    half_w = steady(half_w, 31.0)
    canal_hw = np.clip(steady(canal_hw, 31.0), mm(4.0), mm(14.0))
    depth = back - front
    # Bodies are wider than deep: a front edge further than that is something in front
    # (a contrast-filled aorta, the oesophagus with contrast) fused to the outline.
    too_deep = depth > 2 * MAX_DEPTH_TO_WIDTH * half_w
    front = np.where(too_deep, back - 2 * MAX_DEPTH_TO_WIDTH * half_w, front)
    centre_v = 0.5 * (front + back)
    half_d = 0.5 * (back - front)
    centre_u = np.zeros(n)
    profile = _core_profile(planes, uu, vv, centre_u, centre_v, half_w, half_d)
    return Column(
        centre_u=centre_u, centre_v=centre_v, half_width=half_w, half_depth=half_d,
        canal_front=back, canal_half_width=canal_hw, found=found, profile=profile, body_hu=body_hu, threshold=threshold,
    )


def _front_along(prof: np.ndarray, back: int, threshold: float, max_gap: int) -> int:
    """The body's front along one antero-posterior profile, walking forward from ``back``
    through bone (dips shorter than ``max_gap`` included)."""
    k = back
    while k > 0:
        if prof[k] >= threshold or (prof[max(0, k - max_gap): k] >= threshold).any():
            k -= 1
            continue
        break
    return k + 1


def _half_width(plane: np.ndarray, mid: int, u0: int, threshold: float, mm, gap: int
                ) -> float | None:
    """Half-width of the body along the row at depth ``mid`` of one plane (``None`` when
    under 3 mm): from the midline out to where it falls below ``threshold`` on each side,
    the nearer side where they differ by more than 30 % (something lateral fused to the
    other).  Faint, noisy marrow dips below the threshold here and there inside the body: a
    dip shorter than ``gap`` with bone beyond it is still the body."""
    nu = plane.shape[0]
    row = plane[:, max(0, mid - int(mm(2))): mid + int(mm(2)) + 1].mean(axis=1)
    left = u0
    while left < nu - 1 and (row[left + 1] >= threshold
                             or (row[left + 2: left + 2 + gap] >= threshold).any()):
        left += 1
    right = u0
    while right > 0 and (row[right - 1] >= threshold
                         or (row[max(0, right - 1 - gap): right - 1] >= threshold).any()):
        right -= 1
    a, b = left - u0, u0 - right
    if min(a, b) < mm(3):
        return None
    return float(min(a, b) if max(a, b) > 1.3 * min(a, b) else 0.5 * (a + b))


def _core_profile(planes, uu, vv, cu, cv, hw, hd) -> np.ndarray:
    """Mean HU within :data:`CORE_FRACTION` of each plane's outline (nan where unseen)."""
    n = planes.shape[0]
    out = np.full(n, np.nan)
    U, V = np.meshgrid(uu, vv, indexing="ij")
    for s in range(n):
        if not (np.isfinite(hw[s]) and np.isfinite(hd[s])):
            continue
        r = np.hypot((U - cu[s]) / max(hw[s], 2.0), (V - cv[s]) / max(hd[s], 2.0))
        vals = planes[s][r < CORE_FRACTION]
        vals = vals[np.isfinite(vals)]
        if vals.size >= 0.5 * max(1, (r < CORE_FRACTION).sum()):
            # Metal (a pedicle screw's tip in the body) is no part of the body's HU.
            bone = vals[vals < METAL_MIN_HU]
            if bone.size >= 0.5 * vals.size:
                vals = bone
            out[s] = float(np.clip(vals, -200.0, 1200.0).mean())
    return out
