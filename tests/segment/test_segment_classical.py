"""The classical segmenter on synthetic phantoms with known labels, and its interface.

Phantoms (``spine_idc.phantom``, "test" size) cover curved spines, partial views cut through
vertebrae, thoracic levels with ribs, lumbar spines with a sacrum, and all four patient
positions.  For every phantom whose view shows an anchor (sacrum, lowest or highest
rib-bearing vertebra with a rib-free neighbour), every level in view must be found with its
right label.  The hard scenarios (:data:`spine_idc.phantom.HARD_SCENARIOS`: 3 mm faint
abdomen, thin thoracic discs, a cropped CT angiography, side crops, metal, transitional
anatomy) must find their levels and name each right or withhold it -- never wrong.
Naming itself is tested on its own, from what the ribs and the sacrum show.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spine_idc import coding
from spine_idc.pipeline.cohort import QC_PASS_CONFIDENCE
from spine_idc.segment.classical.naming import TRANSITIONAL_CONFIDENCE, TYPICAL_LEVEL_MM
from spine_idc.errors import ConfigError, SegmentationError
from spine_idc.phantom import HARD_SCENARIOS, hard_spec, make_phantom, spec_for_seed
from spine_idc.segment import (
    QCRecord,
    SegmentationResult,
    available_backends,
    get_backend,
)
from spine_idc.segment.base import FLAG_FOV_BORDER, FLAG_UNIDENTIFIED
from spine_idc.volume import LPS_TO_RAS, Volume

from support.spine_scores import score

#: Mean per-level Dice over the levels in view, on the easy phantoms: 0.898-0.973 since the
#: masks are trimmed to the half-maximum edge (0.845-0.952 before, when they took the blurred
#: skirt of the cortex too); the smallest, cervical bodies (seed 28) lose most at the edge.
MIN_MEAN_DICE = 0.88

#: seed -> what it covers (spec_for_seed(seed, size="test"); see the table in the module doc).
ANCHORED_SEEDS = {
    0: "T10-L2, feet first supine, scoliosis, both ends cut by the view, lowest rib = T12",
    3: "T8-L3, head first supine, strong curvature, osteoporotic marrow (110 HU)",
    9: "T11-L5, head first prone, lordosis, lowest rib = T12",
    4: "L1-sacrum, feet first prone, strongest lordosis, 3 mm thick slices, sacrum anchor",
    23: "L1-sacrum, feet first supine, scoliosis, sacrum anchor",
    28: "C3-T4, head first prone, cervical lordosis, highest rib = T1",
    2: "T1-sacrum, the whole thoracolumbar spine with ribs, 3 mm slices, two anchors",
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def per_level_dice(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice of each level present in ``truth`` against the same label value in ``pred``."""
    out = {}
    for value in np.unique(truth[truth > 0]):
        out[coding.level_for_value(int(value)).name] = dice(truth == value, pred == value)
    return out


@pytest.fixture(scope="module")
def backend():
    return get_backend("classical")


@pytest.mark.parametrize("seed", list(ANCHORED_SEEDS), ids=lambda s: f"seed{s}")
def test_phantom_levels_and_dice(seed, backend, record_property):
    phantom = make_phantom(spec_for_seed(seed, size="test"))
    result = backend.segment(phantom.ct, series_key=f"phantom-{seed}")
    assert isinstance(result, SegmentationResult)
    # Labels live on the CT's own grid.
    assert result.labels.array.shape == phantom.ct.array.shape
    assert np.allclose(result.labels.affine, phantom.ct.affine)
    assert result.labels.array.dtype in (np.uint8, np.uint16)
    qc = result.qc
    expected = list(phantom.spec.levels)
    assert qc.levels == expected, f"seed {seed}: found {qc.levels}, expected {expected}"
    assert all(FLAG_UNIDENTIFIED not in v.flags for v in qc.vertebrae)
    assert any(a.used for a in qc.anchors)
    scores = per_level_dice(phantom.labels.array, result.labels.array)
    mean = float(np.mean(list(scores.values())))
    table = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    print(f"\nseed {seed} ({ANCHORED_SEEDS[seed]}): mean Dice {mean:.3f} [{table}]")
    record_property("mean_dice", round(mean, 4))
    record_property("per_level_dice", json.dumps({k: round(v, 4) for k, v in scores.items()}))
    assert mean >= MIN_MEAN_DICE, f"seed {seed}: mean Dice {mean:.3f} [{table}]"
    # Bodies are part of their vertebra, with the same value.
    b, lab = result.bodies.array, result.labels.array
    assert np.all(lab[b > 0] == b[b > 0])
    for v in qc.vertebrae:
        assert v.body_voxels > 0, f"{v.name} has no body"
        axis = np.array(v.axis_lps)
        assert abs(np.linalg.norm(axis) - 1.0) < 1e-3
        assert axis[2] > 0.5, "the anatomical axis points cranially (LPS +z)"


