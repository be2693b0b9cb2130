"""A CT painted into a manual vertebra mask: real vertebra shapes with a ground truth.

The analytic phantom (:mod:`.anatomy`) draws every vertebra from a dozen numbers, so its bodies,
arches and joints are smoother and more regular than real ones.  A manual mask of a real spine
(VerSe's ``*_seg-vert_msk.nii.gz``, labels 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum,
28 T13) carries the shapes of one patient's vertebrae: their tilt, wedging, osteophytes and
facets as they were.  :func:`mask_phantom` paints tissues into it -- a cortical shell and
trabecular bone that follow the mask's own depth, the discs between the real endplates, the
canal through the real arches, a trunk, the aorta in front of the bodies, lungs and ribs
leaving the transverse processes of the thoracic levels -- then blurs and adds noise as a
scanner does, on an axial grid of the slice spacing asked for.  The mask is the ground truth.

What is still invented here: the tissues around the spine (they follow the spine's own track,
not a body's), the ribs' course beyond the costotransverse joint, and the HU values, which are
chosen from published ranges (cortical bone 500-1000 HU and trabecular 100-300 HU in adults,
falling to 60-120 HU in osteoporosis; disc 80-110 HU; CSF 0-15 HU).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from .. import coding
from ..volume import LPS_TO_RAS, Volume

#: VerSe's label values and the levels they stand for (VerSe's documentation and the mask's
#: README in the shared data).
VERSE_NAMES = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "sacrum",
    28: "T13",
}


@dataclasses.dataclass(frozen=True)
class MaskTissues:
    """HU drawn for each tissue, before blur and noise."""

    cortical: float = 650.0
    trabecular: float = 190.0
    cortex_mm: float = 1.0
    disc: float = 90.0
    csf: float = 12.0
    muscle: float = 45.0
    fat: float = -95.0
    lung: float = -850.0
    blood: float = 40.0

    @classmethod
    def faint(cls) -> "MaskTissues":
        """Osteoporotic bone: a thin, faint cortex and trabecular bone near soft tissue."""
        return cls(cortical=430.0, trabecular=95.0, cortex_mm=0.8)


@dataclasses.dataclass
class MaskPhantom:
    """A CT and its ground truth from a mask: ``labels`` in :mod:`spine_idc.coding` values."""

    ct: Volume
    labels: Volume
    names: tuple[str, ...]  # the levels of the mask, cranio-caudally


def _resample_labels(mask: Volume, values: list[int], grid_lps: np.ndarray, shape):
    """Each label of ``mask`` on the canonical ``[z, y, x]`` grid: the winning label and its
    partial-volume fraction (the label's linearly interpolated indicator)."""
    to_index = np.linalg.inv(mask.affine)
    best = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.int16)
    src = np.asarray(mask.array)
    for v in values:
        ind = np.argwhere(src == v)
        lo, hi = ind.min(0) - 2, ind.max(0) + 3
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, src.shape)
        sub = (src[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == v).astype(np.float32)
        # the label's box in world (RAS) coordinates -> the canonical grid's box
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        ras = (mask.affine @ corners.T).T
        lps = (LPS_TO_RAS @ ras.T).T[:, :3]  # LPS_TO_RAS is its own inverse
        box_lo = np.floor((lps.min(0) - grid_lps[:3, 3]) / np.diag(grid_lps)[:3]).astype(int)
        box_hi = np.ceil((lps.max(0) - grid_lps[:3, 3]) / np.diag(grid_lps)[:3]).astype(int) + 1
        box_lo = np.maximum(box_lo, 0)
        box_hi = np.minimum(box_hi, np.array(shape)[::-1])
        if np.any(box_hi <= box_lo):
            continue
        xs, ys, zs = (np.arange(box_lo[i], box_hi[i]) for i in range(3))
        Z, Y, X = np.meshgrid(zs, ys, xs, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel(), Z.ravel(), np.ones(X.size)])
        ras_pts = LPS_TO_RAS @ (grid_lps @ pts)
        ijk = (to_index @ ras_pts)[:3] - lo[:, None]
        p = ndimage.map_coordinates(sub, ijk, order=1, mode="constant", cval=0.0)
        p = p.reshape(Z.shape).astype(np.float32)
        win = (slice(box_lo[2], box_hi[2]), slice(box_lo[1], box_hi[1]),
               slice(box_lo[0], box_hi[0]))
        take = p > best[win]
        best[win] = np.where(take, p, best[win])
        lab[win] = np.where(take, v, lab[win])
    return lab, best


