"""The spine's axis: the spinal canal as a tracked landmark, and a smooth centreline with frames.

The canal is the most specific thing about a spine in an axial CT slice: a CSF/fat-density
region (about -150..60 HU) of 0.5-7 cm^2, fully enclosed by bone in every slice through a
vertebral arch, with the vertebral body directly in front of it.  Candidates are found in each
axial plane of the working grid (LPS-aligned, so axial is always axis 2) and linked across
slices by dynamic programming, which bridges discs and facet levels where the arch is open and
rejects isolated look-alikes (a calcified aortic ring, gaps between ribs and transverse
processes).

The centreline is then resampled by arc length with a frame per point: ``t`` along the spine
(cranial), ``u`` patient left, ``v`` posterior, so that planes perpendicular to the spine can
be sampled even where it curves (lordosis, kyphosis, the sacrum's slope).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from .bone import plane_structure

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CanalTrack:
    """Canal candidates chosen in axial planes, cranio-caudally sorted by plane index ``k``.

    Coordinates are working-grid voxel indices; ``area`` is in voxels; ``ap_radius`` is half
    the canal's anteroposterior extent in voxels.
    """

    k: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    ap_radius: np.ndarray
    front: np.ndarray  # y of the canal's anterior wall (the back of the vertebral body)

    def __len__(self) -> int:
        return len(self.k)


def canal_candidates(
    hu: np.ndarray,
    spacing: float,
    *,
    dense_hu: tuple[float, ...] = (150.0, 220.0),
    closing_mm: float = 2.0,
    max_canal_hu: float = 60.0,
    min_area_mm2: float = 50.0,
    max_area_mm2: float = 800.0,
) -> list[np.ndarray]:
    """Per axial plane, the holes of the dense-bone mask that look like a spinal canal.

    The arch is thin and, with thick slices or soft kernels, often fainter than 200 HU or
    broken by partial volume, so holes are looked for at several thresholds, each after a
    small in-plane closing that bridges gaps of a few millimetres; candidates found at more
    than one threshold are merged.

    Returns
    -------
    list of arrays
        For every plane ``k`` an ``(n, 6)`` array of candidates: ``x, y, area, ap_radius,
        score, front`` (the anterior wall's y), in voxels.
    """
    out = [np.zeros((0, 6)) for _ in range(hu.shape[2])]
    for t in dense_hu:
        found = _canal_holes(
            hu, spacing, t, closing_mm, max_canal_hu, min_area_mm2, max_area_mm2
        )
        for k, rows in enumerate(found):
            if not len(rows):
                continue
            if len(out[k]):
                # Keep one candidate per place: the same canal seen at two thresholds.
                d = np.hypot(
                    out[k][:, None, 0] - rows[None, :, 0], out[k][:, None, 1] - rows[None, :, 1]
                )
                rows = rows[d.min(axis=0) * spacing > 5.0]
            out[k] = np.vstack([out[k], rows])
    return out


def _canal_holes(
    hu, spacing, dense_hu, closing_mm, max_canal_hu, min_area_mm2, max_area_mm2
) -> list[np.ndarray]:
    dense = hu > dense_hu
    if closing_mm > 0:
        r = max(1, int(round(closing_mm / spacing)))
        yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
        disk = (xx**2 + yy**2 <= r * r)[:, :, None]
        closed = ndimage.binary_closing(dense, structure=disk, border_value=0)
    else:
        closed = dense
    lab, n = ndimage.label(~closed, structure=plane_structure(2))
    nz = hu.shape[2]
    out = [np.zeros((0, 6)) for _ in range(nz)]
    if n == 0:
        return out
    faces = np.concatenate(
        [lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()]
    )
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(float)
    px = 1.0 / spacing**2
    inner = np.ones(n + 1, bool)
    inner[np.unique(faces)] = False
    inner[0] = False
    sums = np.bincount(lab.ravel(), weights=hu.ravel(), minlength=n + 1)
    mean_hu = sums / np.maximum(area, 1)
    ok = inner & (area >= min_area_mm2 * px) & (area <= max_area_mm2 * px)
    ok &= (mean_hu >= -150.0) & (mean_hu <= max_canal_hu)
    if not ok.any():
        return out
    # Marrow: enclosed regions brighter than soft tissue.  A vertebral body in front of the
    # canal is cortex or marrow; the medullary cavity of a long bone (humerus, femur), which
    # is a fat-density hole in a bony ring too, has only a thin cortex and muscle in front.
    marrow_ok = inner & (mean_hu > 60.0) & (area >= 30.0 * px)
    bone_like = dense | marrow_ok[lab]
    ids = np.flatnonzero(ok)
    objs = ndimage.find_objects(lab)
    for i in ids:
        sl = objs[i - 1]
        wx = (sl[0].stop - sl[0].start) * spacing
        wy = (sl[1].stop - sl[1].start) * spacing
        if not (6.0 <= wx <= 40.0 and 5.0 <= wy <= 35.0):
            continue
        # A canal is about as wide as deep: long thin gaps (between a rib and a process) are not.
        if not (0.4 <= wx / wy <= 3.0):
            continue
        fill = area[i] / ((sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start))
        if fill < 0.45:
            continue
        k = sl[2].start
        sub = lab[sl] == i
        cx = float(np.nonzero(sub)[0].mean()) + sl[0].start
        cy = float(np.nonzero(sub)[1].mean()) + sl[1].start
        # The vertebral body must lie directly in front of the canal.
        x0 = int(round(cx))
        half = max(2, int(round(5.0 / spacing)))
        ya = sl[1].start
        y_lo = max(0, ya - int(round(20.0 / spacing)))
        box = bone_like[max(0, x0 - half): x0 + half + 1, y_lo: max(y_lo, ya - 1), k]
        if box.size == 0:
            continue
        front = float(box.mean())
        if front < 0.5:
            continue
        dense_front = float(dense[max(0, x0 - half): x0 + half + 1, y_lo: ya, k].mean())
        ap = (sl[1].stop - sl[1].start) / 2.0
        score = 1.0 + 0.5 * min(dense_front / 0.2, 1.0)
        row = np.array([[cx, cy, area[i], ap, score, float(ya)]])
        out[k] = np.vstack([out[k], row])
    return out


def track_canal(
    cands: list[np.ndarray],
    spacing: float,
    *,
    max_gap_mm: float = 40.0,
    gap_cost_per_mm: float = 0.03,
    jump_cost_per_mm: float = 0.08,
) -> CanalTrack:
    """Link canal candidates across axial planes into the best-scoring chain.

    Dynamic programming over planes: a chain gains each candidate's score and pays for skipped
    planes (discs, facet levels) and for in-plane jumps; a jump larger than the canal can move
    in the skipped distance (the spine is never flatter than about 45 degrees to the body axis
    where the canal is tracked) is not allowed.
    """
    flat = [(k, j) for k, c in enumerate(cands) for j in range(len(c))]
    if not flat:
        return CanalTrack(*(np.zeros(0) for _ in range(6)))
    ks = np.array([f[0] for f in flat])
    data = np.vstack([cands[k][j] for k, j in flat])
    n = len(flat)
    value = np.zeros(n)
    prev = np.full(n, -1)
    max_gap = max(1, int(round(max_gap_mm / spacing)))
    start = 0
    for i in range(n):
        k = ks[i]
        while ks[start] < k - max_gap:
            start += 1
        best, arg = 0.0, -1
        j = np.arange(start, i)
        j = j[ks[j] < k]
        if j.size:
            dz = (k - ks[j]) * spacing
            dxy = np.hypot(data[j, 0] - data[i, 0], data[j, 1] - data[i, 1]) * spacing
            allowed = dxy <= 4.0 + 0.8 * dz
            gain = value[j] - gap_cost_per_mm * (dz - spacing) - jump_cost_per_mm * dxy
            gain[~allowed] = -np.inf
            m = int(np.argmax(gain))
            if gain[m] > best:
                best, arg = float(gain[m]), int(j[m])
        value[i] = data[i, 4] + best
        prev[i] = arg
    i = int(np.argmax(value))
    chain = []
    while i >= 0:
        chain.append(i)
        i = int(prev[i])
    chain = chain[::-1]
    sel = np.array(chain)
    return CanalTrack(
        k=ks[sel].astype(float), x=data[sel, 0], y=data[sel, 1], area=data[sel, 2],
        ap_radius=data[sel, 3], front=data[sel, 5],
    )


@dataclasses.dataclass
class Centreline:
    """A smooth curve sampled every ``step`` voxels of arc length, with an orthonormal frame.

    ``p`` (n, 3) points in working voxel coordinates; ``t`` unit tangents pointing cranially
    (+z); ``u`` unit vectors towards patient left, ``v`` towards posterior, both perpendicular
    to ``t``.
    """

    p: np.ndarray
    t: np.ndarray
    u: np.ndarray
    v: np.ndarray
    step: float

    @property
    def s(self) -> np.ndarray:
        return np.arange(len(self.p)) * self.step

    def __len__(self) -> int:
        return len(self.p)

    def plane_points(self, idx, uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        """Voxel coordinates (3, len(idx), *uu.shape) of in-plane offsets around points ``idx``."""
        idx = np.atleast_1d(idx)
        p = self.p[idx][:, :, None]
        u = self.u[idx][:, :, None]
        v = self.v[idx][:, :, None]
        pts = p + u * uu.ravel()[None, None, :] + v * vv.ravel()[None, None, :]
        return np.moveaxis(pts, 1, 0).reshape((3, len(idx)) + uu.shape)

    def project(self, coords: np.ndarray):
        """The plane each of ``coords`` (3, m) lies in, and its (u, v, w) offsets there.

        The plane of index ``i`` is the one :meth:`plane_points` samples (through ``p[i]``,
        normal ``t[i]``), so a point maps back to where :mod:`.column` saw it.  The nearest
        centreline point is only a start: the frame is smoothed more than the curve, and 2-3 cm
        in front of the canal (at the bodies) the nearest point's plane can be 5 mm off; a few
        steps along the curve by the residual ``w`` bring every point to its own plane.  ``w``
        is then within half a plane, except beyond the curve's ends.
        """
        from scipy.spatial import cKDTree

        pts = coords.T
        _, idx = cKDTree(self.p).query(pts)
        last = len(self.p) - 1
        for _ in range(6):
            w = ((pts - self.p[idx]) * self.t[idx]).sum(1)
            move = np.rint(w / self.step).astype(np.int64)
            nxt = np.clip(idx + move, 0, last)
            if np.array_equal(nxt, idx):
                break
            idx = nxt
        d = pts - self.p[idx]
        return idx, (d * self.u[idx]).sum(1), (d * self.v[idx]).sum(1), (d * self.t[idx]).sum(1)


def make_centreline(points: np.ndarray, step: float = 1.0, smooth: float = 0.0,
                    frame_smooth: float = 3.0) -> Centreline:
    """Centreline through ordered points (caudal to cranial), resampled by arc length.

    Parameters
    ----------
    points:
        (m, 3) voxel coordinates ordered from caudal to cranial.
    step:
        Arc-length spacing of the output, voxels.
    smooth:
        Gaussian smoothing (voxels of arc length) applied after resampling.
    frame_smooth:
        Gaussian smoothing (voxels of arc length) of the tangents, and so of the planes
        perpendicular to the curve.  Planes tilt about the curve, so a tilt of a few degrees
        moves their far side (a vertebral body 40 mm in front of the canal) by millimetres:
        a curve that wiggles once per vertebra (the canal is deeper at the discs than at the
        pedicles) needs frames smoothed over more than a level, or the planes rock and sample
        bodies and discs unevenly.
    """
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.r_[True, seg > 1e-6]
    points = points[keep]
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    if len(points) < 2 or arc[-1] <= 0:
        raise ValueError("a centreline needs at least two distinct points")
    s = np.arange(0.0, arc[-1] + 1e-9, step)
    p = np.column_stack([np.interp(s, arc, points[:, d]) for d in range(3)])
    if smooth > 0 and len(p) > 3:
        p = ndimage.gaussian_filter1d(p, smooth / step, axis=0, mode="nearest")
        # Smoothing shortens the curve; resample once more so the step is exact again.
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
        s = np.arange(0.0, arc[-1] + 1e-9, step)
        p = np.column_stack([np.interp(s, arc, p[:, d]) for d in range(3)])
    t = np.gradient(p, axis=0)
    if len(p) > 5 and frame_smooth > 0:
        t = ndimage.gaussian_filter1d(t, frame_smooth / step, axis=0, mode="nearest")
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    # u: patient left made perpendicular to t; v = t x u points posterior for a cranial t.
    ex = np.array([1.0, 0.0, 0.0])
    u = ex[None, :] - (t @ ex)[:, None] * t
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-9)
    v = np.cross(t, u)
    return Centreline(p=p, t=t, u=u, v=v, step=step)


def sample_planes(
    volume: np.ndarray,
    line: Centreline,
    half_u: float,
    v_range: tuple[float, float],
    *,
    res: float = 1.0,
    order: int = 1,
    cval: float = 0.0,
    idx=None,
) -> np.ndarray:
    """Resample ``volume`` in planes perpendicular to ``line`` (a straightened spine).

    Returns an array ``[plane, u, v]`` with ``u`` in ``[-half_u, half_u]`` and ``v`` in
    ``v_range`` (voxels), sampled every ``res`` voxels.
    """
    uu = np.arange(-half_u, half_u + 1e-9, res)
    vv = np.arange(v_range[0], v_range[1] + 1e-9, res)
    U, V = np.meshgrid(uu, vv, indexing="ij")
    idx = np.arange(len(line)) if idx is None else np.asarray(idx)
    out = np.empty((len(idx),) + U.shape, dtype=np.float32)
    chunk = max(1, 2_000_000 // U.size)
    for a in range(0, len(idx), chunk):
        pts = line.plane_points(idx[a:a + chunk], U, V)
        out[a:a + chunk] = ndimage.map_coordinates(
            volume, pts.reshape(3, -1), order=order, mode="constant", cval=cval, prefilter=False
        ).reshape(pts.shape[1:])
    return out


def extend_straight(line: Centreline, shape, length: float, frame_smooth: float) -> Centreline:
    """Extend a centreline straight along its end tangents, up to ``length`` voxels each way,
    staying inside the array's z range (``frame_smooth`` as for :func:`make_centreline`)."""
    n_end = min(len(line), 15)
    t0 = line.p[n_end - 1] - line.p[0]
    t1 = line.p[-1] - line.p[-n_end]
    t0 /= max(np.linalg.norm(t0), 1e-9)
    t1 /= max(np.linalg.norm(t1), 1e-9)
    zmax = shape[2] - 1
    before = []
    for i in range(1, int(length / line.step) + 1):
        q = line.p[0] - t0 * i * line.step
        if q[2] < -1 or q[2] > zmax + 1:
            break
        before.append(q)
    after = []
    for i in range(1, int(length / line.step) + 1):
        q = line.p[-1] + t1 * i * line.step
        if q[2] < -1 or q[2] > zmax + 1:
            break
        after.append(q)
    pts = np.vstack(before[::-1] + [line.p] + after) if (before or after) else line.p
    return make_centreline(pts, line.step, smooth=0.0, frame_smooth=frame_smooth)