def test_no_anchor_leaves_vertebrae_unidentified(backend):
    """T4-T7: ribs on every level and neither end of the thorax in view: no guessing."""
    phantom = make_phantom(spec_for_seed(1, size="test"))
    assert phantom.spec.levels == ("T4", "T5", "T6", "T7")
    result = backend.segment(phantom.ct, series_key="phantom-1")
    qc = result.qc
    values = sorted(int(v) for v in np.unique(result.labels.array) if v)
    assert [v for v in values if coding.is_unidentified_vertebra(v)] == [
        coding.UNIDENTIFIED_BASE + i for i in range(4)]
    # Between unnamed vertebrae the discs are unnamed too; the canal is the canal.
    assert [v for v in values if not coding.is_unidentified_vertebra(v)] == [
        coding.SPINAL_CANAL_VALUE] + [coding.DISC_UNIDENTIFIED_BASE + i for i in range(3)]
    assert all(FLAG_UNIDENTIFIED in v.flags for v in qc.vertebrae)
    assert not any(a.used for a in qc.anchors)
    assert qc.confidence < 0.5
    assert any("unidentified" in w for w in qc.warnings)
    # The unnamed vertebrae are still the right pieces of bone, in cranio-caudal order.
    truth = phantom.labels.array
    for i, name in enumerate(phantom.spec.levels):
        score = dice(truth == coding.LEVEL_BY_NAME[name].value,
                     result.labels.array == coding.UNIDENTIFIED_BASE + i)
        assert score >= 0.75, f"{name} vs vertebra{i + 1}: Dice {score:.3f}"


def _ellipse_volume(inside_hu: float, shell_hu: float | None = None) -> Volume:
    """An elliptical cylinder of soft tissue (optionally inside a bony shell) in air."""
    shape = (160, 140, 60)
    x, y = np.meshgrid(np.arange(shape[0]) - 80.0, np.arange(shape[1]) - 70.0, indexing="ij")
    r = (x / 70.0) ** 2 + (y / 55.0) ** 2
    arr = np.full(shape, -1000, np.int16)
    arr[r <= 1.0] = inside_hu
    if shell_hu is not None:
        arr[(r <= 1.0) & (r > 0.85)] = shell_hu
    rng = np.random.default_rng(0)
    arr = (arr + rng.normal(0, 10, shape)).astype(np.int16)
    aff = np.diag([1.5, 1.5, 2.5, 1.0])
    return Volume(arr, LPS_TO_RAS @ aff)


@pytest.mark.parametrize(
    "volume",
    [
        pytest.param(_ellipse_volume(40.0), id="soft-tissue-ellipse"),
        pytest.param(_ellipse_volume(30.0, shell_hu=900.0), id="skull-like-shell"),
        pytest.param(Volume(np.full((40, 40, 20), -1000, np.int16), np.eye(4)), id="air"),
    ],
)
def test_no_spine_raises(volume, backend):
    with pytest.raises(SegmentationError) as err:
        backend.segment(volume, series_key="no-spine-case")
    assert err.value.reason == "no-spine"
    assert err.value.series == "no-spine-case"


def test_grid_orientation_does_not_matter(backend):
    """The same CT stored with permuted and flipped axes gives the same labels."""
    phantom = make_phantom(spec_for_seed(16, size="test"))  # L2-L3, small and quick
    ct = phantom.ct
    ref = backend.segment(ct, series_key="a").labels.array
    # Reverse the first axis and swap the first two: the affine follows, the patient does not.
    arr = ct.array[::-1].transpose(1, 0, 2)
    aff = ct.affine.copy()
    n0 = ct.array.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, n0 - 1
    perm = np.eye(4)[:, [1, 0, 2, 3]]
    other = Volume(np.ascontiguousarray(arr), aff @ flip @ perm)
    got = backend.segment(other, series_key="b").labels.array
    back = got.transpose(1, 0, 2)[::-1]
    assert back.shape == ref.shape
    assert np.mean(back[ref > 0] == ref[ref > 0]) > 0.99