def _smooth_track(z_has: np.ndarray, values: np.ndarray, nz: int) -> np.ndarray:
    """A per-plane quantity known on some planes, interpolated and held at the ends."""
    zs = np.flatnonzero(z_has)
    out = np.interp(np.arange(nz), zs, values[zs])
    return ndimage.uniform_filter1d(out, 9, mode="nearest")


def _canal_track(bone: np.ndarray, ps: float):
    """Centre of the vertebral foramen on each plane: the hole the arch closes around, where it
    does; interpolated across the discs."""
    nz = bone.shape[0]
    cy, cx, has = np.zeros(nz), np.zeros(nz), np.zeros(nz, bool)
    for k in range(nz):
        if not bone[k].any():
            continue
        hole = ndimage.binary_fill_holes(bone[k]) & ~bone[k]
        lab, n = ndimage.label(hole)
        if not n:
            continue
        sizes = ndimage.sum(hole, lab, range(1, n + 1)) * ps * ps
        i = int(np.argmax(sizes))
        if not 60.0 <= sizes[i] <= 600.0:  # a foramen is 1-4 cm^2
            continue
        yy, xx = np.nonzero(lab == i + 1)
        cy[k], cx[k], has[k] = yy.mean(), xx.mean(), True
    if not has.any():
        raise ValueError("the mask has no closed vertebral arch: no canal to follow")
    return _smooth_track(has, cy, nz), _smooth_track(has, cx, nz)


def _discs(lab: np.ndarray, order: list[int], canal_y: np.ndarray, ss: float, ps: float):
    """Disc voxels between each pair of neighbouring bodies: in every column where both
    bodies have bone, the gap between the upper body's lowest and the lower body's highest
    voxel (so the real endplates' tilt and shape carry over)."""
    nz = lab.shape[0]
    disc = np.zeros(lab.shape, bool)
    front = (np.arange(lab.shape[1])[None, :] < (canal_y[:, None] - 7.0 / ps))[:, :, None]
    zz = np.arange(nz)[:, None, None]
    for upper, lower in zip(order[:-1], order[1:]):  # cranio-caudal neighbours
        a = (lab == upper) & front
        b = (lab == lower) & front
        if not a.any() or not b.any():
            continue
        has_a, has_b = a.any(0), b.any(0)
        bottom_a = np.argmax(a, axis=0)  # lowest plane of the upper body (z ascends upwards)
        top_b = nz - 1 - np.argmax(b[::-1], axis=0)
        both = has_a & has_b & (bottom_a > top_b) & ((bottom_a - top_b) * ss <= 20.0)
        both = ndimage.binary_opening(both, iterations=2)
        disc |= (zz > top_b) & (zz < bottom_a) & both
    return disc


