"""Finding the spinal canal: a likelihood per axial position, linked from slice to slice.

The canal is the one structure every vertebra shares and the easiest to tell from anything
else in an axial CT slice: a region of CSF, cord or epidural fat (about -150..70 HU), 10-25 mm
across, with the vertebral body straight in front of it and bone on both sides (pedicles) or
behind it (laminae).  Earlier this module looked for canals *enclosed* by bone; real scans
often break that ring (3 mm slices through the lumbar facets, osteoporotic arches, a field of
view that cuts the laminae), so now nothing needs to be closed:

1. :func:`canal_likelihood` scores every voxel of a coarse LPS grid as a possible canal centre,
   from the mean HU of small boxes around it -- dark at the centre, a bony mass in front,
   bone left *and* right, bone behind -- at three canal sizes (cervical to lumbar).  Outside
   the field of view counts as neither evidence for nor against, so a crop through the canal
   still scores.  A soft prior keeps the canal near the trunk's lateral centre (the medullary
   cavity of an arm bone is dark, ringed by bone and has muscle in front).
2. :func:`track` links the best positions slice by slice (Viterbi; the canal moves at most
   about one slice thickness sideways per slice, since the spine is never flatter than ~50
   degrees to the body axis where it is followed), with free start and end.
3. The chain is cut where its score stays low over a stretch (below the sacrum, above the
   skull base, where a path wandered into the pelvis) and the best stretch kept.
4. If the column in front of that canal holds no vertebral bodies, the backend looks once
   more (:func:`find_canal` with ``avoid``): away from the first canal, and with walls that
   need only be fainter (:data:`FAINT_WALL_HU`).  On 3 mm slices through an osteoporotic
   spine the walls are barely brighter than muscle, and a pocket of fat between muscles
   passes for a canal more easily than the canal itself.  The fainter walls are not used
   from the start: on ordinary scans they let such pockets compete everywhere.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: HU range of what fills a canal (epidural fat .. cord and CSF, partial volume with the walls).
CANAL_HU = (-150.0, 70.0)
#: Half-widths (mm) of the canals the likelihood is evaluated for.
CANAL_RADII_MM = (5.0, 7.0, 9.0)
#: Wall evidence: how much brighter than the canal (HU) a wall must be to count at all, and
#: the excess at which it counts fully.
WALL_MIN_HU, WALL_FULL_HU = 80.0, 150.0
#: The same for a second look, when the first canal found had no vertebral bodies in front
#: of it: osteoporotic bone on thick slices (trabecular 60-110 HU, a cortex blurred to
#: 100-150 HU) is barely brighter than muscle, and a pocket of fat between muscles then
#: passes for a canal more easily than the canal itself.
FAINT_WALL_HU = (40.0, 100.0)
#: On the second look, nothing within this distance (mm, in-plane) of the first canal found.
AVOID_MM = 15.0
#: Beyond this distance (mm) from the trunk's lateral centre the likelihood is lowered.
MIDLINE_FREE_MM = 50.0
#: Score a position needs, per slice, to be worth extending the chain (Viterbi's bias).
BIAS = 0.3
#: A stretch of the chain whose smoothed score stays below this ...
WEAK_SCORE = 0.25
#: ... over at least this length (mm) cuts the chain.
WEAK_RUN_MM = 10.0


@dataclasses.dataclass
class CanalTrack:
    """The canal's centre in axial planes of a grid, cranio-caudally sorted by plane ``k``.

    ``x``, ``y``, ``k`` are voxel indices of the grid the track was made on (LPS-aligned, so
    ``k`` runs towards the head); ``score`` is the likelihood at each point.
    """

    k: np.ndarray
    x: np.ndarray
    y: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.k)

    def points(self) -> np.ndarray:
        """(n, 3) voxel coordinates, caudal to cranial."""
        return np.column_stack([self.x, self.y, self.k]).astype(float)


def _box_mean(a: np.ndarray, half: int) -> np.ndarray:
    """Mean over an in-plane square of half-size ``half`` voxels (no mixing across planes)."""
    return ndimage.uniform_filter(a, size=(2 * half + 1, 2 * half + 1, 1), mode="nearest")


def _shifted(a: np.ndarray, dx: int, dy: int, fill: float) -> np.ndarray:
    """``out[x, y] = a[x + dx, y + dy]`` (what lies ``(dx, dy)`` voxels away), ``fill`` outside."""
    out = np.full_like(a, fill)
    nx, ny = a.shape[:2]
    src_x = slice(max(0, dx), nx + min(0, dx))
    dst_x = slice(max(0, -dx), nx + min(0, -dx))
    src_y = slice(max(0, dy), ny + min(0, dy))
    dst_y = slice(max(0, -dy), ny + min(0, -dy))
    out[dst_x, dst_y] = a[src_x, src_y]
    return out


def canal_likelihood(hu: np.ndarray, spacing: float, inside: np.ndarray | None = None,
                     wall_hu: tuple[float, float] = (WALL_MIN_HU, WALL_FULL_HU)) -> np.ndarray:
    """Per voxel, how much the voxel looks like the centre of a spinal canal (about -1..2.3).

    Parameters
    ----------
    hu:
        HU on an LPS-aligned isotropic grid (axis 0 towards patient left, 1 posterior, 2
        cranial) of ``spacing`` mm.
    inside:
        Voxels inside the CT's field of view; walls that fall outside it are neutral.
    """
    h = np.clip(hu, -200.0, 1000.0).astype(np.float32)
    known = (hu > -1020.0) if inside is None else inside
    px = lambda mm: max(1, int(round(mm / spacing)))  # noqa: E731
    wall = _box_mean(h, px(2.5))
    wall_known = _box_mean(known.astype(np.float32), px(2.5)) > 0.5
    # The vertebral body: a box 20 mm wide and 14 mm deep in front of the canal's wall.
    body = ndimage.uniform_filter(h, size=(2 * px(10.0) + 1, 2 * px(7.0) + 1, 1), mode="nearest")
    body_known = ndimage.uniform_filter(
        known.astype(np.float32), size=(2 * px(10.0) + 1, 2 * px(7.0) + 1, 1), mode="nearest"
    ) > 0.5
    best = np.full(hu.shape, -1.0, np.float32)
    for r in CANAL_RADII_MM:
        centre = _box_mean(h, px(0.55 * r))
        d = px(r + 2.5)

        def evidence(src, src_known, dx, dy):
            v = _shifted(src, dx, dy, 0.0)
            k = _shifted(src_known.astype(np.float32), dx, dy, 0.0) > 0.5
            e = np.clip((v - centre - wall_hu[0]) / wall_hu[1], -0.5, 1.0)
            return np.where(k, e, 0.3)  # outside the view: neither for nor against

        front = evidence(body, body_known, 0, -(px(r + 1.0) + px(7.0)))
        lateral = np.minimum(evidence(wall, wall_known, d, 0), evidence(wall, wall_known, -d, 0))
        back = evidence(wall, wall_known, 0, d)
        s = front + 0.8 * lateral + 0.5 * back
        s = np.where((centre > CANAL_HU[0]) & (centre < CANAL_HU[1]), s, -1.0)
        np.maximum(best, s, out=best)
    # Soft prior: the spine lies within a few centimetres of the trunk's lateral centre.
    trunk = hu > -300.0
    count = trunk.sum(axis=(0, 1))
    xs = np.arange(hu.shape[0], dtype=np.float32)
    centre_x = (trunk.sum(axis=1) * xs[:, None]).sum(axis=0) / np.maximum(count, 1)
    off = np.abs(xs[:, None] - centre_x[None, :]) * spacing  # (x, k)
    best -= np.clip((off - MIDLINE_FREE_MM) / 40.0, 0.0, 2.0)[:, None, :]
    return best


def track(score: np.ndarray, spacing: float, *, max_slope: float = 1.2,
          ap_cost_per_mm: float = 0.05, lateral_cost_per_mm: float = 0.15) -> CanalTrack:
    """The best chain of canal positions through the planes of ``score`` (Viterbi).

    A chain gains ``score - BIAS`` per plane and pays for moves within the plane: little for
    anteroposterior ones (the lordosis, the sacrum's backward curve), more for lateral ones
    (a scoliotic canal drifts sideways slowly; a chain that slides sideways is leaving the
    spine, into a sacral foramen or a rib's gap).  It may start and end in any plane.  The result is then cut at weak stretches
    (:data:`WEAK_SCORE` over :data:`WEAK_RUN_MM`) and the best-scoring stretch returned.
    """
    nx, ny, nk = score.shape
    reach = max(1, int(np.ceil(max_slope)))
    offsets = [(dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)
               if dx * dx + dy * dy <= reach * reach]
    value = np.empty((nx, ny), np.float32)
    back = np.empty((nx, ny, nk), np.int8)
    best_v, best_at = -np.inf, (0, 0, 0)
    prev = None
    for k in range(nk):
        gain = score[:, :, k] - BIAS
        if prev is None:
            value = gain.copy()
            back[:, :, k] = -1
        else:
            carry = np.zeros((nx, ny), np.float32)  # 0 = start a new chain here
            arg = np.full((nx, ny), -1, np.int8)
            for i, (dx, dy) in enumerate(offsets):
                cost = spacing * (lateral_cost_per_mm * abs(dx) + ap_cost_per_mm * abs(dy))
                cand = _shifted(prev, dx, dy, -np.inf) - cost
                better = cand > carry
                carry[better] = cand[better]
                arg[better] = i
            value = gain + carry
            back[:, :, k] = arg
        flat = int(np.argmax(value))
        if value.flat[flat] > best_v:
            best_v = float(value.flat[flat])
            best_at = (*np.unravel_index(flat, (nx, ny)), k)
        prev = value
    x, y, k = (int(v) for v in best_at)
    chain = []
    while k >= 0:
        chain.append((x, y, k))
        a = int(back[x, y, k])
        if a < 0:
            break
        dx, dy = offsets[a]
        x, y, k = x + dx, y + dy, k - 1
    pts = np.array(chain[::-1])
    scores = score[pts[:, 0], pts[:, 1], pts[:, 2]]
    keep = _best_stretch(scores, spacing)
    pts, scores = pts[keep], scores[keep]
    return CanalTrack(
        k=pts[:, 2].astype(float), x=pts[:, 0].astype(float), y=pts[:, 1].astype(float),
        score=scores.astype(float),
    )


def _best_stretch(scores: np.ndarray, spacing: float) -> slice:
    """The stretch of a chain between weak runs with the largest total score."""
    n = len(scores)
    if n == 0:
        return slice(0, 0)
    w = max(1, int(round(WEAK_RUN_MM / spacing)))
    smooth = ndimage.uniform_filter1d(scores.astype(float), w, mode="nearest")
    weak = smooth < WEAK_SCORE
    # Runs of weak planes at least ``w`` long separate stretches.
    cuts = np.zeros(n, bool)
    i = 0
    while i < n:
        if weak[i]:
            j = i
            while j + 1 < n and weak[j + 1]:
                j += 1
            if j - i + 1 >= w:
                cuts[i: j + 1] = True
            i = j + 1
        else:
            i += 1
    best, best_sum, i = slice(0, 0), -np.inf, 0
    while i < n:
        if cuts[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and not cuts[j + 1]:
            j += 1
        total = float(scores[i: j + 1].sum())
        if total > best_sum:
            best, best_sum = slice(i, j + 1), total
        i = j + 1
    return best


def find_canal(hu: np.ndarray, spacing: float, inside: np.ndarray | None = None, *,
               avoid: CanalTrack | None = None) -> CanalTrack:
    """:func:`canal_likelihood` then :func:`track`, on a grid of ``spacing`` mm.

    ``avoid``: a canal found before on the same grid that had no spine in front of it; the
    second look uses the fainter walls of :data:`FAINT_WALL_HU` and keeps :data:`AVOID_MM`
    away from it.
    """
    if avoid is None:
        return track(canal_likelihood(hu, spacing, inside), spacing)
    score = canal_likelihood(hu, spacing, inside, wall_hu=FAINT_WALL_HU)
    r = AVOID_MM / spacing
    xs, ys = np.arange(hu.shape[0])[:, None], np.arange(hu.shape[1])[None, :]
    for x, y, k in zip(avoid.x, avoid.y, avoid.k):
        score[:, :, int(k)][(xs - x) ** 2 + (ys - y) ** 2 <= r * r] = -1.0
    return track(score, spacing)
