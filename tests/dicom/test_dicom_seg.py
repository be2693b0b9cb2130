"""Tests of spine_idc.dicom.seg: SEG frames land on the right voxels, codes, UIDs, validity."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from spine_idc import coding
from spine_idc.dicom import AlgorithmInfo, build_seg, deterministic_uid, write_seg
from spine_idc.errors import SeriesError
from spine_idc.volume import LPS_TO_RAS, SeriesInfo, Volume

from support.dicom_series import (  # noqa: F401 - shared with the SR tests
    load_series, write_synthetic_series, two_level_labels, seg_to_label_map, _value_of, assert_valid,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CT3 = DATA / "real" / "dcmqi_ct3" / "dicom"
TS = DATA / "real" / "ts_t11_t12" / "dicom"
THORAX = DATA / "real" / "elastix_thorax" / "dicom"
ALGORITHM = AlgorithmInfo(version="0.1.0", parameters={"erosion_mm": "3.0"})


# --- tests ----------------------------------------------------------------------------------
@pytest.fixture
def synthetic(tmp_path):
    write_synthetic_series(tmp_path / "ct")
    ct, info = load_series(tmp_path / "ct")
    return ct, info


def test_synthetic_frames_land_on_the_right_voxels(synthetic, tmp_path):
    import highdicom as hd

    ct, info = synthetic
    # the series is stored descending with a flipped orientation: slice 0 is the last file
    assert Path(info.files[0]).name == "11.dcm"
    lab = two_level_labels(ct.array.shape)
    labels = Volume(lab, ct.affine)
    path = write_seg(labels, info, ALGORITHM, tmp_path / "out" / "seg.dcm")
    seg = hd.seg.segread(path)
    np.testing.assert_array_equal(seg_to_label_map(seg, info), lab)

    # independently of source references: the SEG's own geometry puts every voxel in place
    vol = seg.get_volume(combine_segments=True)
    seg_values = {int(s.SegmentNumber): _value_of(s.SegmentLabel) for s in seg.SegmentSequence}
    ours = np.linalg.inv(LPS_TO_RAS @ ct.affine) @ vol.affine  # hd voxel index -> our index
    idx = np.indices(vol.array.shape).reshape(3, -1)
    mapped = ours[:3, :3] @ idx + ours[:3, 3:4]
    np.testing.assert_allclose(mapped, np.round(mapped), atol=1e-3)
    i, j, k = np.round(mapped).astype(int)
    decoded = np.vectorize(lambda n: seg_values.get(int(n), 0))(vol.array.reshape(-1))
    np.testing.assert_array_equal(decoded, lab[i, j, k])
    assert (decoded > 0).sum() == (lab > 0).sum()


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


_OBLIQUE = _rotation(2, 10.0) @ _rotation(0, 25.0)
#: ImageOrientationPatient of the series the geometry test writes, by patient orientation.
ORIENTATIONS = {
    "axial-HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "axial-FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "axial-HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "oblique": tuple(np.r_[_OBLIQUE[:, 0], _OBLIQUE[:, 1]].round(6)),
}


def _pixel_positions(ipp, iop, pixel_spacing, rows: int, columns: int) -> np.ndarray:
    """LPS centres of the pixels of a DICOM frame, ``[row, column, xyz]`` (PS3.3 C.7.6.2.1.1)."""
    iop = np.asarray(iop, dtype=float)
    ps = np.asarray(pixel_spacing, dtype=float)  # (between rows, between columns)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    return (np.asarray(ipp, dtype=float) + c[..., None] * ps[1] * iop[:3]
            + r[..., None] * ps[0] * iop[3:])


class _PatientSpaceTruth:
    """Label values as a function of patient position: asymmetric boxes in the series' extent.

    Box edges are nominal fractions of the extent, each moved to the middle of the gap between
    the voxel centres nearest to it, and no centre may come closer to an edge than ``margin``
    mm, so that rounding in the DICOM headers cannot move a voxel across an edge.
    """

    BOXES = (  # value, (low, high) fraction of the extent along L, P, S
        (20, ((0.0, 0.49), (0.21, 1.0), (0.0, 0.51))),
        (19, ((0.31, 1.0), (0.0, 0.69), (0.51, 1.0))),
        (101, ((0.61, 1.0), (0.0, 1.0), (0.86, 1.0))),
    )

    def __init__(self, points: np.ndarray, margin: float = 1e-3) -> None:
        flat = points.reshape(-1, 3)
        low, size = flat.min(axis=0), np.ptp(flat, axis=0)
        self.boxes = []
        for value, box in self.BOXES:
            edges = []
            for axis, fractions in enumerate(box):
                along = np.unique(flat[:, axis])
                edges.append(tuple(self._between(along, low[axis] + f * size[axis],
                                                 0.05 * size[axis], margin)
                                   for f in fractions))
            self.boxes.append((value, edges))

    @staticmethod
    def _between(along: np.ndarray, nominal: float, window: float, margin: float) -> float:
        """The middle of the widest gap between sorted ``along`` values near ``nominal``."""
        if nominal <= along[0] or nominal >= along[-1]:
            return -np.inf if nominal <= along[0] else np.inf
        lo, hi = np.searchsorted(along, [nominal - window, nominal + window])
        near = along[max(lo - 1, 0) : hi + 1]
        widest = int(np.argmax(np.diff(near)))
        assert near[widest + 1] - near[widest] > 2 * margin, "no room for an edge"
        return float((near[widest] + near[widest + 1]) / 2.0)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        out = np.zeros(points.shape[:-1], dtype=np.uint8)
        for value, edges in self.boxes:
            inside = np.ones(points.shape[:-1], dtype=bool)
            for axis, (lo, hi) in enumerate(edges):
                inside &= (points[..., axis] >= lo) & (points[..., axis] <= hi)
            out[inside] = value
        return out


@pytest.mark.parametrize("descending", [True, False], ids=["descending", "ascending"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_frames_sit_on_the_source_geometry(tmp_path, orientation, descending):
    """Every SEG frame carries the position and orientation of the source instance it
    references, and its pixels are the labels found at those pixels' patient positions.

    The truth is a function of patient position (LPS); the label map is sampled from it through
    the volume's affine, and the SEG is checked through the DICOM geometry of its own frames
    (Plane Position / Orientation, Pixel Spacing) and of the source headers, never through the
    label-map array or the affine.
    """
    write_synthetic_series(tmp_path / "ct", n_slices=10, rows=18, columns=22,
                           iop=ORIENTATIONS[orientation], descending=descending)
    ct, info = load_series(tmp_path / "ct", pixels=False)
    sources = {}
    for f in info.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = ds
    source_points = np.stack([
        _pixel_positions(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing,
                         ds.Rows, ds.Columns) for ds in sources.values()
    ])
    truth = _PatientSpaceTruth(source_points)
    m = LPS_TO_RAS @ ct.affine
    ijk = np.indices(ct.array.shape).reshape(3, -1)
    voxel_points = (m[:3, :3] @ ijk + m[:3, 3:4]).T.reshape(*ct.array.shape, 3)
    lab = truth(voxel_points)
    assert {19, 20, 101} <= set(np.unique(lab))

    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    values = {int(s.SegmentNumber): _value_of(str(s.SegmentLabel)) for s in seg.SegmentSequence}
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    seen = set()
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        (derivation,) = item.DerivationImageSequence
        (ref,) = derivation.SourceImageSequence
        source = sources[ref.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(ipp, np.asarray(source.ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_allclose(iop, np.asarray(source.ImageOrientationPatient, float),
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(spacing, float),
                                   np.asarray(source.PixelSpacing, float))
        expected = truth(_pixel_positions(ipp, iop, spacing, seg.Rows, seg.Columns))
        np.testing.assert_array_equal(frame, expected == values[number])
        seen.add((ref.ReferencedSOPInstanceUID, values[number]))
    # no frame missing: every (source instance, value) with voxels has its frame
    wanted = {(uid, int(v)) for uid, points in zip(sources, source_points)
              for v in np.unique(truth(points)) if v}
    assert seen == wanted


def test_references_every_source_instance(synthetic, tmp_path):
    ct, info = synthetic
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[3:9, 4:10, 2:5] = 20  # three of the twelve slices
    seg = pydicom.dcmread(write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "s.dcm"))
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == info.series_instance_uid
    refs = {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
            for r in series.ReferencedInstanceSequence}
    assert refs == {(CTImageStorage, uid) for uid in info.sop_instance_uids}
    assert int(seg.NumberOfFrames) == 3
    framed = [item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for item in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(framed) == sorted(info.sop_instance_uids[2:5])


def test_label_map_memory_layout_does_not_matter(synthetic):
    """NIfTI label maps are Fortran-ordered, others C-ordered: the same SEG either way."""
    ct, info = synthetic
    lab = two_level_labels(ct.array.shape)
    a = build_seg(Volume(np.asfortranarray(lab), ct.affine), info, ALGORITHM)
    b = build_seg(Volume(np.ascontiguousarray(lab).astype(np.int32), ct.affine), info, ALGORITHM)
    assert a.PixelData == b.PixelData
    np.testing.assert_array_equal(seg_to_label_map(b, info), lab)
    with pytest.raises(ValueError, match="non-negative integer"):
        build_seg(Volume(lab.astype(np.float32), ct.affine), info, ALGORITHM)
    with pytest.raises(ValueError, match="non-negative integer"):
        build_seg(Volume(-lab.astype(np.int16), ct.affine), info, ALGORITHM)


def test_sacral_and_cord_rows(synthetic, tmp_path):
    """S1 and the spinal cord (rows for network backends) are coded from the same table and
    ordered anatomically: L5, S1, sacrum, then the cord after the vertebrae."""
    import highdicom as hd

    ct, info = synthetic
    ni, nj, nk = ct.array.shape
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[2:10, 2:8, 9:12] = 24  # L5 at the top
    lab[2:10, 2:8, 6:9] = coding.S1_VALUE
    lab[2:10, 2:8, 0:6] = coding.SACRUM_VALUE
    lab[12:15, 10:13, :] = coding.SPINAL_CORD_VALUE
    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    segs = list(seg.SegmentSequence)
    assert [s.SegmentLabel for s in segs] == ["L5", "S1", "sacrum", "spinal_cord"]
    types = [(s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for s in segs]
    assert types == [("49668003", "L5 vertebra"), ("65985001", "S1 vertebra"),
                     ("54735007", "Sacrum"), ("2748008", "Spinal cord")]
    for s in segs:
        colour = hd.color.CIELabColor.from_dicom_value(tuple(s.RecommendedDisplayCIELabValue))
        np.testing.assert_allclose(colour.to_rgb(), coding.LEVEL_BY_NAME[s.SegmentLabel].rgb,
                                   atol=1)
    np.testing.assert_array_equal(seg_to_label_map(seg, info), lab)
    assert_valid(path)


def test_disc_and_canal_rows(synthetic, tmp_path):
    """Discs (CID 7604 by the pair they join, the generic disc when unnamed) and the canal are
    segments of the same SEG, after the vertebrae, discs cranio-caudally; dciodvfy-clean."""
    import highdicom as hd

    ct, info = synthetic
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[2:10, 2:8, 9:12] = coding.LEVEL_BY_NAME["T11"].value
    lab[2:10, 2:8, 8] = coding.disc_value("T11", "T12")
    lab[2:10, 2:8, 4:8] = coding.LEVEL_BY_NAME["T12"].value
    lab[2:10, 2:8, 3] = coding.DISC_UNIDENTIFIED_BASE  # below T12: its neighbour is unnamed
    lab[2:10, 2:8, 0:3] = coding.UNIDENTIFIED_BASE
    lab[12:15, 10:13, :] = coding.SPINAL_CANAL_VALUE
    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    segs = list(hd.seg.segread(path).SegmentSequence)
    assert [s.SegmentLabel for s in segs] == [
        "T11", "T12", "vertebra1", "T11/T12 disc", "disc1", "spinal_canal"]
    types = {s.SegmentLabel: (s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                              s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for s in segs}
    assert types["T11/T12 disc"] == ("1537001", "T11/T12 disc")
    assert types["disc1"] == ("360499006", "Intervertebral disc")
    assert types["spinal_canal"] == ("61853006", "Vertebral canal")
    assert_valid(path)
    # and it decodes back to the same label map, discs and canal included
    np.testing.assert_array_equal(seg_to_label_map(hd.seg.segread(path), info), lab)


def test_segment_descriptions_and_order(synthetic, tmp_path):
    import highdicom as hd

    ct, info = synthetic
    lab = two_level_labels(ct.array.shape)
    seg = build_seg(Volume(lab, ct.affine), info, ALGORITHM)
    segs = list(seg.SegmentSequence)
    # cranio-caudal: the unnamed vertebra at the top slice, then T12, then L1
    assert [s.SegmentLabel for s in segs] == ["vertebra1", "T12", "L1"]
    assert [int(s.SegmentNumber) for s in segs] == [1, 2, 3]
    t12 = segs[1]
    cat = t12.SegmentedPropertyCategoryCodeSequence[0]
    assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("123037004", "SCT")
    typ = t12.SegmentedPropertyTypeCodeSequence[0]
    assert (typ.CodeValue, typ.CodeMeaning) == ("23215003", "T12 vertebra")
    assert segs[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "51282000"
    assert t12.SegmentAlgorithmType == "AUTOMATIC"
    alg = t12.SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "spine-idc classical" and alg.AlgorithmVersion == "0.1.0"
    assert alg.AlgorithmFamilyCodeSequence[0].CodeValue == "123104"  # Morphological Operations
    assert alg.AlgorithmParameters == "erosion_mm=3.0"
    # highdicom converts the table's sRGB colour to DICOM-scaled CIELab; it converts back
    lab_colour = hd.color.CIELabColor.from_dicom_value(tuple(t12.RecommendedDisplayCIELabValue))
    np.testing.assert_allclose(lab_colour.to_rgb(), coding.LEVEL_BY_NAME["T12"].rgb, atol=1)
    assert seg.ContentLabel == "VERTEBRAE" and seg.SeriesNumber == 901
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == info.frame_of_reference_uid
    # empty frames are omitted: every frame holds some segment pixels
    assert int(seg.NumberOfFrames) == sum(
        int((lab[:, :, k] == v).any()) for k in range(lab.shape[2]) for v in (19, 20, 101)
    )


def test_uids_are_deterministic(synthetic):
    ct, info = synthetic
    labels = Volume(two_level_labels(ct.array.shape), ct.affine)
    a, b = build_seg(labels, info, ALGORITHM), build_seg(labels, info, ALGORITHM)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != a.SeriesInstanceUID
    assert a.SegmentSequence[0].TrackingUID == b.SegmentSequence[0].TrackingUID
    other = build_seg(labels, info, AlgorithmInfo(version="0.2.0"))
    assert other.SOPInstanceUID != a.SOPInstanceUID
    assert deterministic_uid("x", "y") == deterministic_uid("x", "y") != deterministic_uid("x")


def test_repaired_uids_are_used_for_blank_source_uids(tmp_path):
    import dataclasses

    write_synthetic_series(tmp_path / "ct", blank_uids=True)
    ct, blank = load_series(tmp_path / "ct", pixels=False)
    assert set(blank.sop_instance_uids) == {""}
    info = dataclasses.replace(  # what the converter derives when asked to repair
        blank, series_key="repaired", uids_repaired=True,
        series_instance_uid=deterministic_uid("series"),
        study_instance_uid=deterministic_uid("study"),
        sop_instance_uids=[deterministic_uid("sop", k) for k in range(len(blank.files))],
    )
    lab = two_level_labels(ct.array.shape)
    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == info.study_instance_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.series_instance_uid
    np.testing.assert_array_equal(seg_to_label_map(seg, info), lab)
    assert_valid(path)
    # without the repair flag the blank UIDs do not match series.json: a clear error
    with pytest.raises(SeriesError, match="SOPInstanceUID"):
        build_seg(Volume(lab, ct.affine), dataclasses.replace(info, uids_repaired=False),
                  ALGORITHM)


def test_geometry_mismatch_is_a_clear_error(synthetic):
    ct, info = synthetic
    lab = two_level_labels(ct.array.shape)
    flipped = ct.affine.copy()
    flipped[:3, 2] *= -1  # slices in the wrong order
    with pytest.raises(SeriesError, match="does not match source slice") as exc:
        build_seg(Volume(lab, flipped), info, ALGORITHM)
    assert exc.value.reason == "seg-geometry-mismatch"
    with pytest.raises(SeriesError, match="slices"):
        build_seg(Volume(lab[:, :, :-1], ct.affine), info, ALGORITHM)
    with pytest.raises(SeriesError, match="pixels"):
        build_seg(Volume(lab.transpose(1, 0, 2).copy(), ct.affine), info, ALGORITHM)
    with pytest.raises(SeriesError) as exc:
        build_seg(Volume(np.zeros_like(lab), ct.affine), info, ALGORITHM)
    assert exc.value.reason == "empty-segmentation"


def test_synthetic_seg_passes_dciodvfy(synthetic, tmp_path):
    ct, info = synthetic
    path = write_seg(Volume(two_level_labels(ct.array.shape), ct.affine), info, ALGORITHM,
                     tmp_path / "seg.dcm")
    assert_valid(path)


@pytest.mark.real_data
@pytest.mark.skipif(not CT3.is_dir(), reason=f"real test data not found at {CT3}")
def test_real_ct3_seg(tmp_path):
    import highdicom as hd

    ct, info = load_series(CT3)
    assert ct.array.shape == (512, 512, 3)
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[200:260, 250:300, :] = 23  # L4 on all three slices
    lab[300:340, 240:310, 1:] = 24  # L5 on the two upper ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's one-component patient name
        path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["L4", "L5"]
    assert seg.StudyInstanceUID == info.study_instance_uid
    assert seg.FrameOfReferenceUID == info.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.series_instance_uid
    np.testing.assert_array_equal(seg_to_label_map(seg, info), lab)
    warns = assert_valid(path)
    assert all("Patient's Name" in w for w in warns), warns  # inherited from the source only


@pytest.mark.real_data
@pytest.mark.skipif(not THORAX.is_dir(), reason=f"real test data not found at {THORAX}")
def test_signed_slice_spacing_of_the_source_is_not_copied(tmp_path):
    """The Philips thorax writes Spacing Between Slices as -2.0 (signed along its slice
    order); highdicom copies it into the SEG, which dciodvfy then rejects.  The SEG says 2.0."""
    ct, info = load_series(THORAX, pixels=False)
    assert float(pydicom.dcmread(sorted(THORAX.iterdir())[0],
                                 stop_before_pixels=True).SpacingBetweenSlices) < 0
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[240:280, 200:240, 60:75] = 12  # "T5"
    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    measures = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == 2.0
    assert_valid(path)


@pytest.mark.real_data
@pytest.mark.skipif(not TS.is_dir(), reason=f"real test data not found at {TS}")
def test_real_blank_uid_series_with_repaired_uids(tmp_path):
    """The JPEG 2000 series with blank Study/Series/SOP Instance *and* SOP Class UIDs."""
    import dataclasses

    ct, info = load_series(TS, pixels=False)  # headers only: the pixels are JPEG 2000
    assert info.series_instance_uid == "" and info.sop_class_uid == ""
    info = dataclasses.replace(
        info, series_key="ts_t11_t12", uids_repaired=True, sop_class_uid=CTImageStorage,
        series_instance_uid=deterministic_uid("test", "series"),
        study_instance_uid=deterministic_uid("test", "study"),
        sop_instance_uids=[deterministic_uid("test", k) for k in range(len(info.files))],
    )
    lab = np.zeros(ct.array.shape, dtype=np.uint8)
    lab[200:300, 250:330, 2:12] = 19  # T12
    lab[200:300, 250:330, 12:19] = 18  # T11
    path = write_seg(Volume(lab, ct.affine), info, ALGORITHM, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == info.study_instance_uid
    np.testing.assert_array_equal(seg_to_label_map(seg, info), lab)
    assert_valid(path)
