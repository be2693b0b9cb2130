"""Tests of spine_idc.coding: the label table and every code against the standard's tables.

pydicom carries PS3.16's context groups (``pydicom.sr.codedict.codes.cidNNNN``); a code we use
must appear there with the same value, scheme and meaning, except where the module documents why
not (the segmentation category, S1, the local ``99SPINEIDC`` concepts).
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from spine_idc import coding

#: VerSe's label values (``v_dict`` of VerSe's data_utilities.py).
VERSE = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 6)},
    25: "L6", 26: "Sacrum", 27: "Cocc", 28: "T13",
}
#: Rows of TotalSegmentator's totalsegmentator_snomed_mapping.csv (v2.18.0) for the structures
#: only it (not CID 7603) gives us: property type code and meaning; category 123037004.
TOTALSEGMENTATOR = {
    "S1": ("65985001", "S1 vertebra"),
    "sacrum": ("54735007", "Sacrum"),
    "spinal_cord": ("2748008", "Spinal cord"),
}


def _cid(number: int) -> set[tuple[str, str, str]]:
    # Per scheme: a keyword may name concepts of two schemes in one group (CID 8134 has
    # FMA and NEU both), which the group-level lookup refuses.
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr.codedict import Collection

    out = set()
    for scheme, keywords in cid_concepts[number].items():
        table = Collection(scheme)
        out |= {(c.value, c.scheme_designator, c.meaning)
                for c in (getattr(table, k) for k in keywords)}
    return out


def _key(code) -> tuple[str, str, str]:
    return code.value, code.scheme_designator, code.meaning


def test_vertebra_levels_are_cid_7603():
    cid7603 = _cid(7603)
    vertebrae = [lv for lv in coding.LEVELS if lv.name != "sacrum"]
    assert len(vertebrae) == 24 == len(cid7603)
    assert {_key(lv.code) for lv in vertebrae} == cid7603


@pytest.mark.parametrize("code, cids", [
    (coding.LEVEL_BY_NAME["sacrum"].code, (7151, 4)),
    (coding.LEVEL_BY_NAME["spinal_cord"].code, (7151, 4)),
    (coding.VERTEBRA_GENERIC, (7151,)),
    (coding.SPINE, (7151, 4)),
    (coding.LEVEL_BY_NAME["spinal_canal"].code, (8134,)),
    (coding.VOLUME, (7469,)),
    (coding.ATTENUATION_COEFFICIENT, (7469,)),
    (coding.VERTEBRAL_BODY_HEIGHT, (7469,)),
    (coding.MEAN, (7464,)),
    (coding.MEDIAN, (7464,)),
    (coding.UNIT_MM3, (7181,)),
    (coding.UNIT_MM, (7181,)),
    (coding.UNIT_HU, (7181,)),
    (coding.UNIT_RATIO, (7181,)),
    (coding.ANTERIOR, (2,)),
    (coding.CENTRAL, (2,)),
    (coding.POSTERIOR, (2,)),
    (coding.YES, (230,)),
    (coding.NO, (230,)),
    (coding.PROCEDURE_CT, (100,)),
    (coding.ALGORITHM_FAMILY_MORPHOLOGICAL, (7162,)),
    (coding.ALGORITHM_FAMILY_AI, (7162,)),
], ids=lambda x: x.meaning if hasattr(x, "meaning") else str(x))
def test_codes_are_in_their_context_groups(code, cids):
    for cid in cids:
        assert _key(code) in _cid(cid), f"{code} not in CID {cid}"


def test_discs_are_cid_7604():
    """Every disc named by two standard levels carries its own CID 7604 concept (also in
    CID 7151), with PS3.16's meaning; the transitional pairs and unnamed discs the generic one."""
    cid7604 = _cid(7604)
    named = [d for d in coding.DISC_TABLE if d.code != coding.DISC_GENERIC]
    assert len(named) == 23 == len(cid7604)
    assert {_key(d.code) for d in named} == cid7604 <= _cid(7151)
    assert coding.DISC_BY_NAME["T11/T12 disc"].code.value == "1537001"
    assert coding.DISC_BY_NAME["L5/S1 disc"].code.value == "715056000"
    for d in coding.DISC_TABLE:
        assert not d.is_vertebra and d.region is coding.Region.DISC
        assert d.code.meaning == d.name or d.code == coding.DISC_GENERIC
    # The generic disc is in no PS3.16 group (see coding's docstring): TotalSegmentator's code.
    assert coding.DISC_GENERIC.value not in {c[0] for c in _cid(7151)}
    assert {d.name for d in coding.DISC_TABLE if d.code == coding.DISC_GENERIC} == {
        "T12/T13 disc", "T13/L1 disc", "L5/L6 disc", "L6/S1 disc"}