def test_qc_record_serialises(backend):
    phantom = make_phantom(spec_for_seed(16, size="test"))
    qc = backend.segment(phantom.ct, series_key="phantom-16").qc
    data = json.loads(qc.to_json())
    assert data["series_key"] == "phantom-16"
    assert data["backend"] == "classical"
    assert set(data["axis_lps"]) == {str(v.label) for v in qc.vertebrae}
    assert set(data["flags"]) == {str(v.label) for v in qc.vertebrae + qc.structures}
    back = QCRecord.from_dict(data)
    assert back.levels == qc.levels
    assert back.vertebrae == qc.vertebrae
    # Both vertebrae of this partial view are cut by the ends of the view.
    assert all(FLAG_FOV_BORDER in v.flags for v in qc.vertebrae)


def test_registry():
    assert "classical" in available_backends()
    be = get_backend("classical", spacing_mm=1.0)
    assert be.name == "classical" and be.version
    with pytest.raises(ConfigError, match="classical"):
        get_backend("no-such-backend")
    with pytest.raises(ConfigError, match="spacing_mm"):
        get_backend("classical", no_such_option=1)


# --- hard phantoms ------------------------------------------------------------------------

#: What each hard scenario must still get right, per seed: at least this fraction of its
#: visible levels found as segments of their own, this union Dice and this mean per-level
#: Dice (seeds 1-3 give 0.85-0.95, mean 0.90 with the anchored phantoms; ``bench/
#: calibration.py`` prints them).  Names: right or withheld, never wrong, everywhere.
HARD_MIN_FOUND = 0.85
HARD_MIN_UNION_DICE = 0.82
HARD_MIN_MEAN_DICE = 0.84
HARD_SEEDS = (1, 2)


