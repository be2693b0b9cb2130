"""Tests of spine_idc.dicom.sr: TID 1500 content, references to the SEG, UIDs, validity."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from spine_idc import coding
from spine_idc.dicom import AlgorithmInfo, write_seg
from spine_idc.dicom import build_sr, write_sr
from spine_idc.measure import measure_vertebrae
from spine_idc.volume import Volume

from support.dicom_series import assert_valid, load_series, write_synthetic_series
from test_dicom_seg import CT3

ALGORITHM = AlgorithmInfo(version="0.1.0", parameters={"erosion_mm": "3.0"})


def _qc(group) -> dict:
    """The QC evaluations of a group (highdicom also returns the Finding Category CODE item)."""
    return {q.name: q.value for q in group.get_qualitative_evaluations()
            if q.name.scheme_designator == coding.LOCAL_SCHEME}


def _hd():
    import highdicom as hd

    return hd


@pytest.fixture
def case(tmp_path):
    """A 24-slice synthetic CT with T12 and L1 (bodies + posterior elements) and its SEG."""
    write_synthetic_series(tmp_path / "ct", n_slices=24, rows=64, columns=80,
                           pixel_spacing=(0.8, 0.6), slice_step=1.5)
    ct, info = load_series(tmp_path / "ct")
    hu = np.full(ct.array.shape, -100.0, dtype=np.float32)
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    bodies = np.zeros_like(labels)
    for value, ks in ((20, slice(1, 11)), (19, slice(13, 23))):  # L1 below T12
        # IOP (-1,0,0, 0,-1,0): j runs towards patient anterior, so low j is posterior
        labels[15:65, 30:60, ks] = value
        bodies[15:65, 30:60, ks] = value
        labels[30:50, 5:30, ks] = value  # posterior elements
        hu[15:65, 30:60, ks] = 1000.0  # cortex
        hu[17:63, 32:58, ks.start + 1 : ks.stop - 1] = 150.0 + value  # core under ~1.5 mm cortex
    ctv = Volume(hu, ct.affine)
    measurements = measure_vertebrae(ctv, Volume(labels, ct.affine), Volume(bodies, ct.affine))
    seg_path = write_seg(Volume(labels, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "affine.npy", ct.affine)
    return info, measurements, pydicom.dcmread(seg_path), tmp_path


def test_sr_content_reads_back(case):
    hd = _hd()
    info, measurements, seg, tmp_path = case
    path = write_sr(measurements, seg, info, ALGORITHM, tmp_path / "sr.dcm",
                    qc={"labels_contiguous": True, "spine_found": True})
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.StudyInstanceUID == info.study_instance_uid and sr.SeriesNumber == 902
    # evidence: the SEG and every CT instance
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, *info.sop_instance_uids}
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SPINEIDC"

    content = sr.content
    assert content.get_observer_contexts()[0].observer_type == codes.cid270.Device
    device = content.get_observer_contexts()[0].observer_identifying_attributes
    assert device.name == "spine-idc classical" and device.manufacturer_name == "spine-idc"
    procedure = content[0].ContentSequence
    assert any(i.ConceptNameCodeSequence[0].CodeValue == "121058"
               and i.ConceptCodeSequence[0].CodeValue == "25045-6" for i in procedure)

    groups = content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["T12", "L1"]  # SEG segment order
    # one group per SEG segment, each referencing its own
    assert sorted(int(g.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
                  for g in groups) == sorted(int(s.SegmentNumber) for s in seg.SegmentSequence)
    seg_by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    by_level = {m.level: m for m in measurements}
    for g in groups:
        m, segment = by_level[g.tracking_identifier], seg_by_label[g.tracking_identifier]
        assert g.tracking_uid == segment.TrackingUID
        ref = g.referenced_segment
        assert ref[0].referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref[0].referenced_sop_class_uid == seg.SOPClassUID
        assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == segment.SegmentNumber
        assert ref[1].value == info.series_instance_uid  # Source Series for Segmentation
        assert g.finding_category == coding.CATEGORY_ANATOMICAL_STRUCTURE
        assert g.finding_type == coding.VERTEBRA_GENERIC
        assert g.finding_sites[0].value == coding.LEVEL_BY_NAME[m.level].code

        (vol,) = g.get_measurements(name=coding.VOLUME)
        assert vol.value == pytest.approx(m.volume_ml * 1000) and vol.unit == coding.UNIT_MM3
        hu = {x.derivation: x for x in g.get_measurements(name=coding.ATTENUATION_COEFFICIENT)}
        assert hu[coding.MEAN].value == pytest.approx(m.trabecular_mean_hu)
        assert hu[coding.MEDIAN].value == pytest.approx(m.trabecular_median_hu)
        assert hu[coding.MEAN].unit == coding.UNIT_HU
        assert hu[coding.MEAN].method == coding.TRABECULAR_CORE
        # TID 1419: the statistic is a HAS CONCEPT MOD "Derivation" (DCM 121401) from CID 7464
        for stat, code in ((coding.MEAN, "373098007"), (coding.MEDIAN, "373099004")):
            (mod,) = [i for i in hu[stat][0].ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeValue == "121401"]
            assert mod.RelationshipType == "HAS CONCEPT MOD" and mod.ValueType == "CODE"
            assert mod.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
            assert (mod.ConceptCodeSequence[0].CodeValue,
                    mod.ConceptCodeSequence[0].CodingSchemeDesignator) == (code, "SCT")
        assert m.trabecular_mean_hu == pytest.approx(150.0 + m.label_value)  # the painted core
        heights = {x.finding_sites[0].topographical_modifier: x.value
                   for x in g.get_measurements(name=coding.VERTEBRAL_BODY_HEIGHT)}
        assert heights == pytest.approx({
            coding.ANTERIOR: m.body_height_anterior_mm,
            coding.CENTRAL: m.body_height_middle_mm,
            coding.POSTERIOR: m.body_height_posterior_mm,
        })
        (ratio,) = g.get_measurements(name=coding.BODY_HEIGHT_RATIO)
        assert ratio.value == pytest.approx(m.height_ratio) and ratio.unit == coding.UNIT_RATIO
        qc = _qc(g)
        assert qc == {coding.QC_TOUCHES_BORDER: coding.NO, coding.QC_LEVEL_IDENTIFIED: coding.YES,
                      coding.QC_TRABECULAR_CORE: coding.YES}

    (series_qc,) = content.get_image_measurement_groups()
    assert _qc(series_qc) == {
        coding.QC_CONCEPTS["labels_contiguous"]: coding.YES,
        coding.QC_CONCEPTS["spine_found"]: coding.YES,
    }
    assert_valid(path)


def test_sr_uids_are_deterministic(case):
    info, measurements, seg, _ = case
    a = build_sr(measurements, seg, info, ALGORITHM)
    b = build_sr(measurements, seg, info, ALGORITHM)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID not in (seg.SOPInstanceUID, seg.SeriesInstanceUID)
    assert a.SeriesInstanceUID != seg.SeriesInstanceUID


def test_unchanged_inputs_give_identical_bytes(case):
    """A re-run writes the same SEG and SR, byte for byte: no random Dimension Organization
    UID, no wall-clock dates (they come from the source series)."""
    import time as _time

    info, measurements, seg, tmp_path = case
    paths = []
    for run in range(2):
        if run:
            _time.sleep(1.1)  # the clock's seconds move on between the runs
        seg_ds = build_seg_again(case)
        p_seg = tmp_path / f"seg{run}.dcm"
        seg_ds.save_as(p_seg, enforce_file_format=True)
        p_sr = tmp_path / f"sr{run}.dcm"
        build_sr(measurements, pydicom.dcmread(p_seg), info, ALGORITHM).save_as(
            p_sr, enforce_file_format=True)
        paths.append((p_seg, p_sr))
    (seg0, sr0), (seg1, sr1) = paths
    assert seg0.read_bytes() == seg1.read_bytes()
    assert sr0.read_bytes() == sr1.read_bytes()
    ds = pydicom.dcmread(sr0)
    assert ds.ContentDate == pydicom.dcmread(seg0).ContentDate


def build_seg_again(case):
    from spine_idc.dicom import build_seg

    info, _, seg, tmp_path = case
    labels = np.load(tmp_path / "labels.npy")
    return build_seg(Volume(labels, np.load(tmp_path / "affine.npy")), info, ALGORITHM)


def test_missing_values_are_left_out_and_flagged(case):
    import dataclasses

    info, measurements, seg, _ = case
    m = dataclasses.replace(measurements[0], trabecular_mean_hu=None, trabecular_median_hu=None,
                            body_height_anterior_mm=None, height_ratio=None, touches_border=True)
    sr = _hd().sr.Comprehensive3DSR.from_dataset(build_sr([m], seg, info, ALGORITHM))
    (g,) = sr.content.get_volumetric_roi_measurement_groups()
    assert g.get_measurements(name=coding.ATTENUATION_COEFFICIENT) == []
    assert g.get_measurements(name=coding.BODY_HEIGHT_RATIO) == []
    assert len(g.get_measurements(name=coding.VERTEBRAL_BODY_HEIGHT)) == 2
    qc = _qc(g)
    assert qc[coding.QC_TRABECULAR_CORE] == coding.NO
    assert qc[coding.QC_TOUCHES_BORDER] == coding.YES


def test_bad_inputs(case):
    import dataclasses

    info, measurements, seg, _ = case
    with pytest.raises(ValueError, match="unknown QC keys"):
        build_sr(measurements, seg, info, ALGORITHM, qc={"nonsense": True})
    stranger = dataclasses.replace(measurements[0], level="L3", label_value=22)
    with pytest.raises(ValueError, match="no SEG segment"):
        build_sr([stranger], seg, info, ALGORITHM)


def test_sacral_and_cord_groups(tmp_path):
    """S1 is a vertebra at its own finding site; the cord is its own finding, without the
    vertebra QC questions; both validate."""
    hd = _hd()
    write_synthetic_series(tmp_path / "ct", n_slices=24, rows=64, columns=80,
                           pixel_spacing=(0.8, 0.6), slice_step=1.5)
    ct, info = load_series(tmp_path / "ct")
    hu = np.full(ct.array.shape, 200.0, dtype=np.float32)
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[15:65, 30:60, 1:11] = coding.S1_VALUE
    labels[15:65, 30:60, 13:23] = 24  # L5
    labels[35:45, 12:20, :] = coding.SPINAL_CORD_VALUE
    bodies = np.where(labels == coding.SPINAL_CORD_VALUE, 0, labels).astype(np.uint8)
    measurements = measure_vertebrae(Volume(hu, ct.affine), Volume(labels, ct.affine),
                                     Volume(bodies, ct.affine), erosion_mm=1.0)
    seg_path = write_seg(Volume(labels, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(seg_path)
    path = write_sr(measurements, seg, info, ALGORITHM, tmp_path / "sr.dcm")
    groups = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["L5", "S1", "spinal_cord"]
    l5, s1, cord = groups
    assert s1.finding_type == coding.VERTEBRA_GENERIC
    assert s1.finding_sites[0].value == coding.LEVEL_BY_NAME["S1"].code
    assert s1.get_measurements(name=coding.ATTENUATION_COEFFICIENT)
    assert cord.finding_type == coding.LEVEL_BY_NAME["spinal_cord"].code
    assert cord.finding_sites[0].value == coding.LEVEL_BY_NAME["spinal_cord"].code
    assert _qc(cord) == {coding.QC_TOUCHES_BORDER: coding.YES}
    assert cord.get_measurements(name=coding.VERTEBRAL_BODY_HEIGHT) == []
    assert_valid(path)


@pytest.mark.real_data
@pytest.mark.skipif(not CT3.is_dir(), reason=f"real test data not found at {CT3}")
def test_real_ct3_seg_and_sr(tmp_path):
    hd = _hd()
    ct, info = load_series(CT3)
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[200:260, 250:300, :] = 23  # L4
    labels[300:340, 240:310, 1:] = 24  # L5
    bodies = labels.copy()
    # three 1 mm slices: a 1 mm erosion leaves the middle slice as the trabecular core
    measurements = measure_vertebrae(ct, Volume(labels, ct.affine), Volume(bodies, ct.affine),
                                     erosion_mm=1.0)
    l4 = measurements[0]
    core = ct.array[201:259, 251:299, 1]  # voxel centres deeper than 1 mm (0.81 mm pixels)
    assert l4.level == "L4"
    assert l4.trabecular_mean_hu == pytest.approx(float(core.mean()), rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's one-component patient name
        seg_path = write_seg(Volume(labels, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
        seg = pydicom.dcmread(seg_path)
        sr_path = write_sr(measurements, seg, info, ALGORITHM, tmp_path / "sr.dcm")
        again = build_sr(measurements, seg, info, ALGORITHM)
    sr = hd.sr.srread(sr_path)
    assert sr.SOPInstanceUID == again.SOPInstanceUID
    assert sr.PatientID == pydicom.dcmread(info.files[0], stop_before_pixels=True).PatientID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["L4", "L5"]
    for g, m in zip(groups, measurements):
        assert g.get_measurements(name=coding.VOLUME)[0].value == pytest.approx(m.volume_ml * 1e3)
        qc = _qc(g)
        assert qc[coding.QC_TOUCHES_BORDER] == coding.YES  # 3 slices: every label touches
    for path in (seg_path, sr_path):
        errors_free_warnings = assert_valid(path)
        unexpected = [w for w in errors_free_warnings
                      if "Patient's Name" not in w and "99SPINEIDC" not in w]
        assert unexpected == []
