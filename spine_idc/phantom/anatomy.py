"""The phantom's anatomy in patient coordinates: the spine's curve, each vertebra's and
sacral segment's size and pose (from published morphometry, roughly), and the signed
distance functions of their parts (body, pedicles, laminae, processes, ribs).

Over 400 lines: the morphometry tables, the placement of every level and the signed distance
functions of their parts are one model of the spine, read together when a shape is changed
(the SDF primitives are a third of it and used nowhere else).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import coding
from .spec import NAMES, true_name

_EYE = ((1, 0, 0), (0, 1, 0), (0, 0, 1))

# --- anatomy tables ----------------------------------------------------------------------
# Level index (C1 = 0 ... L5 = 23) -> value in mm or degrees; linear in between.  Sizes follow
# published morphometry roughly (bodies ~15x12x14 mm cervical to ~48x34x27 mm lumbar).
_TABLE = {
    "W": {0: 16, 2: 16, 6: 22, 7: 25, 12: 29, 18: 40, 19: 42, 21: 46, 23: 49},
    "D": {0: 12, 2: 14, 6: 16, 7: 17, 12: 25, 18: 30, 19: 31, 21: 33, 23: 34},
    "H": {0: 12, 1: 15, 2: 13, 6: 14, 7: 16, 12: 19, 18: 24, 19: 25, 21: 27, 23: 26},
    "disc": {0: 4, 2: 5, 6: 5, 7: 4.5, 12: 5.5, 18: 7, 19: 9, 21: 10.5, 22: 11, 23: 10},
    "cw": {0: 20, 6: 19, 7: 17, 12: 16, 18: 17, 19: 18, 23: 20},
    "cd": {0: 15, 6: 14, 7: 14, 12: 14, 18: 15, 23: 16},
    "tp": {0: 4, 6: 5, 7: 5.5, 12: 6, 18: 7.5, 19: 8, 23: 10},
    "tl": {0: 4, 7: 5, 18: 6, 23: 7},
    "sp_len": {0: 12, 2: 16, 6: 28, 7: 30, 12: 32, 18: 28, 19: 28, 23: 22},
    "sp_ang": {0: 10, 5: 20, 6: 25, 7: 40, 10: 60, 13: 60, 16: 40, 18: 20, 19: 10, 23: 5},
    "sp_h": {0: 6, 7: 8, 12: 9, 18: 14, 19: 16, 23: 14},
    "sp_t": {0: 5, 18: 6, 23: 7},
    "tp_len": {0: 8, 6: 12, 7: 22, 12: 20, 17: 15, 18: 9, 19: 18, 21: 28, 23: 22},
    "tp_ang": {0: 0, 6: 0, 7: 35, 12: 40, 18: 30, 19: 5, 23: 10},
    "tp_hy": {0: 3, 7: 5, 12: 5, 18: 4, 19: 2.5, 23: 3},
    "tp_hz": {0: 3, 7: 5, 12: 5, 18: 4, 19: 5, 23: 5.5},
    # trunk semi-axes and subcutaneous fat weight; index 24 is the sacrum
    "bx": {0: 60, 5: 62, 6: 75, 7: 125, 9: 145, 12: 150, 18: 145, 21: 150, 23: 160, 24: 170},
    "by": {0: 55, 6: 60, 7: 85, 10: 100, 14: 108, 18: 110, 21: 105, 24: 110},
    "fatw": {0: 0.5, 7: 0.8, 18: 1.0, 21: 1.2, 24: 1.2},
    "muscle": {0: 18, 7: 12, 18: 18, 20: 25, 24: 20},
}


# Ribs per thoracic level (T1..T12): end angle around the cage (deg), anterior drop (mm), radius.
_RIB_END = (150, 155, 155, 155, 155, 155, 155, 145, 140, 135, 100, 75, 65)


_RIB_DROP = (25, 40, 55, 65, 70, 75, 80, 80, 75, 70, 45, 30, 25)


_RIB_R = (4.0, 4.5, 4.5, 4.8, 4.8, 5.0, 5.0, 5.0, 5.0, 5.0, 4.5, 4.0, 3.8)


# Sacral segments S1..S5: height, body width/depth, total width (alae), lateral-mass depth, canal.
_SACRUM = np.array([  # h, Wb, Db, Wt, Dl, cw, cd
    [26, 48, 32, 100, 26, 22, 10], [22, 40, 24, 86, 22, 18, 8], [18, 32, 18, 66, 16, 14, 6],
    [14, 24, 14, 46, 12, 10, 5], [11, 16, 10, 28, 9, 7, 4]], dtype=float)


def _table(key: str, i) -> np.ndarray:
    pts = _TABLE[key]
    return np.interp(i, list(pts), list(pts.values()))


def _label_lut(features) -> np.ndarray:
    """Owner index (0-23 mobile levels, 24 sacrum, 25 a free first sacral segment) -> value."""
    lut = np.zeros(256, np.uint8)
    for i, n in enumerate(NAMES):
        lut[i] = coding.LEVEL_BY_NAME[true_name(n, features)].value
    lut[25] = coding.L6_VALUE
    return lut


@dataclasses.dataclass
class _Part:
    """One rigid piece of the spine: a vertebra (``idx`` 0-23) or a sacral segment (24)."""

    name: str
    idx: int
    c: np.ndarray  # centre, LPS mm
    R: np.ndarray  # columns: local u (left), v (posterior), w (up along the spine), in LPS
    p: dict[str, float]  # shape parameters (mm; angles in radians)

    def world(self, local) -> np.ndarray:
        return self.c + self.R @ np.asarray(local, dtype=float)


def _frame(theta: float, psi: float = 0.0) -> np.ndarray:
    """Rotation whose w axis leans ``theta`` anteriorly (sagittal) and ``psi`` to the left."""
    ct, st, cp, sp = math.cos(theta), math.sin(theta), math.cos(psi), math.sin(psi)
    rx = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    return ry @ rx


def _up(theta: float) -> np.ndarray:
    return np.array([0.0, -math.sin(theta), math.cos(theta)])


@dataclasses.dataclass
class _Model:
    """The whole spine C1-sacrum of one seed, its surroundings and the tissue HU values."""

    vert: list[_Part]
    sacrum: list[_Part]
    hu: dict[str, float]
    trab_factor: np.ndarray  # per level index 0-24
    knots: dict[str, np.ndarray]  # per-z tables for the axial background, z ascending
    const: dict[str, float]

    def core(self, name: str) -> tuple[float, float]:
        """z range of a level's vertebral body (sacrum: S1 top to S4 centre)."""
        if name == "sacrum":
            top = self.sacrum[0].world((0, 0, self.sacrum[0].p["h"] / 2))[2]
            return float(self.sacrum[3].c[2]), float(top)
        part = self.vert[NAMES.index(name)]
        half = abs(part.R[2, 2]) * part.p["H"] / 2
        return float(part.c[2] - half), float(part.c[2] + half)

    def span_centre(self, levels) -> float:
        zs = [z for name in levels for z in self.core(name)]
        return (min(zs) + max(zs)) / 2

    def at(self, z: float) -> dict[str, float]:
        zk = self.knots["z"]
        return {k: float(np.interp(z, zk, v)) for k, v in self.knots.items()}


