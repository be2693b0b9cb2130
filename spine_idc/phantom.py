"""Deterministic synthetic spine CT phantoms with ground-truth vertebra labels.

A phantom is built in patient coordinates (DICOM LPS, mm) from a seed: a curved spine (sagittal
lordosis/kyphosis, optional mild scoliosis) of analytic vertebrae (body, pedicles, lamina,
spinous and transverse processes, articular processes), discs, spinal canal with cord or dural
sac, a tilted wedge-shaped sacrum, ribs, sternum, iliac wings, aorta, lungs, fat and soft tissue.
Every bony part is a signed distance function (SDF), so partial volume at surfaces, a cortical
shell of known thickness and real gaps at joints all follow from one number per voxel.

The anatomy is rasterised on a canonical axis-aligned grid (``[z, y, x]`` in memory, LPS axes
ascending) and the patient position is realised as flips of that raster, so that
:attr:`Phantom.ct` is exactly the grid a correct converter rebuilds from the DICOM series that
:func:`write_dicom_series` writes.  Label values come from :mod:`spine_idc.coding`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from pathlib import Path

import numpy as np

from . import coding
from .volume import LPS_TO_RAS, Volume, write_nifti

log = logging.getLogger(__name__)

#: PatientPosition -> (row direction, column direction) of ImageOrientationPatient, in LPS.
ORIENTATIONS = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}
NAMES = tuple(lv.name for lv in coding.LEVELS)  # C1 ... L5, sacrum in cranio-caudal order
HU_MIN, HU_MAX = -1024, 3071  # what 12 stored bits with intercept -1024 can hold


#: What :attr:`PhantomSpec.features` may hold.
FEATURES = (
    "faint", "thin-discs", "contrast-aorta", "crop-arches", "crop-side", "metal", "T13", "L6",
    "sacralised-L5", "neighbours",
)
#: HU of metal (the largest value 12 stored bits hold).
METAL_HU = 3071.0


class Tissue(enum.IntEnum):
    """Tissue class of each voxel centre in :attr:`Phantom.tissues` (phantom-internal codes)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT = 3
    CSF = 4
    CORD = 5
    DISC = 6
    BLOOD = 7
    CORTICAL = 8
    TRABECULAR = 9
    OTHER_BONE = 10  # ribs, sternum, ilium: bone that carries no vertebra label
    METAL = 11  # pedicle screws


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines a phantom; :func:`spec_for_seed` derives it from a seed.

    ``levels`` are the named levels drawn (and labelled); bone of levels not listed is not
    drawn.  ``shape`` is ``(columns, rows, slices)`` of the written series.  The field of view
    is centred on the listed levels' vertebral bodies, shifted along the patient axis by
    ``fov_offset_mm``.  ``curvature_mm`` is the nominal sagitta of the lumbar lordosis (the
    thoracic kyphosis and cervical lordosis scale with it), ``scoliosis_mm`` the lateral
    amplitude of a mild scoliotic curve, ``noise_hu`` the standard deviation of image noise.
    ``descending_order`` makes InstanceNumber run against the slice normal.

    ``features`` make a phantom as hard as real CT (see :data:`FEATURES`): faint osteoporotic
    bone, thin thoracic discs with sclerotic endplates, a contrast-filled aorta against the
    bodies, crops through the arches or a body's side, metal with streaks, transitional
    anatomy (``T13``, ``L6``, ``sacralised-L5``), and ``neighbours``: the levels just beyond
    the view drawn and labelled too (a real scan always shows the next vertebra's edge).
    """

    seed: int
    levels: tuple[str, ...]
    shape: tuple[int, int, int]
    pixel_spacing_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    trabecular_hu: float
    curvature_mm: float
    patient_position: str
    descending_order: bool
    scoliosis_mm: float = 0.0
    noise_hu: float = 15.0
    fov_offset_mm: float = 0.0
    features: tuple[str, ...] = ()


@dataclasses.dataclass
class Phantom:
    """A generated phantom: CT in HU, ground-truth labels and the tissue map, on one grid.

    ``ct`` is int16 HU in the :mod:`spine_idc.volume` conventions for the series
    :func:`write_dicom_series` writes; ``labels`` uses :mod:`spine_idc.coding` values (each
    vertebra's whole bone, no discs, no ribs); ``tissues`` holds :class:`Tissue` codes and
    ``tissue_hu`` the nominal HU drawn for each tissue (before texture, blur and noise).
    """

    spec: PhantomSpec
    ct: Volume
    labels: Volume
    trabecular_hu_by_level: dict[str, float]
    tissues: Volume | None = None
    tissue_hu: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The levels in view by their true names, cranio-caudally (the transitional features
        rename: with ``T13`` the geometric L1 is T13 and L2-L5 are L1-L4; with ``L6`` the
        first sacral segment is a free L6)."""
        out = []
        for n in self.spec.levels:
            if n == "sacrum" and "L6" in self.spec.features:
                out.append("L6")
            out.append(true_name(n, self.spec.features))
        return tuple(out)


# --- anatomy tables ----------------------------------------------------------------------
# Level index (C1 = 0 ... L5 = 23) -> value in mm or degrees; linear in between.  Sizes follow
# published morphometry roughly (bodies ~15x12x14 mm cervical to ~48x34x27 mm lumbar).
_TABLE = {
    "W": {0: 16, 2: 16, 6: 22, 7: 25, 12: 29, 18: 40, 19: 42, 21: 46, 23: 49},
    "D": {0: 12, 2: 14, 6: 16, 7: 17, 12: 25, 18: 30, 19: 31, 21: 33, 23: 34},
    "H": {0: 12, 2: 13, 6: 14, 7: 16, 12: 19, 18: 24, 19: 25, 21: 27, 23: 26},
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


def true_name(name: str, features=()) -> str:
    """A geometric level's name in the anatomy ``features`` describe (see
    :attr:`Phantom.names`)."""
    if "T13" in features and name in ("L1", "L2", "L3", "L4", "L5"):
        return "T13" if name == "L1" else f"L{int(name[1]) - 1}"
    return name


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
    # The neural arch is a ring around the canal: its front half (the pedicles) is short and
    # high on the body, leaving the intervertebral foramina below; its back half (the laminae)
    # is nearly as tall as the body.
    ring = np.maximum(_ellipse(u, v - vc, cw / 2 + p["tp"], cd / 2 + p["tl"]),
                      -_ellipse(u, v - vc, cw / 2, cd / 2))
    d = np.minimum(d, _extrude(np.maximum(ring, v - vc), np.abs(w - 0.12 * H) - 0.28 * H))
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
        up = H / 2 + p["d_above"] / 2 + 3
        down = H / 2 + p["disc"] / 2 + 3
        d = np.minimum(d, _obox(u, v, w, (s * (ax + 3.1), vc + 0.15 * cd, up / 2), _EYE,
                                (2.5, 4.0, up / 2), 2.0))
        d = np.minimum(d, _obox(u, v, w, (s * (ax - 3.1), vc + 0.15 * cd + 2, -down / 2), _EYE,
                                (2.5, 4.0, down / 2), 2.0))
    return d


_EYE = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


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


# --- rasterisation -----------------------------------------------------------------------
@dataclasses.dataclass
class _Canvas:
    """The canonical raster (``[z, y, x]``, LPS axes ascending) and the running SDF fields."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    delta: float  # partial-volume width of a surface: the in-plane voxel size
    hu: np.ndarray = None
    tis: np.ndarray = None
    dvert: np.ndarray = None  # SDF of vertebral bone drawn so far (min over levels)
    owner: np.ndarray = None  # level index (0-24) owning dvert; 255 where none
    dother: np.ndarray = None  # SDF of unlabelled bone (ribs, sternum, ilium)
    boost: np.ndarray = None  # extra HU of dense (sclerotic) marrow under the endplates

    def __post_init__(self):
        shape = (len(self.z), len(self.y), len(self.x))
        self.hu = np.empty(shape, np.float32)
        self.tis = np.zeros(shape, np.uint8)
        self.dvert = np.full(shape, 1e3, np.float32)
        self.owner = np.full(shape, 255, np.uint8)
        self.dother = np.full(shape, 1e3, np.float32)

    def window(self, lo, hi):
        """Index slices of the voxels inside the world box ``[lo, hi]``; None if empty."""
        out = []
        for axis, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            step = axis[1] - axis[0] if len(axis) > 1 else 1.0
            i0 = max(0, math.ceil((a - axis[0]) / step))
            i1 = min(len(axis), math.floor((b - axis[0]) / step) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, sl):
        return (self.z[sl[0]].astype(np.float32)[:, None, None],
                self.y[sl[1]].astype(np.float32)[None, :, None],
                self.x[sl[2]].astype(np.float32)[None, None, :])

    def local(self, part: _Part, lo, hi):
        """Window around a local box of ``part`` and the local (u, v, w) coordinates in it."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        world = part.c + corners @ part.R.T
        sl = self.window(world.min(0), world.max(0))
        if sl is None:
            return None, (None, None, None)
        Z, Y, X = self.coords(sl)
        d = (X - float(part.c[0]), Y - float(part.c[1]), Z - float(part.c[2]))
        R = part.R
        return sl, tuple(float(R[0, i]) * d[0] + float(R[1, i]) * d[1] + float(R[2, i]) * d[2]
                         for i in range(3))

    def blend(self, sl, d, value, code: Tissue):
        """Paint soft tissue ``value`` where ``d < 0``, mixing within ``delta`` of the surface."""
        f = np.clip(0.5 - d / self.delta, 0, 1)
        h = self.hu[sl]
        h += f * (value - h)
        self.tis[sl][d < 0] = code

    def merge(self, field: np.ndarray, sl, d, gap: float, owner: int | None = None):
        """Union ``d`` into an SDF field, kept ``gap`` mm away from vertebral bone drawn so far."""
        dv = self.dvert[sl]
        if owner is None:
            d = np.maximum(d, gap - dv)
        else:  # a bone never keeps a gap to itself (sacral segments fuse)
            d = np.where(self.owner[sl] != owner, np.maximum(d, gap - dv), d)
        old = field[sl]
        better = d < old
        old[better] = d[better]
        if owner is not None:
            self.owner[sl][better] = owner


class _Texture:
    """Smooth Gaussian random fields (unit variance, blobs of ~2 cm), evaluated slice by slice.

    Separable Gaussian interpolation of white noise on a 12 mm lattice: a slice costs two small
    matrix products instead of a full-volume filter.
    """

    def __init__(self, cv: _Canvas, seed: int, fields: int, cell: float = 12.0, sigma: float = 9.0):
        def kernel(coords):
            centres = np.arange(coords[0] - 3 * cell, coords[-1] + 4 * cell, cell)
            k = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / sigma) ** 2)
            k[k < 1e-4] = 0  # denormal float32 weights would make every product crawl
            return (k / np.sqrt((k ** 2).sum(1, keepdims=True))).astype(np.float32)

        self.kx, self.ky, self.kz = kernel(cv.x), kernel(cv.y), kernel(cv.z)
        shape = (fields, self.kz.shape[1], self.ky.shape[1], self.kx.shape[1])
        self.g = np.random.default_rng([seed, 3]).standard_normal(shape, dtype=np.float32)

    def slice(self, field: int, k: int) -> np.ndarray:
        coarse = np.tensordot(self.kz[k], self.g[field], axes=(0, 0))
        return self.ky @ coarse @ self.kx.T


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
    if below:
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
        sl, (u, v, w) = cv.local(part, (-reach, -D / 2 - 3, -H / 2 - p["disc"] / 2 - drop - 6),
                                 (reach, back, H / 2 + p["d_above"] / 2 + 6))
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


def _tubes(cv: _Canvas, pts, radii, field, gap: float, paint=None) -> None:
    """Capsule chain through ``pts``: merged into ``field``, or blended as ``paint``."""
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        r = max(ra, rb) + 2
        sl = cv.window(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if sl is None:
            continue
        Z, Y, X = cv.coords(sl)
        d = _capsule(X, Y, Z, a, b, ra, rb)
        if paint is None:
            cv.merge(field, sl, d, gap)
        else:
            cv.blend(sl, np.maximum(d, gap - cv.dvert[sl]), *paint)


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


def _paint_context(cv: _Canvas, m: _Model, listed: list[int], ribs: int = 12) -> None:
    """Aorta, ribs (``ribs`` pairs from T1), sternum and iliac wings: anatomy around the
    labelled bone, never touching it."""
    cs, hu = m.const, m.hu
    pts = [v.world((0.35 * v.p["W"], -(v.p["D"] / 2 + 12 + cs["aorta_gap"]), 0))
           for v in m.vert[10:23]]  # T4 to L4, anterior left of the bodies
    _tubes(cv, pts, list(np.linspace(12, 9, len(pts)) * cs["body_scale"]), None, cs["aorta_gap"],
           paint=(hu["blood"], Tissue.BLOOD))
    for t in range(ribs):
        if 7 + t <= max(listed):  # ribs of levels below the view never reach up into it
            for s in (-1.0, 1.0):
                _tubes(cv, *_rib(m, t, s), cv.dother, cs["rib_gap"])
    top, bot = m.vert[8], m.vert[15]  # sternum: T2 to T9 levels, on the anterior cage
    k = m.at(float((top.c[2] + bot.c[2]) / 2))
    cen = (float(top.c[0] + bot.c[0]) / 2, k["ycc"] - k["B"] - 2, float(top.c[2] + bot.c[2]) / 2)
    half = (14.0, 6.0, float(top.c[2] - bot.c[2]) / 2)
    sl = cv.window(np.array(cen) - half, np.array(cen) + half)
    if sl is not None:
        Z, Y, X = cv.coords(sl)
        cv.merge(cv.dother, sl, _obox(X, Y, Z, cen, _EYE, half, 4.0), cs["rib_gap"])
    if max(listed) >= 22:  # iliac wings beside the sacrum, across the sacroiliac joints
        # From S4 up to the iliac crests beside L4: at the sacrum's level the wing lies
        # against the sacroiliac joint; above it, it flares outwards (the crest runs lateral to
        # L5 and L4), in four bands.
        s0, s1 = m.sacrum[0], m.sacrum[1]
        zbot = float(m.sacrum[3].c[2] - 10)
        zsi = float(s0.world((0, 0, s0.p["h"] / 2))[2])
        ztop = float(m.vert[22].c[2])
        bands = [(zbot, zsi, 0.0)] + [
            (zsi + (ztop - zsi) * k / 3, zsi + (ztop - zsi) * (k + 1) / 3, 6.0 + 7.0 * k)
            for k in range(3)
        ]
        for s in (-1.0, 1.0):
            si = (s0.world((s * s0.p["Wt"] / 2, 0.3 * s0.p["Db"], 0))
                  + s1.world((s * s1.p["Wt"] / 2, 0.3 * s1.p["Db"], 0))) / 2
            g = cs["si_gap"]
            for z0, z1, flare in bands:
                xy = [si[:2] + np.array([s * (dx + flare), dy]) for dx, dy in
                      ((g + 8, 8), (g + 30, -30), (g + 60, -75), (g + 72, -112))]
                for a, b, th in zip(xy[:-1], xy[1:], (16.0, 8.0, 6.0)):
                    e1 = (b - a) / np.linalg.norm(b - a)
                    cen = np.append((a + b) / 2, (z0 + z1) / 2)
                    half = (float(np.linalg.norm(b - a)) / 2 + th / 2, th / 2, (z1 - z0) / 2 + 1)
                    r = float(np.hypot(half[0], half[1])) + 1
                    sl = cv.window(cen - [r, r, half[2]], cen + [r, r, half[2]])
                    if sl is not None:
                        Z, Y, X = cv.coords(sl)
                        axes = ((e1[0], e1[1], 0), (-e1[1], e1[0], 0), (0, 0, 1))
                        cv.merge(cv.dother, sl, _obox(X, Y, Z, cen, axes, half, 0.45 * th), g)


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


def _paint_metal(cv: _Canvas, m: _Model, listed: list[int], seed: int) -> None:
    """Pedicle screws in one level of the view, with the streaks metal leaves in a CT.

    Two 3 mm rods enter the pedicles from behind and run into the body.  Streaks are painted
    into each slice near them: bright and dark bands through the screws' centre at a few
    angles, fading with distance (the reconstruction's beam hardening and photon starvation
    look like this; their exact physics does not matter here, their confusing the bone's
    outline does).
    """
    r = np.random.default_rng([seed, 8])
    mobile = [i for i in listed if i < 24]
    if not mobile:
        return
    i = mobile[len(mobile) // 2]
    part = m.vert[i]
    p = part.p
    vc = 0.7 * p["D"] / 2 + p["cd"] / 2
    centres = []
    for s_ in (-1.0, 1.0):
        a = part.world((s_ * (p["cw"] / 2 + 0.5 * p["tp"]), vc + p["cd"] / 2 + 8, 0.1 * p["H"]))
        b = part.world((s_ * 5.0, -0.25 * p["D"], 0.0))
        sl = cv.window(np.minimum(a, b) - 4, np.maximum(a, b) + 4)
        if sl is None:
            continue
        Z, Y, X = cv.coords(sl)
        inside = _capsule(X, Y, Z, a, b, 3.0, 3.0) < 0
        cv.hu[sl][inside] = METAL_HU
        cv.tis[sl][inside] = Tissue.METAL
        centres.append((a + b) / 2)
    if not centres:
        return
    c = np.mean(centres, axis=0)
    X, Y = np.meshgrid(cv.x, cv.y)  # [y, x]
    dx, dy = X - c[0], Y - c[1]
    dist = np.hypot(dx, dy)
    angles = r.uniform(0, np.pi, 6)
    streak = np.zeros(X.shape, np.float32)
    for k, th in enumerate(angles):
        across = np.abs(-np.sin(th) * dx + np.cos(th) * dy)
        sign = 1.0 if k % 2 else -1.0
        streak += sign * r.uniform(150, 350) * np.exp(-0.5 * (across / 1.5) ** 2)
    streak *= np.exp(-dist / 80.0)
    for k, z in enumerate(cv.z):
        if abs(z - c[2]) < 12:
            cv.hu[k] += streak * np.float32(1 - abs(z - c[2]) / 12)


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


# --- specs from seeds ---------------------------------------------------------------------
_SCENARIOS = (  # (first, last, weight); None: a random partial window cutting vertebrae
    ("T1", "sacrum", 0.15), ("L1", "sacrum", 0.25), ("T8", "L3", 0.2), ("T1", "T12", 0.1),
    (None, None, 0.2), ("C3", "T4", 0.1))


def _ends(m: _Model, i0: int, i1: int, cut: bool, f) -> tuple[float, float]:
    """z of the field of view's ends: inside the next discs, or cutting the end levels."""
    lo0, hi0 = m.core(NAMES[i0])
    lo1, hi1 = m.core(NAMES[i1])
    if cut:
        return lo1 + f[0] * (hi1 - lo1), hi0 - f[1] * (hi0 - lo0)
    above = m.vert[i0].p["d_above"] if i0 < 24 else m.vert[23].p["disc"]
    hi = hi0 + (f[3] * above if i0 > 0 else 3)
    if i1 == 24:
        s5 = m.sacrum[4]
        return float(s5.world((0, 0, -s5.p["h"] / 2))[2]) - 30 * f[2], hi
    return lo1 - f[2] * m.vert[i1].p["disc"], hi


def spec_for_seed(seed: int, *, size: str = "test", levels=None) -> PhantomSpec:
    """Draw a phantom specification from ``seed`` (deterministic).

    Parameters
    ----------
    seed:
        Non-negative integer.
    size:
        ``"test"``: 192x192 in-plane, 1.2-1.5 mm pixels, at most 200 slices of 1-3 mm (fast);
        ``"realistic"``: 512x512x300, 0.6-1.0 mm pixels, 0.8-2 mm slices.
    levels:
        Optional contiguous level names to centre the view on (otherwise a scenario drawn from
        the seed: T1-sacrum, L1-sacrum, T8-L3, T1-T12, C3-T4 or a partial window cutting
        vertebrae at its borders).  The returned spec lists every level whose vertebral body
        is in view by at least 3 mm (1.5 slices), so a wide realistic view may add neighbours.
    """
    if size not in ("test", "realistic"):
        raise ValueError(f"size must be 'test' or 'realistic', got {size!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    r = np.random.default_rng([int(seed), 0])
    position = str(r.choice(list(ORIENTATIONS), p=[0.55, 0.2, 0.15, 0.1]))
    descending = bool(r.random() < 0.5)
    curvature = round(float(r.uniform(8, 30)), 2)
    scoliosis = round(float(r.uniform(2, 12)), 2) if r.random() < 0.35 else 0.0
    trab, noise = round(float(r.uniform(90, 300)), 1), round(float(r.uniform(10, 25)), 1)
    scenario = int(r.choice(len(_SCENARIOS), p=[s[2] for s in _SCENARIOS]))
    p_first, p_len = int(r.integers(7, 22)), int(r.integers(2, 8))
    f = (r.uniform(0.3, 0.6), r.uniform(0.3, 0.6), r.uniform(0.1, 0.45), r.uniform(0.1, 0.45))
    ss_pick, th_pick, ps_pick = r.random(), float(r.choice([1.0, 1.0, 1.25, 1.5])), r.random()
    m = _build_model(int(seed), curvature, scoliosis)
    cut = False
    if levels is not None:
        i0, i1 = NAMES.index(levels[0]), NAMES.index(levels[-1])
    elif _SCENARIOS[scenario][0] is None:
        i0, i1, cut = p_first, min(p_first + p_len - 1, 24), True
    else:
        i0, i1 = (NAMES.index(n) for n in _SCENARIOS[scenario][:2])
    lo, hi = _ends(m, i0, i1, cut, f)
    if size == "test":
        ps, nxy = round(1.2 + 0.3 * ps_pick, 3), 192
        for ss in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)[int(ss_pick * 4):]:
            nz = round((hi - lo) / ss) + 1
            if nz <= 200:
                break
        nz = max(16, min(nz, 200))
    else:
        ps, nxy, nz = round(0.6 + 0.4 * ps_pick, 3), 512, 300
        ss = next((o for o in (0.8, 1.0, 1.25, 1.5, 2.0) if 299 * o >= hi - lo), 2.0)
    half = (nz - 1) / 2 * ss
    zc = min((hi + lo) / 2, m.core("C1")[1] + 5 - half)  # no skull in this phantom
    need = max(3.0, 1.5 * ss)
    names = tuple(n for n in NAMES
                  if min(m.core(n)[1], zc + half) - max(m.core(n)[0], zc - half) >= need)
    if not names:
        raise ValueError(f"seed {seed}: no vertebral body in view")  # not reached in practice
    return PhantomSpec(
        seed=int(seed), levels=names, shape=(nxy, nxy, nz), pixel_spacing_mm=ps,
        slice_spacing_mm=ss, slice_thickness_mm=min(3.0, round(ss * th_pick, 3)),
        trabecular_hu=trab, curvature_mm=curvature, patient_position=position,
        descending_order=descending, scoliosis_mm=scoliosis, noise_hu=noise,
        fov_offset_mm=round(zc - m.span_centre(names), 4))


#: Scenarios as hard as the real CTs the classical segmenter failed on, each reproducing one
#: failure: name -> (levels, features, slice spacing and thickness in mm or None to keep the
#: seed's, trabecular HU range or None).  Every one also draws the neighbouring levels.
HARD_SCENARIOS: dict[str, tuple] = {
    # a 3 mm abdomen-pelvis CT: faint cortex, osteoporotic marrow, iliac wings and SI joints
    "abdomen-3mm-faint": (("T12", "sacrum"), ("faint",), 3.0, (60, 110)),
    # a thorax from the shoulders: thin discs with sclerotic endplates, 2 mm slices
    "thorax-thin-discs": (("C7", "T11"), ("thin-discs",), 2.0, None),
    # a cropped CT angiography: contrast against the bodies, arches cut, no sacrum, no
    # rib ends in view
    "cta-crop": (("T5", "T12"), ("contrast-aorta", "crop-arches"), 1.5, None),
    # the view's edge through the bodies' left side
    "crop-side": (("T10", "L3"), ("crop-side",), None, None),
    # pedicle screws and their streaks
    "metal": (("T11", "sacrum"), ("metal",), None, None),
    # transitional anatomy
    "T13": (("T1", "sacrum"), ("T13",), 3.0, None),
    "L6": (("T10", "sacrum"), ("L6",), None, None),
    "sacralised-L5": (("T11", "sacrum"), ("sacralised-L5",), None, None),
}


def hard_spec(scenario: str, seed: int, *, size: str = "test") -> PhantomSpec:
    """The phantom spec of a hard ``scenario`` (see :data:`HARD_SCENARIOS`) for ``seed``."""
    if scenario not in HARD_SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {sorted(HARD_SCENARIOS)}")
    (first, last), features, slices, trab = HARD_SCENARIOS[scenario]
    levels = NAMES[NAMES.index(first): NAMES.index(last) + 1]
    spec = spec_for_seed(seed, size=size, levels=levels)
    r = np.random.default_rng([int(seed), 9])
    changes = dict(features=tuple(features) + ("neighbours",))
    if trab is not None:
        changes["trabecular_hu"] = round(float(r.uniform(*trab)), 1)
    if slices is not None and size == "test":
        span = (spec.shape[2] - 1) * spec.slice_spacing_mm
        nz = int(round(span / slices)) + 1
        changes.update(slice_spacing_mm=slices, slice_thickness_mm=slices,
                       shape=(spec.shape[0], spec.shape[1], nz))
    return dataclasses.replace(spec, **changes)


def write_dicom_series(phantom: Phantom, out_dir: Path, *, series_instance_uid: str | None = None,
                       study_instance_uid: str | None = None) -> list[Path]:
    """Write ``phantom.ct`` as a CT Image Storage series; see :mod:`spine_idc.phantom_dicom`."""
    from .phantom_dicom import write_dicom_series as write

    return write(phantom, out_dir, series_instance_uid=series_instance_uid,
                 study_instance_uid=study_instance_uid)


def write_phantom(seed: int, out_dir: Path, *, size: str = "test", levels=None) -> tuple[list[Path], Path]:
    """Generate phantom ``seed`` and write ``out_dir/dicom/*.dcm`` and ``out_dir/labels.nii.gz``.

    ``levels`` as for :func:`spec_for_seed`.

    Returns
    -------
    tuple
        The DICOM files (in slice order ``k``) and the path of the ground-truth label map.
    """
    phantom = make_phantom(spec_for_seed(seed, size=size, levels=levels))
    out_dir = Path(out_dir)
    files = write_dicom_series(phantom, out_dir / "dicom")
    labels_path = out_dir / "labels.nii.gz"
    write_nifti(phantom.labels, labels_path)
    log.info("phantom %d: %s, %d files", seed, ",".join(phantom.spec.levels), len(files))
    return files, labels_path
