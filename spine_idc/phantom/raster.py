"""Rasterising the anatomy (:mod:`.anatomy`) into a CT: tissues painted on a canonical grid
(:mod:`.canvas`) -- the trunk, each level with its disc and canal, the sacrum, what lies around
them (:mod:`.context`) -- then the bone, the scanner's blur, slice profile and noise, and the
patient position as flips of that raster (:func:`make_phantom`).
"""

from __future__ import annotations

import math

import numpy as np

from ..volume import LPS_TO_RAS, Volume
from .anatomy import (
    _build_model, _ellipse, _extrude, _label_lut, _Model, _Part, _sacral_segment, _spinous_tip_v,
    _vertebra,
)
from .canvas import _Canvas, _Texture
from .context import _paint_context, _paint_metal, _paint_skull
from .spec import (
    FEATURES, HU_MAX, HU_MIN, NAMES, ORIENTATIONS, Phantom, PhantomSpec, Tissue, true_name,
)


def _paint_background(cv: _Canvas, m: _Model, seed: int) -> None:
    """Air, trunk (fat layer, soft tissue with texture, abdominal fat), lungs: slice by slice."""
    hu = m.hu
    X, Y = cv.x.astype(np.float32)[None, :], cv.y.astype(np.float32)[:, None]
    tex = _Texture(cv, seed, 2)
    z_base = float(m.vert[18].c[2])  # T12: the posterior costophrenic recess
    z_apex = float(m.vert[7].c[2] + m.vert[7].p["H"] / 2 + 25)
    z_t3, z_t6 = float(m.vert[9].c[2]), float(m.vert[12].c[2])
    for k, z in enumerate(cv.z):
        p, sl = m.at(z), (slice(k, k + 1), slice(None), slice(None))
        t0 = tex.slice(0, k)
        cv.hu[k] = hu["air"]
        dx, dy = X - 0.3 * p["x"], Y - p["cy"]
        cv.blend(sl, _ellipse(dx, dy, p["bx"], p["by"])[None], hu["fat"], Tissue.FAT)
        inner = _ellipse(dx, dy, p["bx"] - p["fat"], p["by"] - p["fat"])
        cv.blend(sl, inner[None], (hu["soft"] + 6 * t0)[None], Tissue.SOFT)
        if z < z_base + 20:  # abdominal and pelvic fat between organs and muscles
            pocket = np.maximum(inner + 10, (1.0 - tex.slice(1, k)) * 9)
            cv.blend(sl, pocket[None], hu["fat"], Tissue.FAT)
        if z_base - 30 < z < z_apex:
            lx, taper = X - p["x"], math.sqrt(min(max((z_apex - z) / 50, 0.05), 1))
            ant = np.clip((p["yb"] - Y) / (2 * p["B"]), 0, 1)
            heart = min(max((z_t3 - z) / (z_t3 - z_t6), 0), 1)
            d = _ellipse(lx, Y - p["ycc"], (p["A"] - 10) * taper, (p["B"] - 10) * taper)
            d = np.maximum(d, 18 + 50 * heart * ant ** 0.8 - np.abs(lx))  # mediastinum
            d = np.maximum(d, p["W"] / 2 + 5 - np.abs(lx))  # paravertebral soft tissue
            diaph = (z_base + 10 + 45 * ant + 15 * (1 - np.clip(np.abs(lx) / p["A"], 0, 1) ** 2)
                     + 8 * np.clip(0.5 - lx / 40, 0, 1))  # right dome higher (liver)
            d = np.maximum(d, diaph - z)
            cv.blend(sl, d[None], (hu["lung"] + 20 * t0)[None], Tissue.LUNG)