@pytest.mark.parametrize("seed", HARD_SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("scenario", list(HARD_SCENARIOS))
def test_hard_phantom_names_right_or_withheld(scenario, seed, backend):
    phantom = make_phantom(hard_spec(scenario, seed))
    result = backend.segment(phantom.ct, series_key=f"{scenario}-{seed}")
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(phantom.labels.array, result.labels.array, names)
    conf = {v.name: round(v.confidence, 2) for v in result.qc.vertebrae}
    print(f"\n{scenario} seed {seed}: {s.line()}; confidence {conf}")
    assert not s.wrong, f"{scenario} seed {seed}: wrong names {s.wrong}"
    assert len(s.found) >= HARD_MIN_FOUND * len(s.visible), s.line()
    assert s.union_dice >= HARD_MIN_UNION_DICE, s.line()
    assert s.mean_dice >= HARD_MIN_MEAN_DICE, s.line()
    # A name withheld is flagged and says why; a name given is sure enough to pass QC.
    for v in result.qc.vertebrae:
        if v.name.startswith("vertebra"):
            assert FLAG_UNIDENTIFIED in v.flags
    if any(n.startswith("vertebra") for n in names.values()):
        assert result.qc.warnings


# --- discs and canal -----------------------------------------------------------------------

#: Scenarios whose discs and canal are checked against the phantom's tissue map: an easy
#: lumbar spine, thin thoracic discs on 2 mm slices, and a faint 3 mm abdomen (marrow as dark
#: as the discs; each endplate a broad band of its own).
DISC_CASES = [("easy", 9), ("thorax-thin-discs", 2), ("abdomen-3mm-faint", 1)]


@pytest.mark.parametrize("scenario, seed", DISC_CASES, ids=lambda x: str(x))
def test_discs_and_canal_on_phantoms(scenario, seed, backend):
    """One disc between each pair of neighbouring vertebrae, on disc tissue, named by its two
    vertebrae when both are named; the canal on CSF and cord (with the epidural fat)."""
    from spine_idc.phantom import Tissue

    spec = spec_for_seed(seed) if scenario == "easy" else hard_spec(scenario, seed)
    phantom = make_phantom(spec)
    result = backend.segment(phantom.ct, series_key=f"{scenario}-{seed}")
    lab, tis = result.labels.array, phantom.tissues.array
    qc = result.qc
    discs = [s for s in qc.structures if s.name != "spinal_canal"]
    names = [v.name for v in qc.vertebrae]
    # one disc per pair of neighbours, in order, each naming the pair it joins
    assert [d.between for d in discs] == [[a, b] for a, b in zip(names[:-1], names[1:])]
    for d in discs:
        a, b = d.between
        if a.startswith("vertebra") or b.startswith("vertebra"):
            assert d.name.startswith("disc") and FLAG_UNIDENTIFIED in d.flags
        else:
            assert d.name == f"{a}/{'S1' if b == 'sacrum' else b} disc"
        on = tis[lab == d.label]
        precision = float(np.isin(on, [Tissue.DISC]).mean())
        assert precision >= 0.5, f"{d.name}: {precision:.2f} of it on disc tissue"
    true_disc = tis == Tissue.DISC
    ours = np.isin(lab, [d.label for d in discs])
    score = dice(true_disc, ours)
    # The canal, over the stretch our vertebrae cover.
    canal = lab == coding.SPINAL_CANAL_VALUE
    zs = np.flatnonzero(np.isin(lab, [v.label for v in qc.vertebrae]).any(axis=(0, 1)))
    contents = np.isin(tis, [Tissue.CSF, Tissue.CORD])
    contents[:, :, : zs[0]] = contents[:, :, zs[-1] + 1:] = False
    recall = (contents & canal).sum() / contents.sum()
    precision = np.isin(tis[canal], [Tissue.CSF, Tissue.CORD, Tissue.FAT]).mean()
    print(f"\n{scenario} seed {seed}: {len(discs)} discs, Dice {score:.3f}; canal recall "
          f"{recall:.2f} precision {precision:.2f}")
    assert score >= 0.6
    assert recall >= 0.6 and precision >= 0.8


# --- naming from what the ribs and the sacrum show ------------------------------------------

def _sides(code: str):
    from spine_idc.segment.classical.ribs import RibSides, RibState

    state = {"R": RibState.RIB, "-": RibState.NONE, "?": RibState.UNKNOWN}
    return RibSides(state[code[0]], state[code[1]], 60.0 if code[0] == "R" else 0.0,
                    60.0 if code[1] == "R" else 0.0)


def _verified_sacrum(index: int = 0):
    from spine_idc.segment.classical.sacrum import SacrumEvidence

    return SacrumEvidence(index=index, alae_mm=(20.0, 20.0), ilium=(True, True), verified=True,
                          reason="sacrum: alae and both sacroiliac joints in view")


C7_T13 = ["--"] + ["RR"] * 13
NAMING_CASES = {
    # id: (ribs cranio-caudally as left/right codes, sacrum, expected names or None)
    "sacrum": (["--"] * 5 + ["--"], True, ["L1", "L2", "L3", "L4", "L5", "sacrum"]),
    "sacrum-and-T12": (["RR"] + ["--"] * 5 + ["--"], True,
                       ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]),
    "L6": (["RR"] + ["--"] * 6 + ["--"], True,
           ["T12", "L1", "L2", "L3", "L4", "L5", "L6", "sacrum"]),
    "sacrum-vs-4-lumbar": (["RR"] + ["--"] * 4 + ["--"], True, None),
    "lowest-rib": (["RR", "RR", "RR", "--", "--"], False, ["T10", "T11", "T12", "L1", "L2"]),
    "highest-rib": (["--", "RR", "RR", "RR", "RR"], False, ["C7", "T1", "T2", "T3", "T4"]),
    "T13": (C7_T13 + ["--"] * 4 + ["--"], True,
            ["C7"] + [f"T{i}" for i in range(1, 14)] + ["L1", "L2", "L3", "L4", "sacrum"]),
    "11-ribs": (["--"] + ["RR"] * 11 + ["--"] * 2, False, None),
    "one-sided-lowest-rib": (["RR", "RR", "R-", "--", "--"], False, None),
    "rib-gap": (["RR", "RR", "--", "RR", "--", "--"], False, None),
    "unknown-below": (["RR", "RR", "??"], False, None),
    "ribs-everywhere": (["RR"] * 4, False, None),
    "no-ribs-no-sacrum": (["--"] * 3, False, None),
    # C1 on top of C2 (its dens with C1's arch in front, :mod:`.dens`): named from the dens
    "dens": (["--"] * 6, False, ["C1", "C2", "C3", "C4", "C5", "C6"]),
    "dens-and-T1": (["--"] * 7 + ["RR"] * 4, False,
                    ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4"]),
    # the first rib one level too high for the dens' count: a cervical rib, or a missed
    # body -- the image cannot tell which, so nothing is named
    "dens-vs-T1": (["--"] * 6 + ["RR"] * 4, False, None),
    "dens-with-rib": (["--", "--", "--", "RR", "--"], False, None),
}
DENS_CASES = {"dens", "dens-and-T1", "dens-vs-T1", "dens-with-rib"}


@pytest.mark.parametrize("case", list(NAMING_CASES))
def test_naming_from_anchors(case):
    from spine_idc.segment.classical.naming import name_vertebrae

    codes, sacrum, expected = NAMING_CASES[case]
    n = len(codes)
    ribs = [_sides(c) for c in reversed(codes)]  # internal order: caudal to cranial
    level_mm = [None] * n
    if case in ("L6", "T13"):  # a transitional count is named only when its levels are whole
        level_mm = [TYPICAL_LEVEL_MM.get(nm) for nm in reversed(expected)]
    naming = name_vertebrae(ribs, _verified_sacrum() if sacrum else None, sacrum, [True] * n,
                            level_mm, atlas=case in DENS_CASES)
    names = [coding.level_for_value(v).name for v in reversed(naming.values)]
    if expected is None:
        assert not naming.identified, names
        assert names == [f"vertebra{i + 1}" for i in range(n)]
        assert not any(a.used for a in naming.anchors)
        assert all(c <= 0.3 for c in naming.confidence)
        assert naming.warnings
    else:
        assert naming.identified and names == expected
        assert all(0.3 < c <= 1.0 for c in naming.confidence)
    if case in ("L6", "T13"):
        assert naming.transitional == case
        # named and flagged, but not sure enough to pass QC (see TRANSITIONAL_CONFIDENCE)
        assert max(naming.confidence) <= TRANSITIONAL_CONFIDENCE < QC_PASS_CONFIDENCE


@pytest.mark.parametrize("case", ["L6", "T13"])
def test_transitional_count_with_a_split_body_is_not_named(case):
    """One false disc splits a body in two and gives the same count as a transitional spine
    (seen under metal streaks: a split L2 named everything below it one level too low, "L6"
    included, at 0.92).  A count whose levels are not all whole withholds the names."""
    from spine_idc.segment.classical.naming import name_vertebrae

    codes, _, expected = NAMING_CASES[case]
    n = len(codes)
    ribs = [_sides(c) for c in reversed(codes)]
    level_mm = [TYPICAL_LEVEL_MM.get(nm) for nm in reversed(expected)]
    # the level counted as L3 (or T8) is two pieces of one body: 55 % and 45 % of it
    k = list(reversed(expected)).index("L3" if case == "L6" else "T8")
    level_mm[k], level_mm[k + 1] = 0.55 * level_mm[k], 0.45 * level_mm[k]
    naming = name_vertebrae(ribs, _verified_sacrum(), True, [True] * n, level_mm)
    assert not naming.identified
    assert any("split by a false disc" in w for w in naming.warnings), naming.warnings
    # and without lengths the count cannot be checked: withheld too
    naming = name_vertebrae(ribs, _verified_sacrum(), True, [True] * n, [None] * n)
    assert not naming.identified


def test_a_count_over_a_missed_disc_is_not_named():
    """The dens names C2, but a disc missed below it (3 mm slices through a 4 mm cervical
    disc) makes the next segment C3 and C4 together: every name below would be one level too
    high, and every cervical level is about as long as the next, so the scale alone cannot
    tell.  No level is 1.55 times its typical length: the names are withheld."""
    from spine_idc.segment.classical.naming import name_vertebrae

    n = 6  # C1, C2, "C3" (C3 + C4), "C4", "C5", "C6" cranio-caudally
    ribs = [_sides("--")] * n
    level_mm = [None, 17.0, 18.0, 29.0, None, None]  # internal order: caudal to cranial
    naming = name_vertebrae(ribs, None, False, [True] * n, level_mm, atlas=True)
    assert not naming.identified
    assert any("missed or a false disc" in w for w in naming.warnings), naming.warnings
    level_mm[3] = 17.0
    assert name_vertebrae(ribs, None, False, [True] * n, level_mm, atlas=True).identified


def _midline(parts):
    """A midline HU profile from the canal's centre forwards, 1 mm a step, from (HU, mm)
    pieces, lightly blurred as a scanner would."""
    from scipy import ndimage

    prof = np.concatenate([np.full(int(mm), float(hu)) for hu, mm in parts])
    return ndimage.gaussian_filter1d(prof, 0.7)


#: canal (8 mm of CSF), then what lies in front of it, then soft tissue
_CANAL, _SOFT = (10, 8), (45, 20)
ARCH_PROFILES = {
    # dens: cortex, marrow, cortex; a 2 mm atlanto-dental gap; C1's anterior arch
    "dens-and-arch": ([_CANAL, (600, 2), (220, 6), (600, 2), (40, 2), (650, 5), _SOFT], True),
    "faint-dens-and-arch": ([_CANAL, (380, 2), (150, 6), (380, 2), (60, 2), (400, 4), _SOFT],
                            True),
    # a sharp scan: the 3 mm interval reads as soft tissue throughout
    "dens-wide-gap-and-arch": ([_CANAL, (700, 2), (250, 6), (700, 2), (40, 3), (800, 5), _SOFT],
                               True),
    # a cervical body: dark marrow between its cortices is a wide dip, nothing in front
    "body": ([_CANAL, (600, 2), (200, 12), (600, 2), _SOFT], False),
    # a body with an anterior osteophyte 6 mm in front of it: the gap is too wide
    "body-and-osteophyte": ([_CANAL, (600, 2), (200, 12), (600, 2), (40, 6), (600, 4), _SOFT],
                            False),
    # the dens alone (no arch in front of it: the plane is above or below C1's arch)
    "dens-alone": ([_CANAL, (600, 2), (220, 6), (600, 2), _SOFT], False),
    # two tables of a skull plate with the diploe between, with no canal before them
    "no-bone-at-the-canal": ([_CANAL, (40, 10), (700, 2), (300, 2), (700, 2), _SOFT], False),
}


@pytest.mark.parametrize("case", list(ARCH_PROFILES))
def test_anterior_arch_of_c1_in_front_of_the_dens(case):
    from spine_idc.segment.classical.dens import MIN_BONE_HU, arch_in_front

    parts, expected = ARCH_PROFILES[case]
    found = arch_in_front(_midline(parts), 8, MIN_BONE_HU, 1.0)
    assert (found is not None) == expected, found
    if expected:
        back, gap, front = found
        wide = case == "dens-wide-gap-and-arch"
        assert back in (7, 8, 9) and gap in ((18, 19, 20) if wide else (18, 19))
        assert front in ((26, 27, 28) if wide else (23, 24, 25, 26))


def test_a_dens_is_narrow_a_body_is_not():
    """Side to side through its centre the dens is about 10 mm of bone between darker gaps
    (C1's lateral masses beyond them); a cervical body, whose anterior osteophyte can mimic
    the arch in front of it, is 15-20 mm.  Dark marrow inside either does not end the walk."""
    from spine_idc.segment.classical.dens import MAX_DENS_WIDTH_MM, _width

    mass, gap, soft = (650, 10), (60, 3), (45, 15)
    dens = _midline([soft, mass, gap, (600, 2), (200, 6), (600, 2), gap, mass, soft])
    body = _midline([soft, (600, 2), (220, 14), (600, 2), soft])
    assert 9.0 <= _width(dens, 15 + 10 + 3 + 5, 1.0) <= 12.0 < MAX_DENS_WIDTH_MM
    assert _width(body, 15 + 9, 1.0) > MAX_DENS_WIDTH_MM


def test_cervical_spine_named_from_the_dens(backend):
    """A cervical spine CT from the skull's base (``cervical`` seed 3): no ribs, no sacrum.
    C1 has no body and stands on C2 without a disc; the dens of C2 rises into C1's ring.  C2
    is named from the dens with C1's anterior arch in front of it, C1 is the ring around the
    dens, the skull above is no vertebra's, and the rest are counted down from C2."""
    phantom = make_phantom(hard_spec("cervical", 3))
    result = backend.segment(phantom.ct, series_key="cervical-3")
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(phantom.labels.array, result.labels.array, names)
    print(f"\ncervical seed 3: {s.line()}")
    assert [v.name for v in result.qc.vertebrae][:3] == ["C1", "C2", "C3"]
    assert not s.wrong and not s.withheld
    assert [a.kind for a in result.qc.anchors] == ["dens"]
    assert min(s.level_dice[n] for n in ("C1", "C2")) >= 0.7, s.line()
    c1 = next(v for v in result.qc.vertebrae if v.name == "C1")
    assert not c1.flags and c1.confidence >= QC_PASS_CONFIDENCE
    # the skull's base is not C1: none of our vertebrae lies on bone the phantom did not label
    from spine_idc.phantom import Tissue

    ours = np.isin(result.labels.array, list(names))
    assert (ours & (phantom.tissues.array == Tissue.OTHER_BONE)).sum() < 0.02 * ours.sum()


def test_pedicle_screws_neither_split_a_body_nor_pass_for_ribs(backend):
    """Pedicle screws in one lumbar level (``metal`` seed 2).  Their tips in the body once
    raised the disc profile's mean by 400 HU over a few planes, so the spine's rhythm was read
    at half a level, a false disc split L2 and the L2/L3 disc was put on an endplate; their
    streaks, slender and bright, then passed for ribs on L2.  Metal is left out of the
    profile, and ribs are not judged beside it: every level is found and named."""
    phantom = make_phantom(hard_spec("metal", 2))
    result = backend.segment(phantom.ct, series_key="metal-2")
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(phantom.labels.array, result.labels.array, names)
    assert s.found == s.visible, s.line()
    assert s.right == s.visible, s.line()
    assert not s.spanning, s.line()


def test_faint_spine_is_found_on_a_second_look(backend):
    """``abdomen-3mm-faint`` seed 6: marrow at 68 HU and a cortex blurred to 100-150 HU on
    3 mm slices.  A pocket of fat beside the ilium looks more like a canal than the canal, and
    the first canal found has no bodies in front of it; the series used to fail with
    ``no-spine``.  The canal is looked for once more, away from the first one, with fainter
    walls: the lumbar spine is found, and the names, with no anchor verified, withheld."""
    phantom = make_phantom(hard_spec("abdomen-3mm-faint", 6))
    result = backend.segment(phantom.ct, series_key="faint-6")
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(phantom.labels.array, result.labels.array, names)
    assert not s.wrong, s.line()
    assert {"L1", "L2", "L3", "L4", "L5"} <= set(s.found), s.line()
    assert any("looking again for fainter walls" in w for w in result.qc.warnings)


def test_trim_takes_the_blurred_skirt_not_the_bone_or_its_holes():
    """A bright block blurred like a scan, labelled one voxel too wide all round (what a
    faint-bone threshold takes): the in-plane trim on the CT's grid takes that skirt, keeps
    the block, keeps the walls of a dark hole enclosed in it, and leaves a disc's label
    (another label touching it) alone."""
    from scipy import ndimage

    from spine_idc.segment.classical.levels import trim_native

    hu = np.full((40, 40, 6), 40.0, np.float32)
    hu[10:30, 10:30, :] = 700.0
    hu[18:22, 18:22, :] = 40.0  # a dark hole enclosed in the bone
    hu = ndimage.gaussian_filter(hu, (0.8, 0.8, 0.0))
    ct = Volume(hu.astype(np.int16), np.eye(4))
    labels = np.zeros(hu.shape, np.uint8)
    labels[9:31, 9:31, :] = 20  # the block and a one-voxel skirt
    labels[19:21, 19:21, :] = 0  # the hole, its blurred rim labelled as bone
    labels[9:31, 31, :] = 160  # a disc beside one face
    bodies = labels.copy()
    trim_native(labels, bodies, ct, [20])
    block = np.zeros(hu.shape, bool)
    block[10:30, 10:30, :] = True
    block[19:21, 19:21, :] = False
    # nothing outside the block, but where the skirt touches the disc: between two labels
    # there is no outside to trim from
    beside_disc = np.zeros(hu.shape, bool)
    beside_disc[9:31, 30, :] = True
    assert not np.any((labels == 20) & ~block & ~beside_disc)
    assert np.all(labels[10:30, 30, :] == 20)
    assert (labels == 20).sum() >= 0.97 * block.sum()  # the block kept
    # the enclosed hole's rim is inside the bone: not trimmed, however dark
    assert np.all(labels[18:22, 18:22, :][~np.pad(np.ones((2, 2), bool), 1)[:, :, None]
                                         .repeat(6, 2)] == 20)
    assert np.all(labels[9:31, 31, :] == 160)  # the disc untouched
    assert np.array_equal(bodies == 20, labels == 20)


def test_end_of_rib_cage_cut_by_the_view():
    """A rib-free vertebra cut by the end of the view verifies the end of the rib cage only
    when the view shows as much of its body as its rib-bearing neighbour's whole body (the
    top of a chest CT that cuts C7 above its upper endplate); a shorter piece (perhaps a T1
    whose first rib is out of view) does not, and the names are withheld."""
    from spine_idc.segment.classical.naming import name_vertebrae

    codes = ["--", "RR", "RR", "RR", "RR"]  # cranio-caudally
    ribs = [_sides(c) for c in reversed(codes)]
    complete = [True, True, True, True, False]  # internal order: the top one is cut
    seen = [18.0, 17.5, 17.0, 16.5, 17.0]
    whole = name_vertebrae(ribs, None, False, complete, [None] * 5, seen)
    names = [coding.level_for_value(v).name for v in reversed(whole.values)]
    assert whole.identified and names == ["C7", "T1", "T2", "T3", "T4"]
    assert whole.confidence[-1] < whole.confidence[-2]  # the cut one is less sure
    seen[-1] = 12.0  # only part of the top vertebra's body is in view
    piece = name_vertebrae(ribs, None, False, complete, [None] * 5, seen)
    assert not piece.identified
    assert any("no verified anchor" in w for w in piece.warnings)
    # Without body lengths nothing changes: a cut end vertebra verifies nothing.
    assert not name_vertebrae(ribs, None, False, complete, [None] * 5).identified


def test_naming_checks_level_lengths():
    """Names whose levels do not fit one scale (a 'level' twice its neighbours' length: a
    missed disc) are withheld."""
    from spine_idc.segment.classical.naming import TYPICAL_LEVEL_MM, name_vertebrae

    codes = ["RR"] + ["--"] * 5 + ["--"]
    names = ["T12", "L1", "L2", "L3", "L4", "L5"]
    ribs = [_sides(c) for c in reversed(codes)]
    lengths = [None] + [TYPICAL_LEVEL_MM[nm] for nm in reversed(names)]
    ok = name_vertebrae(ribs, _verified_sacrum(), True, [True] * 7, lengths)
    assert ok.identified
    lengths[3] *= 2.0  # L3 as long as two levels
    bad = name_vertebrae(ribs, _verified_sacrum(), True, [True] * 7, lengths)
    assert not bad.identified
    assert any("times as long" in w for w in bad.warnings)


def test_confidence_ranks_two_anchors_above_one():
    from spine_idc.segment.classical.naming import name_vertebrae

    n = 7
    both = name_vertebrae([_sides(c) for c in reversed(["RR"] + ["--"] * 6)],
                          _verified_sacrum(), True, [True] * n, [None] * n)
    one = name_vertebrae([_sides(c) for c in reversed(["--"] * 7)], _verified_sacrum(), True,
                         [True] * n, [None] * n)
    assert min(both.confidence) > max(one.confidence[1:])


# --- a disc cut by the end of the view --------------------------------------------------------

def _profile(*runs: tuple[int, float]) -> np.ndarray:
    """A core HU profile along the spine (1 mm planes) from (length, HU) runs."""
    return np.concatenate([np.full(n, hu, float) for n, hu in runs])


@pytest.mark.parametrize("case, moved", [
    # The view starts inside a disc (soft tissue, 115 HU) below an endplate band (290 HU) and
    # the body's marrow (150 HU): the disc chosen on the endplate moves onto the cut disc.
    ("cut-disc", True),
    # The view starts in the marrow of the vertebra below (as bright as the marrow above).
    ("marrow-beyond", False),
    # A thin disc that shows as a notch between two endplates stays where it is.
    ("notch", False),
])
def test_edge_disc_moves_onto_the_disc_the_view_cuts(case, moved):
    from spine_idc.segment.classical.disc_extent import bodies_between, edge_discs
    from spine_idc.segment.classical.discs import Disc

    body = [(14, 150.0), (4, 280.0), (4, 110.0), (4, 280.0), (14, 150.0)]
    if case == "cut-disc":
        prof = _profile((3, 115.0), (4, 290.0), *body)
        first = Disc(centre=5.0, half=1.5, evidence=1.0)
    elif case == "marrow-beyond":
        prof = _profile((3, 150.0), (4, 290.0), *body)
        first = Disc(centre=5.0, half=1.5, evidence=1.0)
    else:
        prof = _profile((2, 150.0), (2, 280.0), (2, 170.0), (2, 280.0), *body)
        first = Disc(centre=4.5, half=1.0, evidence=1.0)
    top = Disc(centre=len(prof) - 20.5, half=2.0, evidence=1.0)  # the 110 HU disc of `body`
    out = edge_discs(prof, [first, top], 1.0)
    assert out[1] == top
    if moved:
        assert out[0].centre <= 1.5 and out[0].centre + out[0].half <= 3.5, out[0]
        # The endplate stays with its body; no sliver of the cut vertebra is left below.
        from spine_idc.segment.classical.vertebrae import Straightened

        n = len(prof)
        st = Straightened(body_u=np.zeros(n), body_v=np.zeros(n), width=np.full(n, 30.0),
                          depth=np.full(n, 25.0), profile=prof, found=np.ones(n, bool))
        bodies = bodies_between(out, 0, n - 1, st, 1.0, bone_hu=100.0)
        assert bodies[0].start <= 4
    else:
        assert out[0] == first
