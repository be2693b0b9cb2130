"""Phantom specifications drawn from a seed (:func:`spec_for_seed`), and the hard scenarios
that reproduce what real CTs showed (:data:`HARD_SCENARIOS`, :func:`hard_spec`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .anatomy import _Model, _build_model
from .spec import NAMES, ORIENTATIONS, PhantomSpec

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
    # a view from C1 shows the base of the skull above it (a cervical spine or head-neck CT)
    hi = hi0 + (f[3] * above if i0 > 0 else 16 + 20 * f[3])
    if i1 == 24:
        s5 = m.sacrum[4]
        return float(s5.world((0, 0, -s5.p["h"] / 2))[2]) - 30 * f[2], hi
    return lo1 - f[2] * m.vert[i1].p["disc"], hi


#: How far (mm) above C1's top a view may reach: the base of the skull, no more (the phantom
#: has no face or vault).
SKULL_VIEW_MM = 30.0


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
    zc = min((hi + lo) / 2, m.core("C1")[1] + SKULL_VIEW_MM - half)
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
    # a cervical spine CT from the skull base: C1 without a body, the dens of C2, no ribs
    "cervical": (("C1", "C7"), (), None, None),
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