def _paint_level(cv: _Canvas, m: _Model, i: int, below: bool, drawn: bool) -> None:
    """Disc below level ``i`` (if ``below``), its canal contents and (if ``drawn``) its bone."""
    part, hu = m.vert[i], m.hu
    p = part.p
    W, D, H, cw, cd = p["W"], p["D"], p["H"], p["cw"], p["cd"]
    if below and i > 0:  # no disc between C1 and C2
        if i == 23:
            s1 = m.sacrum[0]
            top, wl, dl = s1.world((0, 0, s1.p["h"] / 2)), s1.p["Wb"], s1.p["Db"]
        else:
            low = m.vert[i + 1]
            top, wl, dl = low.c + low.R[:, 2] * low.p["H"] / 2, low.p["W"], low.p["D"]
        bottom = part.c - part.R[:, 2] * H / 2
        w = bottom - top
        h = float(np.linalg.norm(w))
        w = w / h
        u = part.R[:, 0] - (part.R[:, 0] @ w) * w
        u /= np.linalg.norm(u)
        disc = _Part("disc", i, (top + bottom) / 2, np.column_stack([u, np.cross(w, u), w]), {})
        ra, rb = (W + wl) / 4 + 1, (D + dl) / 4 + 1
        sl, (uu, vv, ww) = cv.local(disc, (-ra - 2, -rb - 2, -h / 2 - 4),
                                    (ra + 2, rb + 2, h / 2 + 4))
        if sl is not None:
            # 2 mm into the bodies, so wedged endplates leave no gap; the bone paints over it
            dd = _extrude(np.maximum(_ellipse(uu, vv, ra, rb), vv - 0.7 * rb),
                          np.abs(ww) - h / 2 - 2)
            cv.blend(sl, dd, hu["annulus"], Tissue.DISC)
            nuc = _extrude(_ellipse(uu, vv + 0.1 * rb, 0.55 * ra, 0.5 * rb), np.abs(ww) - 0.35 * h)
            cv.blend(sl, nuc, hu["nucleus"], Tissue.DISC)
    vc = 0.7 * D / 2 + cd / 2
    zl = H / 2 + max(p["d_above"], p["disc"]) / 2 + 0.5
    sl, (u, v, w) = cv.local(part, (-cw / 2 - 2, vc - cd / 2 - 2, -zl - 2),
                             (cw / 2 + 2, vc + cd / 2 + 2, zl + 2))
    if sl is not None:
        canal = _extrude(_ellipse(u, v - vc, cw / 2, cd / 2), np.abs(w) - zl)
        if i >= 20:  # below the conus: dural sac with epidural fat behind it
            cv.blend(sl, canal, hu["fat"], Tissue.FAT)
            sac = _extrude(_ellipse(u, v - vc + 0.12 * cd, 0.4 * cw, 0.36 * cd), np.abs(w) - zl)
            cv.blend(sl, sac, hu["csf"], Tissue.CSF)
        else:
            cv.blend(sl, canal, hu["csf"], Tissue.CSF)
            cord = _ellipse(u, v - vc + 0.05 * cd, min(5.0, 0.3 * cw), min(4.0, 0.28 * cd))
            cord = _extrude(cord, np.abs(w) - zl)
            cv.blend(sl, cord, hu["cord"], Tissue.CORD)
    if drawn:
        reach = max(W / 2, cw / 2 + p["tp"] + p["tp_len"]) + 8
        back = _spinous_tip_v(p) + 10
        drop = p["sp_len"] * math.sin(p["sp_ang"]) + p["sp_h"]
        up = max(H / 2 + p["d_above"] / 2 + 6, H / 2 + p.get("dens", 0.0) + 2)
        sl, (u, v, w) = cv.local(part, (-reach, -D / 2 - 3, -H / 2 - p["disc"] / 2 - drop - 6),
                                 (reach, back, up))
        if sl is not None:
            cv.merge(cv.dvert, sl, _vertebra(p, u, v, w), m.const["facet_gap"], owner=i)
            if "sclerosis_hu" in m.const:
                band = ((_ellipse(u, v, W / 2, D / 2) < 0) & (v < 0.7 * D / 2)
                        & (np.abs(w) > H / 2 - m.const["sclerosis_mm"]) & (np.abs(w) <= H / 2))
                if cv.boost is None:
                    cv.boost = np.zeros(cv.hu.shape, np.float32)
                cv.boost[sl][band] = m.const["sclerosis_hu"]


