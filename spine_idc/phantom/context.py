"""The anatomy around the labelled spine, never touching it: the aorta, ribs, sternum, iliac
wings and the skull's base (unlabelled bone or soft tissue), and pedicle screws with their
streaks.
"""

from __future__ import annotations

import numpy as np

from .anatomy import (
    _EYE, ATLANTO_DENTAL_MM, LATERAL_GAP_MM, _capsule, _ellipse, _ellipsoid, _extrude, _Model, _obox,
    _rib,
)
from .canvas import _Canvas
from .spec import METAL_HU, Tissue


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


#: The skull above C1, in C1's frame: the bowl of the cranium (outer semi-axes, mm, and the
#: thickness of its bone), its lowest point this far above C1's top, and the foramen magnum
#: (about 30 x 35 mm; Wanebo and Chicoine, Neurosurgery 2001) around the canal.
SKULL_AXES = (68.0, 82.0, 50.0)
SKULL_BONE_MM = 6.0
SKULL_ABOVE_C1_MM = 5.0
FORAMEN_MAGNUM = (15.0, 17.5)


def _paint_skull(cv: _Canvas, m: _Model) -> None:
    """Head, brain, the cranium's base with the foramen magnum, and the occipital condyles on
    C1's lateral masses -- where the view reaches above C1.  Unlabelled bone (not a vertebra)."""
    c1 = m.vert[0]
    p = c1.p
    top = float(c1.world((0, 0, p["H"] / 2))[2])
    if cv.z[-1] < top:
        return
    a, b, c = SKULL_AXES
    vc = 0.7 * p["D"] / 2 + p["cd"] / 2
    cen = (0.0, vc - 30.0, p["H"] / 2 + SKULL_ABOVE_C1_MM + c)
    sl, (u, v, w) = cv.local(c1, (-a - 12, cen[1] - b - 12, p["H"] / 2 - 4),
                             (a + 12, cen[1] + b + 12, cen[2] + c + 12))
    if sl is None:
        return
    uu, vv, ww = u - cen[0], v - cen[1], w - cen[2]

    def shell(grow: float):
        return _ellipsoid(uu, vv, ww, a + grow, b + grow, c + grow)

    above = p["H"] / 2 + 2 - w  # the head starts above C1; the neck below is the trunk's
    cv.blend(sl, np.maximum(shell(8.0), above), m.hu["soft"], Tissue.SOFT)  # scalp, muscle
    cv.blend(sl, shell(-SKULL_BONE_MM), m.hu["soft"] - 10, Tissue.SOFT)  # brain
    # CSF and the cord (the medulla) on through the foramen magnum
    tube = _extrude(_ellipse(u, v - vc, p["cw"] / 2, p["cd"] / 2), np.abs(w - p["H"] / 2 - 12) - 12)
    cv.blend(sl, tube, m.hu["csf"], Tissue.CSF)
    cv.blend(sl, _extrude(_ellipse(u, v - vc, 5.0, 4.0), np.abs(w - p["H"] / 2 - 12) - 12),
             m.hu["cord"], Tissue.CORD)
    foramen = _ellipse(u, v - vc + 2.0, *FORAMEN_MAGNUM)
    bone = np.maximum(np.maximum(shell(0.0), -shell(-SKULL_BONE_MM)), -foramen)
    r = p["dens_r"] + ATLANTO_DENTAL_MM + LATERAL_GAP_MM + 5.5
    for s in (-1.0, 1.0):  # occipital condyles, on C1's lateral masses
        bone = np.minimum(bone, _obox(u, v, w, (s * r, 1.5, p["H"] / 2 + 4.5), _EYE,
                                      (5.0, 7.0, 4.5), 2.0))
    cv.merge(cv.dother, sl, bone, m.const["facet_gap"] + 0.5)


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