def _capsule_paint(hu, pts, radii, value, spacing, forbid=None) -> None:
    """Blend a chain of capsules (index-space points ``[x, y, z]``, radii in mm) into ``hu``,
    with a 1 mm partial-volume edge; voxels in ``forbid`` are left alone."""
    ss, ps = spacing
    scale = np.array([ps, ps, ss])
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        r = max(ra, rb) + 2.0
        lo = np.maximum(np.floor(np.minimum(a, b) - r / scale).astype(int), 0)
        hi = np.minimum(np.ceil(np.maximum(a, b) + r / scale).astype(int) + 1,
                        np.array(hu.shape)[::-1])
        if np.any(hi <= lo):
            continue
        win = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        Z, Y, X = np.meshgrid(*(np.arange(lo[i], hi[i]) for i in (2, 1, 0)), indexing="ij")
        P = np.stack([X, Y, Z], -1) * scale
        A, B = a * scale, b * scale
        ab = B - A
        t = np.clip(((P - A) @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
        d = np.linalg.norm(P - (A + t[..., None] * ab), axis=-1) - (ra + t * (rb - ra))
        f = np.clip(0.5 - d, 0, 1).astype(np.float32)
        if forbid is not None:
            f[forbid[win]] = 0
        hu[win] = hu[win] * (1 - f) + np.float32(value) * f


def mask_phantom(mask: Volume, *, slice_mm: float = 1.0, pixel_mm: float = 0.8,
                 tissues: MaskTissues | None = None, contrast: bool = False, ribs: bool = True,
                 noise_hu: float = 15.0, seed: int = 0) -> MaskPhantom:
    """A CT of the spine in ``mask`` (VerSe values) on an axial grid of ``slice_mm`` slices.

    ``contrast`` fills the aorta as an arterial phase does (300 HU, touching the bodies'
    front); ``ribs`` draws a pair of ribs at every thoracic level of the mask (T12's and T11's
    short, as floating ribs are); ``tissues.faint()`` draws osteoporotic bone.
    """
    tis = tissues or MaskTissues()
    rng = np.random.default_rng(seed)
    values = sorted(int(v) for v in np.unique(np.asarray(mask.array)) if int(v) in VERSE_NAMES)
    if not values:
        raise ValueError("the mask holds no VerSe vertebra label")
    order = sorted(values, key=lambda v: coding.LEVEL_BY_NAME[VERSE_NAMES[v]].value
                   if VERSE_NAMES[v] in coding.LEVEL_BY_NAME else v)
    # the mask's extent in LPS, and a trunk-sized axial grid around it (1 mm planes to paint;
    # thicker slices are averaged from them at the end)
    idx = np.argwhere(np.asarray(mask.array) > 0)
    ras = (mask.affine @ np.c_[idx, np.ones(len(idx))].T).T
    lps = (LPS_TO_RAS @ ras.T).T[:, :3]
    lo, hi = lps.min(0), lps.max(0)
    cx = (lo[0] + hi[0]) / 2
    ps, fine = pixel_mm, 1.0
    nx = ny = int(round(380.0 / ps))
    # the back of the trunk 90 mm behind the arches' tips; the front in view
    y0 = hi[1] + 90.0 - (ny - 1) * ps
    nz = int(math.floor((hi[2] - lo[2]) / fine)) + 1
    grid = np.diag([ps, ps, fine, 1.0])
    grid[:3, 3] = (cx - (nx - 1) / 2 * ps, y0, lo[2])
    shape = (nz, ny, nx)
    lab, frac = _resample_labels(mask, values, grid, shape)
    bone = lab > 0
    canal_y, canal_x = _canal_track(bone & (frac >= 0.5), ps)

    yy = np.arange(ny)[None, :, None]
    xx = np.arange(nx)[None, None, :]
    cyv, cxv = canal_y[:, None, None], canal_x[:, None, None]
    hu = np.full(shape, -1000.0, np.float32)
    # trunk: an ellipse 330 x 240 mm whose back is 75 mm behind the canal; a fat layer under
    # the skin and fat around the organs in front of the spine
    a, b = 165.0 / ps, 120.0 / ps
    ty = cyv + (75.0 - 120.0) / ps
    r = ((xx - cxv) / a) ** 2 + ((yy - ty) / b) ** 2
    hu[r <= 1] = tis.fat
    hu[((xx - cxv) / (a - 16 / ps)) ** 2 + ((yy - ty) / (b - 16 / ps)) ** 2 <= 1] = tis.muscle
    pad = ((xx - cxv) / (70 / ps)) ** 2 + ((yy - (cyv - 75 / ps)) / (40 / ps)) ** 2 <= 1
    hu[pad & (r <= 1)] = tis.fat + 25
    zc = {v: float(np.argwhere(lab == v)[:, 0].mean()) for v in values}
    thoracic = [v for v in values if VERSE_NAMES[v].startswith("T")]
    if thoracic:  # lungs behind and beside the heart, down to the lowest rib-bearing level
        zl = min(zc[v] for v in thoracic)
        for s in (-1, 1):
            lung = (((xx - (cxv + s * 80 / ps)) / (60 / ps)) ** 2
                    + ((yy - (cyv - 25 / ps)) / (65 / ps)) ** 2 <= 1)
            lung = lung & (np.arange(nz)[:, None, None] >= zl)
            hu[lung] = tis.lung
    # canal: CSF around the cord, through the arches and between them
    hu[((xx - cxv) / (8 / ps)) ** 2 + ((yy - cyv) / (7 / ps)) ** 2 <= 1] = tis.csf
    # discs
    hu[_discs(lab, order, canal_y, fine, ps)] = tis.disc
    # the aorta, left in front of the bodies, down to L4 where it divides
    body = bone & (yy < cyv - 7 / ps)
    has = body.any((1, 2))
    front = np.where(has, np.argmax(body.any(2), axis=1), 0).astype(float)
    front = _smooth_track(has, front, nz)
    r_ao = 11.0 if contrast else 12.0
    gap = 0.5 if contrast else 3.0
    z_end = zc.get(23, -1.0)  # L4 (VerSe 23)
    pts = [np.array([canal_x[k] + 18 / ps, front[k] - (r_ao + gap) / ps, k])
           for k in range(0, nz, 6) if k >= z_end]
    if len(pts) >= 2:
        _capsule_paint(hu, pts, [r_ao] * len(pts), 300.0 if contrast else tis.blood, (fine, ps))
    # ribs, kept 1.5 mm clear of the vertebrae (the costovertebral and costotransverse joints)
    if ribs:
        near = ndimage.binary_dilation(bone, iterations=2)
        for v in thoracic:
            _rib_pair(hu, lab, v, VERSE_NAMES[v], canal_x, canal_y, ps, fine, near, tis)
    # the vertebrae: a cortical shell of the mask's own depth over trabecular bone with
    # texture, painted in the bone's box only
    zb, yb, xb = (np.flatnonzero(bone.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zb[0], zb[-1] + 1), slice(yb[0], yb[-1] + 1), slice(xb[0], xb[-1] + 1))
    f = frac[box]
    depth = ndimage.distance_transform_edt(f >= 0.5, sampling=(fine, ps, ps)).astype(np.float32)
    tex = ndimage.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), 1.2) * 90.0
    bone_hu = np.where(depth <= tis.cortex_mm, np.float32(tis.cortical), tis.trabecular + tex)
    hu[box] = hu[box] * (1 - f) + bone_hu * f
    del depth, tex, bone_hu
    # scanner: slice profile and in-plane blur, correlated noise, then slices of slice_mm
    hu += rng.standard_normal(shape).astype(np.float32) * noise_hu * 2.2
    hu = ndimage.gaussian_filter(hu, (max(slice_mm, fine) / 2.355 / fine, 0.45, 0.45))
    step = max(1, int(round(slice_mm / fine)))
    keep = np.arange(step // 2, nz, step)
    ct = np.clip(np.rint(hu[keep]), -1024, 3071).astype(np.int16)
    labels = _coded(lab[keep], frac[keep])
    aff = np.diag([ps, ps, fine * step, 1.0])
    aff[:3, 3] = grid[:3, 3] + np.array([0, 0, keep[0] * fine])
    aff = LPS_TO_RAS @ aff
    to_vol = lambda a: Volume(np.asfortranarray(a.transpose(2, 1, 0)), aff)  # noqa: E731
    return MaskPhantom(ct=to_vol(ct), labels=to_vol(labels),
                       names=tuple(VERSE_NAMES[v] for v in order))


def _coded(lab: np.ndarray, frac: np.ndarray) -> np.ndarray:
    out = np.zeros(lab.shape, np.int16)
    for v in np.unique(lab):
        if v and VERSE_NAMES.get(int(v)) in coding.LEVEL_BY_NAME:
            out[(lab == v) & (frac >= 0.5)] = coding.LEVEL_BY_NAME[VERSE_NAMES[int(v)]].value
    return out


#: Rib length (mm, head to the anterior end) by thoracic level: the lower ribs shorten, and
#: the 11th and 12th float (Gray's Anatomy gives the 12th as 2.5-15 cm).
_RIB_MM = {"T7": 260.0, "T8": 250.0, "T9": 230.0, "T10": 200.0, "T11": 140.0, "T12": 90.0}


def _rib_pair(hu, lab, v, name, canal_x, canal_y, ps, fine, near, tis) -> None:
    """A rib each side of level ``v``: from beside the body, past the tip of its transverse
    process, round the trunk's wall and down towards the front."""
    zs, ys, xs = np.nonzero(lab == v)
    k = int(round(np.median(zs)))
    sel = np.abs(zs - k) <= 4 / fine
    cy, cx = canal_y[k], canal_x[k]
    length = _RIB_MM.get(name, 260.0)
    for s in (-1.0, 1.0):
        side = sel & ((xs - cx) * s > 0) & (np.abs(ys - cy) <= 12 / ps)
        if not side.any():
            continue
        i = np.argmax((xs[side] - cx) * s)  # the transverse process's tip
        tip = np.array([xs[side][i], ys[side][i], zs[side][i]], float)
        head = np.array([cx + s * 14 / ps, cy - 8 / ps, k + 3], float)
        tub = tip + np.array([s * 2 / ps, -6 / ps, 0.0])
        pts, radii = [head, tub], [4.5, 5.0]
        # then round an ellipse of the trunk's wall, 25 mm inside the skin, falling 0.35 mm per
        # mm towards the front
        a, b = (165.0 - 28) / ps, (120.0 - 28) / ps
        ty = cy + (75.0 - 120.0) / ps
        th0 = math.atan2((tub[1] - ty) / b, (tub[0] - cx) / a)
        walked, th = math.dist(head[:2], tub[:2]) * ps, th0
        prev = tub
        while walked < length:
            th -= s * 0.08  # towards the front on that side (LPS: +x left, +y back)
            p = np.array([cx + a * math.cos(th), ty + b * math.sin(th), 0.0])
            step = math.dist(p[:2], prev[:2]) * ps
            p[2] = prev[2] - 0.35 * step / fine
            walked += step
            pts.append(p)
            radii.append(4.5)
            prev = p
        _capsule_paint(hu, pts, radii, tis.cortical * 0.55, (fine, ps), forbid=near)