def _paint_sacrum(cv: _Canvas, m: _Model, drawn: bool, free_s1: bool = False) -> None:
    """Sacral canal contents and (if ``drawn``) the sacrum as one fused bone; with
    ``free_s1`` its first segment is a separate bone (a lumbarised S1, labelled L6) with a
    disc under it."""
    l5 = m.vert[23].p
    for k, seg in enumerate(m.sacrum):
        q = seg.p
        vc = 0.7 * q["Db"] / 2 + q["cd"] / 2
        sl, (u, v, w) = cv.local(seg, (-q["cw"] / 2 - 2, vc - q["cd"] / 2 - 2, -q["h"] / 2 - 3),
                                 (q["cw"] / 2 + 2, vc + q["cd"] / 2 + 2, q["h"] / 2 + 3))
        if sl is not None:
            canal = _extrude(_ellipse(u, v - vc, q["cw"] / 2, q["cd"] / 2),
                             np.abs(w) - q["h"] / 2 - 1)
            cv.blend(sl, canal, m.hu["fat"], Tissue.FAT)
            if k < 2:  # the dural sac ends at S2
                sac = _ellipse(u, v - vc + 0.1 * q["cd"], 0.35 * q["cw"], 0.3 * q["cd"])
                cv.blend(sl, _extrude(sac, np.abs(w) - q["h"] / 2 - 1), m.hu["csf"], Tissue.CSF)
        if drawn:
            reach, top = q["Wt"] / 2 + 3, q["h"] / 2 + (l5["disc"] / 2 + 6 if k == 0 else 3)
            sl, (u, v, w) = cv.local(seg, (-reach, -q["Db"] / 2 - 3, -q["h"] / 2 - 3),
                                     (reach, vc + q["cd"] / 2 + 14, top))
            if sl is not None:
                d = _sacral_segment(seg, k, l5, u, v, w)
                owner = 25 if free_s1 and k == 0 else 24
                if free_s1 and k == 1:  # a disc between the free S1 and the sacrum
                    gap = _extrude(_ellipse(u, v, q["Wb"] / 2 + 1, q["Db"] / 2 + 1),
                                   np.abs(w - q["h"] / 2 - 1) - 3.5)
                    cv.blend(sl, gap, m.hu["annulus"], Tissue.DISC)
                    d = np.maximum(d, -gap)
                cv.merge(cv.dvert, sl, d, m.const["facet_gap"], owner=owner)


def _paint_bone(cv: _Canvas, field, trab, cortical: float, t: float, labelled: bool,
                labels=None, lut=None) -> None:
    """Cortical shell of thickness ``t`` over trabecular bone, with partial volume."""
    idx = np.flatnonzero(field < cv.delta / 2)
    d = field.ravel()[idx]
    f_out = np.clip(0.5 - d / cv.delta, 0, 1)
    f_in = np.clip(0.5 - (d + t) / cv.delta, 0, 1)
    if labelled:
        trab = trab[np.minimum(cv.owner.ravel()[idx], len(trab) - 1)]
        if cv.boost is not None:
            trab = trab + cv.boost.ravel()[idx]
    h = cv.hu.ravel()[idx]
    cv.hu.ravel()[idx] = h * (1 - f_out) + cortical * (f_out - f_in) + trab * f_in
    inside = d < 0
    where = idx[inside]
    if labelled:
        cv.tis.ravel()[where] = np.where(d[inside] < -t, Tissue.TRABECULAR, Tissue.CORTICAL)
        labels.ravel()[where] = lut[cv.owner.ravel()[where]]
    else:
        cv.tis.ravel()[where] = Tissue.OTHER_BONE