def _build_model(seed: int, curvature_mm: float, scoliosis_mm: float, features=()) -> _Model:
    """Place all 24 vertebrae and the sacrum; the draws do not depend on the spec's values.

    ``features`` change the anatomy after every draw was made (from a stream of their own), so
    a phantom without features is the same as before they existed.
    """
    r = np.random.default_rng([seed, 1])
    idx = np.arange(24)
    scale = r.uniform(0.9, 1.1)
    jit = 1 + np.clip(r.normal(0, 0.025, (3, 24)), -0.06, 0.06)
    prm = {k: _table(k, idx) for k in _TABLE}
    prm["W"], prm["D"], prm["H"] = (prm[k] * scale * jit[n] for n, k in enumerate("WDH"))
    for k in ("disc", "cw", "cd", "tp", "tl", "sp_len", "sp_h", "tp_len"):
        prm[k] = prm[k] * scale
    fr = np.random.default_rng([seed, 7])
    if "thin-discs" in features:  # 3-4 mm thoracic discs
        prm["disc"][7:19] = np.minimum(prm["disc"][7:19], fr.uniform(3.0, 4.0))
    if "sacralised-L5" in features:  # L5's transverse processes grown into the sacral alae
        prm["tp_len"][23] *= 1.7
        prm["tp_hy"][23] *= 1.8
        prm["tp_hz"][23] *= 2.2
    c = curvature_mm / 20.0  # 20 mm ~ a typical lordosis sagitta (about 50 degrees)
    draws = r.uniform(0.85, 1.15, 3)
    seg = np.zeros(24)
    seg[19:24] = -45 * c * draws[0] * np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    seg[7:19] = 38 * c * draws[1] / 12
    seg[1:7] = -30 * c * draws[2] / 6
    theta = math.radians(r.uniform(15, 25) + 12 * c)  # sacral slope
    sacral_theta = theta
    # Walk up from the S1 endplate: each level gets its disc below, then its body.
    pos, centres, thetas = np.zeros(3), [None] * 24, [0.0] * 24
    for i in range(23, -1, -1):
        a = math.radians(seg[i])
        pos = pos + _up(theta + 0.35 * a) * prm["disc"][i]
        theta += 0.7 * a
        mid = theta + 0.15 * a
        centres[i], thetas[i] = pos + _up(mid) * prm["H"][i] / 2, mid
        pos = pos + _up(mid) * prm["H"][i]
        theta += 0.3 * a
    # Supine patients lie along the table: turn the sacrum-T1 chord onto +z.
    chord = centres[7]
    tc = math.atan2(-chord[1], chord[2])
    rot = _frame(-tc)
    centres = [rot @ p for p in centres]
    thetas = [t - tc for t in thetas]
    z_top = centres[0][2]
    sc_sign, sc_shape = r.choice([-1.0, 1.0]), r.integers(1, 3)
    origin = np.array([r.uniform(-8, 8), 0.0, -r.uniform(150, 400)])

    def lateral(z):  # scoliotic offset: zero at the sacrum, one or two arcs up to C1
        t = np.clip(z / z_top, 0, 1)
        return sc_sign * scoliosis_mm * math.sin(math.pi * sc_shape * t), (
            sc_sign * scoliosis_mm * math.pi * sc_shape / z_top * math.cos(math.pi * sc_shape * t)
        )

    vert = []
    for i in range(24):
        off, slope = lateral(centres[i][2])
        p = {k: float(v[i]) for k, v in prm.items()}
        p.update(sp_ang=math.radians(p["sp_ang"]), tp_ang=math.radians(p["tp_ang"]),
                 d_above=p["disc"] if i == 0 else float(prm["disc"][i - 1]))
        vert.append(_Part(NAMES[i], i, centres[i] + np.array([off, 0, 0]) + origin,
                          _frame(thetas[i], math.atan(slope)), p))
    _craniocervical(vert[0], vert[1])
    # Sacrum: five fused segments curving down, posteriorly then forwards (sacral kyphosis).
    sacrum, pos, theta = [], np.zeros(3), sacral_theta - tc
    ss = scale * r.uniform(0.95, 1.05)
    for k, (h, wb, db, wt, dl, cw, cd) in enumerate(_SACRUM * ss):
        mid = theta - math.radians(3)
        cen = pos - _up(mid) * h / 2
        sacrum.append(_Part(f"S{k + 1}", 24, rot @ cen + origin, rot @ _frame(mid),
                            dict(h=h, Wb=wb, Db=db, Wt=wt, Dl=dl, cw=cw, cd=cd)))
        pos, theta = pos - _up(mid) * h, theta - math.radians(6)
    hu = dict(air=-1000.0, lung=r.uniform(-870, -830), fat=r.uniform(-110, -85),
              soft=r.uniform(38, 55), csf=r.uniform(5, 15), cord=r.uniform(28, 38),
              annulus=r.uniform(90, 110), nucleus=r.uniform(70, 85),
              blood=r.uniform(150, 300) if r.random() < 0.3 else r.uniform(35, 50),
              cortical=r.uniform(700, 1200))
    trab_factor = np.append(1 + np.clip(r.normal(0, 0.04, 24), -0.1, 0.1), 0.85)
    const = dict(cortex=r.uniform(1.0, 2.0), rib_gap=r.uniform(1.5, 2.0), si_gap=r.uniform(2, 3),
                 aorta_gap=r.uniform(2, 5), facet_gap=1.0, body_scale=r.uniform(0.85, 1.15),
                 body_scale_y=r.uniform(0.85, 1.1), fat=r.uniform(5, 25),
                 y_slack=r.uniform(-1, 1))
    if "faint" in features:  # osteoporotic: thin, faint cortex (the marrow is the spec's)
        hu["cortical"] = fr.uniform(350, 550)
        const["cortex"] = fr.uniform(0.5, 0.9)
    if "contrast-aorta" in features:  # arterial phase, the aorta lying against the bodies
        hu["blood"] = fr.uniform(250, 450)
        const["aorta_gap"] = 0.0
    if "thin-discs" in features:  # sclerotic endplates: dense bone under each disc
        const["sclerosis_hu"] = fr.uniform(150, 300)
        const["sclerosis_mm"] = fr.uniform(1.5, 3.0)
    # Centre the lumbar spine about 60 mm behind the isocentre, as on a real table.
    shift = np.array([0.0, 60.0 - np.mean([v.c[1] for v in vert[19:24]]), 0.0])
    for part in vert + sacrum:
        part.c = part.c + shift
    model = _Model(vert, sacrum, hu, trab_factor, {}, const)
    model.knots = _knots(model)
    return model