def test_disc_values_and_ranges():
    values = [d.value for d in coding.DISC_TABLE]
    assert len(set(values)) == len(values)
    assert not set(values) & {lv.value for lv in coding.LABEL_TABLE}
    assert all(coding.DISC_BASE < v <= 255 for v in values)
    # 200 + the vertebra above, except where a T13 or an L6 joins the pair
    assert coding.disc_value("T11", "T12") == 218 == 200 + coding.LEVEL_BY_NAME["T11"].value
    assert coding.disc_value("L5", "sacrum") == 224
    assert coding.disc_value("T12", "L1") == 219 and coding.disc_value("T12", "T13") == 230
    assert coding.disc_value("T13", "L1") == 231 and coding.disc_value("L6", "sacrum") == 233
    assert coding.disc_value("L5", "L6") == 232
    assert coding.disc_value("T11", "L1") is None and coding.disc_value("C1", "C2") is None
    assert coding.level_for_value(224).name == "L5/S1 disc"
    # ranges: unidentified vertebrae 101-149, unidentified discs 151-199
    assert coding.level_for_value(149).name == "vertebra49"
    assert coding.level_for_value(151).name == "disc1"
    assert coding.level_for_value(151).code == coding.DISC_GENERIC
    assert coding.is_unidentified_vertebra(101) and not coding.is_unidentified_vertebra(151)
    canal = coding.level_for_value(coding.SPINAL_CANAL_VALUE)
    assert canal.name == "spinal_canal" and not canal.is_vertebra
    for bad in (150, 200, 201, 225, 240):
        with pytest.raises(KeyError):
            coding.level_for_value(bad)
    # discs sort between the vertebrae they join
    t11, t12 = coding.LEVEL_BY_NAME["T11"], coding.LEVEL_BY_NAME["T12"]
    assert t11.rank < coding.DISC_BY_NAME["T11/T12 disc"].rank < t12.rank


def test_documented_exceptions():
    # The category: IDC's and TotalSegmentator's 123037004, not CID 7150's 91723000.
    assert _key(coding.CATEGORY_ANATOMICAL_STRUCTURE) == (
        "123037004", "SCT", "Anatomical Structure")
    assert ("91723000", "SCT", "Anatomical Structure") in _cid(7150)
    # S1 is in no vertebra context group; its code is TotalSegmentator's.
    s1 = coding.LEVEL_BY_NAME["S1"].code
    assert all(s1.value not in {c[0] for c in _cid(n)} for n in (7151, 7603, 4))
    for name, (value, meaning) in TOTALSEGMENTATOR.items():
        assert _key(coding.LEVEL_BY_NAME[name].code) == (value, "SCT", meaning)
    # Local concepts: the private scheme, short values (VR SH).
    local = [coding.TRABECULAR_CORE, coding.BODY_HEIGHT_RATIO, *coding.QC_CONCEPTS.values()]
    for code in local:
        assert code.scheme_designator == coding.LOCAL_SCHEME and len(code.value) <= 16
    assert coding.LOCAL_SCHEME.startswith("99")
    assert len({c.value for c in local}) == len(local)


def test_label_values_keep_verse_meanings():
    for level in coding.LABEL_TABLE:
        if level.value in VERSE:
            assert VERSE[level.value].lower() == level.name.lower()
    values = [lv.value for lv in coding.LABEL_TABLE]
    assert len(set(values)) == len(values)
    assert len({lv.name for lv in coding.LABEL_TABLE}) == len(values)
    assert 27 not in values  # VerSe's coccyx stays free
    # VerSe's transitional levels, with VerSe's values (checked against VERSE above)
    assert coding.LEVEL_BY_NAME["L6"].value == 25 and coding.LEVEL_BY_NAME["T13"].value == 28
    assert coding.LEVEL_BY_NAME["S1"].value == coding.S1_VALUE == 29
    assert coding.LEVEL_BY_NAME["spinal_cord"].value == coding.SPINAL_CORD_VALUE == 60
    assert max(values) < coding.UNIDENTIFIED_BASE


def test_classical_levels_are_unchanged():
    names = [lv.name for lv in coding.LEVELS]
    assert names == ([f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
                     + [f"L{i}" for i in range(1, 6)] + ["sacrum"])
    assert coding.N_NAMED_LEVELS == 25
    for i, level in enumerate(coding.LEVELS):
        assert level.index == i and coding.level_for_index(i) is level
        assert level.value == (26 if level.name == "sacrum" else i + 1)
    assert coding.LEVEL_BY_NAME["S1"].index == -1
    assert coding.level_for_value(101).index == -1


def test_rows_and_order():
    s1, sacrum, l5 = (coding.LEVEL_BY_NAME[n] for n in ("S1", "sacrum", "L5"))
    cord = coding.LEVEL_BY_NAME["spinal_cord"]
    assert l5.rank < s1.rank < sacrum.rank < cord.rank
    assert s1.is_vertebra and s1.region is coding.Region.SACRAL
    assert not cord.is_vertebra and cord.region is coding.Region.NONE
    unknown = coding.level_for_value(103)
    assert unknown.name == "vertebra3" and unknown.code == coding.VERTEBRA_GENERIC
    assert unknown.is_vertebra and unknown.rank == float("inf")
    with pytest.raises(KeyError, match="not in the label table"):
        coding.level_for_value(27)


def test_display_colours_tell_neighbours_apart():
    rows = sorted(coding.LABEL_TABLE, key=lambda lv: lv.rank)
    rgb = np.array([lv.rgb for lv in rows], dtype=float)
    assert ((rgb >= 0) & (rgb <= 255)).all()
    assert len({lv.rgb for lv in rows}) == len(rows)
    assert np.linalg.norm(np.diff(rgb, axis=0), axis=1).min() > 40