def _acquire(cv: _Canvas, spec: PhantomSpec) -> np.ndarray:
    """Scanner blur (slice profile, in-plane resolution) and correlated noise; int16 HU."""
    from scipy import ndimage

    sigma = (spec.slice_thickness_mm / 2.355 / spec.slice_spacing_mm, 0.45, 0.45)
    gain = 1.0  # variance kept by the blur, so that the noise has noise_hu after it
    for s in sigma:
        impulse = np.zeros(31)
        impulse[15] = 1
        gain *= float((ndimage.gaussian_filter1d(impulse, s, truncate=3.0) ** 2).sum())
    noise = np.random.default_rng([spec.seed, 2]).standard_normal(cv.hu.shape, dtype=np.float32)
    noise *= np.float32(spec.noise_hu / math.sqrt(gain))
    cv.hu += noise
    del noise
    out = np.empty_like(cv.hu)
    ndimage.gaussian_filter(cv.hu, sigma, output=out, truncate=3.0)
    np.rint(out, out=out)
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out.astype(np.int16)


def _canvas(spec: PhantomSpec, m: _Model) -> _Canvas:
    """The canonical grid: slices centred on the listed levels, the back always in view."""
    nx, ny, nz = spec.shape
    ps, ss = spec.pixel_spacing_mm, spec.slice_spacing_mm
    z0 = round(m.span_centre(spec.levels) + spec.fov_offset_mm - (nz - 1) / 2 * ss, 4)
    z = z0 + ss * np.arange(nz)
    trunk = [m.at(float(zz)) for zz in z[:: max(1, nz // 60)]]
    ymin = min(k["cy"] - k["by"] for k in trunk)
    ymax = max(k["cy"] + k["by"] for k in trunk)
    fov = (ny - 1) * ps
    slack = fov - (ymax - ymin) - 20
    if slack >= 0:
        yc = (ymin + ymax) / 2 + 0.4 * slack * m.const["y_slack"]
    else:  # too small a field of view for this patient: cut the front, keep the back
        yc = ymax + 10 - fov / 2
    x0 = round(-(nx - 1) / 2 * ps, 4)
    names = [n for n in spec.levels if n != "sacrum"] or ["L5"]
    parts = [m.vert[NAMES.index(n)] for n in names]
    if "crop-arches" in spec.features:
        # The view ends just behind the canal, through the laminae (a crop around the aorta
        # or the bodies, as cardiac and angiographic reconstructions are).
        back = max(float(q.c[1]) + 0.7 * q.p["D"] / 2 + 0.8 * q.p["cd"] for q in parts)
        yc = back - fov / 2
    if "crop-side" in spec.features:
        # The view's left edge runs through the bodies, a quarter of their width left of the
        # midline.
        xs = float(np.mean([q.c[0] for q in parts]))
        x0 = round(xs + 0.25 * float(np.mean([q.p["W"] for q in parts])) - (nx - 1) * ps, 4)
    y0 = round(yc - fov / 2, 4)
    return _Canvas(x0 + ps * np.arange(nx), y0 + ps * np.arange(ny), z, ps)


def _oriented(canon: np.ndarray, position: str) -> np.ndarray:
    """Canonical ``[z, y, x]`` raster -> ``[column, row, slice]`` for ``position``."""
    row, col = ORIENTATIONS[position]
    n = np.cross(row, col)
    a = canon.transpose(2, 1, 0)
    a = a[:: -1 if row[0] < 0 else 1, :: -1 if col[1] < 0 else 1, :: -1 if n[2] < 0 else 1]
    return np.asfortranarray(a)


def _affine(cv: _Canvas, spec: PhantomSpec) -> np.ndarray:
    """Voxel-to-RAS affine of the oriented raster, as a DICOM converter computes it."""
    row, col = (np.array(v) for v in ORIENTATIONS[spec.patient_position])
    n = np.cross(row, col)
    origin = [cv.x[-1] if row[0] < 0 else cv.x[0], cv.y[-1] if col[1] < 0 else cv.y[0],
              cv.z[-1] if n[2] < 0 else cv.z[0]]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * spec.pixel_spacing_mm, col * spec.pixel_spacing_mm
    lps[:3, 2], lps[:3, 3] = n * spec.slice_spacing_mm, np.round(origin, 4) + 0.0
    return LPS_TO_RAS @ lps


def _check(spec: PhantomSpec) -> list[int]:
    if spec.patient_position not in ORIENTATIONS:
        raise ValueError(f"patient_position must be one of {sorted(ORIENTATIONS)}")
    if not spec.levels or any(n not in NAMES for n in spec.levels):
        raise ValueError(f"levels must be names from {NAMES}, got {spec.levels}")
    listed = [NAMES.index(n) for n in spec.levels]
    if listed != list(range(listed[0], listed[0] + len(listed))):
        raise ValueError(f"levels must be contiguous and cranio-caudal, got {spec.levels}")
    if min(spec.shape) < 1 or spec.pixel_spacing_mm <= 0 or spec.slice_spacing_mm <= 0:
        raise ValueError(f"bad grid in {spec}")
    unknown = set(spec.features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown phantom features {sorted(unknown)}; known: {FEATURES}")
    return listed


def make_phantom(spec: PhantomSpec) -> Phantom:
    """Generate the phantom ``spec`` describes (deterministic: same spec, same arrays).

    Parameters
    ----------
    spec:
        Usually from :func:`spec_for_seed`; fields may be overridden with
        :func:`dataclasses.replace`.  Only the listed levels get bone; a listed level whose
        vertebral body lies wholly outside the field of view is an error.

    Returns
    -------
    Phantom
        CT (int16 HU), labels (uint8, :mod:`spine_idc.coding` values) and tissue classes on the
        grid of the series :func:`write_dicom_series` writes.
    """
    listed = _check(spec)
    feats = spec.features
    m = _build_model(spec.seed, spec.curvature_mm, spec.scoliosis_mm, feats)
    cv = _canvas(spec, m)
    for name in spec.levels:
        lo, hi = m.core(name)
        if hi < cv.z[0] or lo > cv.z[-1]:
            raise ValueError(f"level {name} is outside the field of view of {spec}")
    _paint_background(cv, m, spec.seed)
    context = range(max(0, listed[0] - 1), min(24, listed[-1] + 1) + 1)
    neighbours = "neighbours" in feats
    for i in context:
        if i == 24:
            _paint_sacrum(cv, m, 24 in listed or neighbours, free_s1="L6" in feats)
        else:
            _paint_level(cv, m, i, below=i + 1 in context, drawn=i in listed or neighbours)
    _paint_context(cv, m, listed, ribs=13 if "T13" in feats else 12)
    _paint_skull(cv, m)
    cortical, cortex = m.hu["cortical"], m.const["cortex"]
    trab = (spec.trabecular_hu * m.trab_factor).astype(np.float32)
    _paint_bone(cv, cv.dother, 0.8 * spec.trabecular_hu, cortical, cortex, False)
    labels = np.zeros_like(cv.tis)
    _paint_bone(cv, cv.dvert, trab, cortical, cortex, True, labels, _label_lut(feats))
    del cv.dvert, cv.dother, cv.owner
    if "metal" in feats:
        _paint_metal(cv, m, listed, spec.seed)
    ct = _acquire(cv, spec)
    affine = _affine(cv, spec)
    pos = spec.patient_position
    hu = dict(m.hu, trabecular=spec.trabecular_hu, other_bone_trabecular=0.8 * spec.trabecular_hu)
    return Phantom(
        spec=spec,
        ct=Volume(_oriented(ct, pos), affine),
        labels=Volume(_oriented(labels, pos), affine.copy()),
        trabecular_hu_by_level={true_name(NAMES[i], feats): float(trab[i]) for i in listed},
        tissues=Volume(_oriented(cv.tis, pos), affine.copy()),
        tissue_hu={k: float(v) for k, v in hu.items()},
    )