#: The atlas and the axis (C1, C2), roughly after published adult morphometry (e.g. Doherty
#: and Heggeness, Spine 1995; Steele's rule of thirds for the canal at C1): the dens is about
#: 10 mm across (radius 0.3 x C2's body width here) and its tip reaches the top of C1's
#: anterior arch; the atlanto-dental interval is 1-3 mm in adults; C1's anterior arch is
#: about 10 mm tall and 5 mm thick, its lateral masses about 11 x 16 mm and as tall as C1.
DENS_RADIUS = 0.3
ATLANTO_DENTAL_MM = 1.8
ANTERIOR_ARCH_MM = (5.0, 10.0)  # thickness (anteroposterior), height
#: The lateral masses stand this much further from the dens than the anterior arch does (the
#: lateral atlanto-dental spaces are 3-4 mm wide).
LATERAL_GAP_MM = 1.5


def _craniocervical(c1: _Part, c2: _Part) -> None:
    """C1 has no body: the dens of C2 takes its place, rising from C2's body to the top of
    C1's anterior arch, with no disc between them (C1 sits on C2's facets)."""
    r = DENS_RADIUS * c2.p["W"]
    tip = c1.world((0, 0, ANTERIOR_ARCH_MM[1] / 2 + 1.0))
    c2.p["dens"] = float(c2.R[:, 2] @ (tip - c2.c)) - c2.p["H"] / 2
    c2.p["dens_r"] = c1.p["dens_r"] = float(r)
    c1.p["atlas"] = 1.0


def _spinous_tip_v(p: dict[str, float]) -> float:
    vc = 0.7 * p["D"] / 2 + p["cd"] / 2
    return vc + p["cd"] / 2 + p["tl"] + p["sp_len"] * math.cos(p["sp_ang"])


def _knots(m: _Model) -> dict[str, np.ndarray]:
    """Per-level tables of the axial background (trunk, cage), to interpolate along z."""
    cs = m.const
    parts = m.vert + [m.sacrum[0], m.sacrum[2], m.sacrum[4]]
    ii = np.array([p.idx for p in m.vert] + [24, 24, 24], dtype=float)
    bx = _table("bx", ii) * cs["body_scale"]
    by = _table("by", ii) * cs["body_scale"] * cs["body_scale_y"]
    fat = _table("fatw", ii) * cs["fat"]
    tip = np.array([_spinous_tip_v(p.p) for p in m.vert] + [30.0, 25.0, 15.0])
    back = tip + _table("muscle", ii) + fat
    yb = np.array([p.c[1] for p in parts])
    # The thoracic cage is at least ~14 cm deep; a slim patient has a thinner trunk, not a
    # flatter chest, so the trunk grows around the cage where needed.
    cage_b = np.maximum(by - back / 2, np.where(ii >= 7, 68 * cs["body_scale"], 15))
    by = cage_b + back / 2
    k = dict(z=np.array([p.c[2] for p in parts]), x=np.array([p.c[0] for p in parts]),
             yb=yb, W=np.array([p.p.get("W", p.p.get("Wb", 0)) for p in parts]),
             D=np.array([p.p.get("D", p.p.get("Db", 0)) for p in parts]),
             bx=bx, by=by, cy=yb + back - by, fat=fat, A=bx - fat - 18, B=cage_b,
             ycc=yb + 25 - cage_b)
    order = np.argsort(k["z"])
    return {key: v[order] for key, v in k.items()}


# --- SDF primitives (float32 arrays, mm) ----------------------------------------------------
def _ellipse(a, b, ra: float, rb: float):
    """Approximate signed distance to the ellipse ``(a/ra)^2 + (b/rb)^2 = 1``."""
    k0 = np.sqrt((a / ra) ** 2 + (b / rb) ** 2)
    k1 = np.sqrt((a / (ra * ra)) ** 2 + (b / (rb * rb)) ** 2)
    return np.where(k1 > 1e-6, k0 * (k0 - 1) / np.maximum(k1, 1e-6), -min(ra, rb))


def _ellipsoid(a, b, c, ra: float, rb: float, rc: float):
    """Approximate signed distance to the ellipsoid with semi-axes ``ra, rb, rc``."""
    k0 = np.sqrt((a / ra) ** 2 + (b / rb) ** 2 + (c / rc) ** 2)
    k1 = np.sqrt((a / (ra * ra)) ** 2 + (b / (rb * rb)) ** 2 + (c / (rc * rc)) ** 2)
    return np.where(k1 > 1e-6, k0 * (k0 - 1) / np.maximum(k1, 1e-6), -min(ra, rb, rc))


def _extrude(d2, dz):
    """Cap a 2-D SDF ``d2`` by a slab SDF ``dz`` (a prism)."""
    return np.minimum(np.maximum(d2, dz), 0) + np.hypot(np.maximum(d2, 0), np.maximum(dz, 0))


def _obox(u, v, w, centre, axes, half, r: float):
    """Rounded box with orthonormal ``axes`` (rows) and half extents ``half``."""
    # Python floats keep float32 arrays float32 (NumPy scalars would promote them).
    d = [u - float(centre[0]), v - float(centre[1]), w - float(centre[2])]
    q = [np.abs(float(e[0]) * d[0] + float(e[1]) * d[1] + float(e[2]) * d[2]) - float(h - r)
         for e, h in zip(axes, half)]
    out = np.sqrt(sum(np.maximum(x, 0) ** 2 for x in q))
    return out + np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0) - r


def _capsule(X, Y, Z, a, b, ra: float, rb: float):
    """Tapered capsule from point ``a`` (radius ``ra``) to ``b`` (radius ``rb``)."""
    a = [float(x) for x in a]
    ba = [float(y) - x for x, y in zip(a, b)]
    pa = (X - a[0], Y - a[1], Z - a[2])
    h = np.clip((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) / sum(x * x for x in ba), 0, 1)
    dist = np.sqrt((pa[0] - ba[0] * h) ** 2 + (pa[1] - ba[1] * h) ** 2 + (pa[2] - ba[2] * h) ** 2)
    return dist - (ra + (rb - ra) * h)


def _vertebra(p: dict[str, float], u, v, w):
    """SDF of one vertebra in its local frame (u left, v posterior, w up)."""
    W, D, H, cw, cd = p["W"], p["D"], p["H"], p["cw"], p["cd"]
    vpw = 0.7 * D / 2  # flat posterior wall of the body
    vc = vpw + cd / 2  # canal centre
    d = _extrude(np.maximum(_ellipse(u, v, W / 2, D / 2), v - vpw), np.abs(w) - H / 2)
    if p.get("atlas"):
        d = _atlas(p, u, v, w)
    elif p.get("dens"):  # the dens, slightly behind the body's centre, rounded at its tip
        r = p["dens_r"]
        d = np.minimum(d, _capsule(u, v, w, (0, -1.0, H / 2 - 3), (0, -1.0, H / 2 + p["dens"] - r),
                                   r, 0.85 * r))
    # The neural arch is a ring around the canal: its front half (the pedicles) is short and
    # high on the body, leaving the intervertebral foramina below; its back half (the laminae)
    # is nearly as tall as the body.
    ring = np.maximum(_ellipse(u, v - vc, cw / 2 + p["tp"], cd / 2 + p["tl"]),
                      -_ellipse(u, v - vc, cw / 2, cd / 2))
    front = np.maximum(ring, v - vc)
    if p.get("atlas"):  # no bone between the dens and the canal: the transverse ligament
        front = np.maximum(front, p["dens_r"] + ATLANTO_DENTAL_MM + LATERAL_GAP_MM - np.abs(u))
    d = np.minimum(d, _extrude(front, np.abs(w - 0.12 * H) - 0.28 * H))
    d = np.minimum(d, _extrude(np.maximum(ring, vc - 1 - v), np.abs(w + 0.05 * H) - 0.42 * H))
    # spinous process: a blade from the laminae, sloping down by sp_ang (steep in T5-T9)
    a, ln = p["sp_ang"], p["sp_len"] + 3
    e1, e3 = (0, math.cos(a), -math.sin(a)), (0, math.sin(a), math.cos(a))
    start = np.array([0, vc + cd / 2 + p["tl"] - 3, -0.05 * H])
    d = np.minimum(d, _obox(u, v, w, start + np.array(e1) * ln / 2, (e1, (1, 0, 0), e3),
                            (ln / 2, p["sp_t"] / 2, p["sp_h"] / 2),
                            0.45 * min(p["sp_t"], p["sp_h"])))
    ax = cw / 2 + p["tp"] * 0.5
    for s in (-1.0, 1.0):
        b = p["tp_ang"]
        e1, e2 = (s * math.cos(b), math.sin(b), 0.0), (-s * math.sin(b), math.cos(b), 0.0)
        cen = np.array([s * (cw / 2 + 0.6 * p["tp"]), vc, 0.05 * H])
        cen = cen + np.array(e1) * p["tp_len"] / 2
        d = np.minimum(d, _obox(u, v, w, cen, (e1, e2, (0, 0, 1)),
                                (p["tp_len"] / 2, p["tp_hy"], p["tp_hz"]),
                                0.8 * min(p["tp_hy"], p["tp_hz"])))
        # articular processes reach half-way into the neighbours' zone; superior ones sit
        # lateral, inferior ones medial, 1.2 mm apart, so facet joints have a joint space
        # (C1's facets are its lateral masses' faces; C2's upper ones stay level with its
        # body's top, under C1's lateral masses)
        if p.get("atlas"):
            continue
        up = H / 2 + (1.0 if p.get("dens") else p["d_above"] / 2 + 3)
        down = H / 2 + p["disc"] / 2 + 3
        d = np.minimum(d, _obox(u, v, w, (s * (ax + 3.1), vc + 0.15 * cd, up / 2), _EYE,
                                (2.5, 4.0, up / 2), 2.0))
        d = np.minimum(d, _obox(u, v, w, (s * (ax - 3.1), vc + 0.15 * cd + 2, -down / 2), _EYE,
                                (2.5, 4.0, down / 2), 2.0))
    return d


def _atlas(p: dict[str, float], u, v, w):
    """C1's ring without a body: the anterior arch in front of the dens (which is C2's, at
    about v = -1 mm) and the lateral masses beside it; the posterior arch, the transverse and
    articular processes are drawn as for the other levels."""
    r, (t, h) = p["dens_r"], ANTERIOR_ARCH_MM
    inner = r + ATLANTO_DENTAL_MM
    arc = np.maximum(_ellipse(u, v + 1.0, inner + t, inner + t), -_ellipse(u, v + 1.0, inner, inner))
    arc = np.maximum(arc, v + 1.0)  # its front half only
    d = _extrude(arc, np.abs(w) - h / 2)
    for s in (-1.0, 1.0):
        d = np.minimum(d, _obox(u, v, w, (s * (inner + LATERAL_GAP_MM + 5.5), 1.5, 0.0), _EYE,
                                (5.5, 8.0, p["H"] / 2 + 1.0), 2.0))
    return d


def _sacral_segment(seg: _Part, k: int, l5: dict[str, float], u, v, w):
    """SDF of sacral segment ``k`` (fused to its neighbours by overlapping them)."""
    q = seg.p
    h, ov = q["h"], 1.5
    top = h / 2 if k == 0 else h / 2 + ov
    wc, hh = (top - h / 2 - ov) / 2, (top + h / 2 + ov) / 2
    d = _extrude(_ellipse(u, v, q["Wb"] / 2, q["Db"] / 2), np.abs(w - wc) - hh)
    lat_top = 0.3 * h if k == 0 else top
    d = np.minimum(d, _extrude(_ellipse(u, v - 0.3 * q["Db"], q["Wt"] / 2, q["Dl"] / 2),
                               np.abs(w - (lat_top - h / 2 - ov) / 2) - (lat_top + h / 2 + ov) / 2))
    vc = 0.7 * q["Db"] / 2 + q["cd"] / 2
    canal = _ellipse(u, v - vc, q["cw"] / 2, q["cd"] / 2)
    arch = np.maximum(_ellipse(u, v - vc, q["cw"] / 2 + 5, q["cd"] / 2 + 5), -canal)
    d = np.minimum(d, _extrude(arch, np.abs(w - wc) - hh))
    d = np.minimum(d, _obox(u, v, w, (0, vc + q["cd"] / 2 + 7, wc), _EYE, (3, 4, hh * 0.8), 2.0))
    if k == 0:  # superior articular processes meeting L5's inferior ones
        ax = l5["cw"] / 2 + l5["tp"] * 0.5
        up = h / 2 + l5["disc"] / 2 + 3
        for s in (-1.0, 1.0):
            cen = (s * (ax + 3.1), vc + 0.15 * l5["cd"], h / 2 - 4 + up / 2)
            d = np.minimum(d, _obox(u, v, w, cen, _EYE, (2.5, 4.0, up / 2 + 4), 2.0))
    return np.maximum(d, -_extrude(canal, np.abs(w) - h))


def _rib(m: _Model, t: int, s: float) -> tuple[list[np.ndarray], list[float]]:
    """Points and radii of rib ``t`` (0 = first) on side ``s`` (+1 = patient left)."""
    part = m.vert[7 + t]
    p, gap, rr = part.p, m.const["rib_gap"], _RIB_R[t]
    W, D, H, vc = p["W"], p["D"], p["H"], 0.7 * p["D"] / 2 + p["cd"] / 2
    v0 = 0.25 * D  # costovertebral joint: posterolateral body, a real joint space away
    head = part.world((s * (W / 2 * math.sqrt(1 - (v0 / (D / 2)) ** 2) + gap + rr), v0, 0.3 * H))
    b = p["tp_ang"]
    e1 = np.array([s * math.cos(b), math.sin(b), 0])
    e2 = np.array([-s * math.sin(b), math.cos(b), 0])
    tip = np.array([s * (p["cw"] / 2 + 0.6 * p["tp"]), vc, 0.05 * H]) + e1 * (p["tp_len"] - 3)
    neck = part.world(tip - e2 * (p["tp_hy"] + gap + rr + 0.5))  # costotransverse joint
    k = m.at(float(part.c[2]))
    xs, A, B = float(part.c[0]), k["A"], k["B"]
    phi_a = math.asin(min(0.9, (abs(neck[0] - xs) + 12) / A))
    ycc = neck[1] + 5 - B * math.cos(phi_a)
    phis = np.linspace(phi_a, math.radians(_RIB_END[t]), 12)
    frac = (phis - phi_a) / (phis[-1] - phi_a)
    drop = _RIB_DROP[t] * m.const["body_scale"]
    shaft = [np.array([xs + s * A * math.sin(f), ycc + B * math.cos(f),
                       neck[2] - 4 - drop * g ** 1.3]) for f, g in zip(phis, frac)]
    return [head, neck] + shaft, [rr * 1.1, rr] + [rr * (1 - 0.15 * g) for g in frac]
