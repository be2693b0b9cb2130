"""spine_idc.convert: geometry, HU, and one real file-level fault per rejection reason."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from support.dicom_faults import (
    CT3_DICOM,
    TS_DICOM,
    TS_LABELS,
    copy_series,
    edit,
    expected_hu,
    real_series_with_uids,
    tilt,
    truncate,
    write_ct_series,
)

from spine_idc.convert import ConvertOptions, load_series, write_converted
from spine_idc.errors import InvalidSeriesError
from spine_idc.volume import LPS_TO_RAS, SeriesInfo, read_nifti

KEY = "1.2.3.4"
needs_ts = pytest.mark.skipif(not TS_DICOM.is_dir(), reason=f"real data missing: {TS_DICOM}")
needs_ct3 = pytest.mark.skipif(not CT3_DICOM.is_dir(), reason=f"real data missing: {CT3_DICOM}")


@pytest.fixture
def series(tmp_path):
    """A valid 12-slice series in tmp_path, files in position order."""
    return write_ct_series(tmp_path / "s")


def fails(files, reason, path=None, options=None):
    """Assert load_series rejects ``files`` for ``reason``, naming the series and ``path``."""
    with pytest.raises(InvalidSeriesError) as info:
        load_series(files, KEY, options or ConvertOptions())
    err = info.value
    assert err.reason == reason, str(err)
    assert err.series == KEY and KEY in str(err)
    if isinstance(path, list):  # a fault in every file: any of them may be named
        assert err.path in {str(p) for p in path} and err.path in str(err)
    elif path is not None:
        assert err.path == str(path) and str(path) in str(err)
    return err


def voxel_to_lps(volume, ijk):
    return (LPS_TO_RAS @ volume.affine @ np.r_[ijk, 1.0])[:3]  # the diag is its own inverse


# --- valid series ---------------------------------------------------------------------------


def test_valid_series_orientation_values_and_info(series):
    vol, info = load_series(list(reversed(series)), KEY)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, expected_hu(24, 20, 12))
    # DICOM definition: voxel (i, j) of slice k sits at IPP_k + i*row_dir*dc + j*col_dir*dr.
    for k in (0, 7, 11):
        ds = pydicom.dcmread(series[k])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        expected = ipp + 5 * np.array([1, 0, 0]) * 0.7 + 3 * np.array([0, 1, 0]) * 0.8
        np.testing.assert_allclose(voxel_to_lps(vol, [5, 3, k]), expected, atol=1e-6)
    assert info.files == [str(f) for f in series]
    assert info.sop_instance_uids == [pydicom.dcmread(f).SOPInstanceUID for f in series]
    assert (info.rows, info.columns, info.pixel_spacing_mm) == (24, 20, (0.8, 0.7))
    assert info.slice_spacing_mm == pytest.approx(2.5)
    assert not info.uids_repaired and info.warnings == []
    np.testing.assert_allclose(vol.spacing, [0.7, 0.8, 2.5])


def test_oblique_series_affine_places_every_slice(tmp_path):
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    iop = (c, s, 0.0, 0.0, 0.0, -1.0)  # a rotated coronal stack: normal is not a main axis
    files = write_ct_series(tmp_path, iop=iop, n_slices=10)
    vol, _ = load_series(files, KEY)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    for k, f in enumerate(files):
        ipp = np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient])
        np.testing.assert_allclose(
            voxel_to_lps(vol, [4, 9, k]), ipp + 4 * 0.7 * row + 9 * 0.8 * col, atol=1e-5
        )


def test_non_integer_rescale_gives_float32(tmp_path):
    files = write_ct_series(tmp_path, slope=0.5, intercept=-1000.25)
    vol, _ = load_series(files, KEY)
    assert vol.array.dtype == np.float32
    raw = expected_hu(24, 20, 12, intercept=0.0)
    np.testing.assert_allclose(vol.array, raw * 0.5 - 1000.25)


def test_write_converted_round_trip(series, tmp_path):
    vol, info = load_series(series, KEY)
    out = tmp_path / "out"
    write_converted(vol, info, out)
    assert sorted(p.name for p in out.iterdir()) == ["series.json", "volume.nii.gz"]
    back = read_nifti(out / "volume.nii.gz")
    assert back.same_grid(vol) and back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    assert SeriesInfo.read(out / "series.json") == info


# --- one real file-level fault per reason ---------------------------------------------------


def test_truncated_file_is_unreadable(series):
    truncate(series[5])
    fails(series, "unreadable", series[5])


def test_garbage_file_is_unreadable(series):
    series[2].write_bytes(b"this is not DICOM at all")
    fails(series, "unreadable", series[2])


def test_undecodable_transfer_syntax_names_codec(series):
    # Claim JPEG Lossless with an encapsulated frame of junk: no installed plugin decodes it
    # (or, if one is installed later, it fails on the junk): either way, say what and where.
    ds = pydicom.dcmread(series[4])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(series[4])
    err = fails(series, "unreadable", series[4])
    assert "JPEG Lossless" in str(err) and pydicom.uid.JPEGLosslessSV1 in str(err)
    from pydicom.pixels.decoders.base import get_decoder

    if not get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        assert "pylibjpeg-libjpeg" in str(err) and "gdcm" in str(err)


def test_blank_uid_rejected_with_hint(series):
    edit(series[3], SOPInstanceUID="")
    err = fails(series, "blank-uid", series[3])
    assert "repair_blank_uids" in err.hint and "SOPInstanceUID" in str(err)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_invalid_uid_rejected(series):
    for f in series:
        edit(f, StudyInstanceUID="1.02.3")  # leading zero: not a UID
    assert "StudyInstanceUID" in str(fails(series, "blank-uid", series))


def test_blank_uids_repaired_deterministically(series, caplog):
    for f in series:
        edit(f, SeriesInstanceUID="", StudyInstanceUID="", SOPInstanceUID="")
    opts = ConvertOptions(repair_blank_uids=True)
    vol, info = load_series(series, "nouid-0123456789ab", opts)
    _, again = load_series(list(reversed(series)), "nouid-0123456789ab", opts)
    assert info.uids_repaired and any("repaired" in w for w in info.warnings)
    assert "repaired" in caplog.text
    assert info.series_instance_uid == again.series_instance_uid
    assert info.sop_instance_uids == again.sop_instance_uids
    assert len(set(info.sop_instance_uids)) == 12
    assert info.series_key == "nouid-0123456789ab"
    np.testing.assert_array_equal(vol.array, expected_hu(24, 20, 12))


def test_duplicate_sop_instance_uid(series):
    edit(series[6], SOPInstanceUID=pydicom.dcmread(series[2]).SOPInstanceUID)
    fails(series, "duplicate-uid", [series[2], series[6]])


def test_two_slices_at_one_position(series):
    twin = series[0].with_name("twin")
    shutil.copy(series[7], twin)
    edit(twin, SOPInstanceUID=pydicom.uid.generate_uid())
    err = fails(series + [twin], "duplicate-position", [series[7], twin])
    assert "same position" in str(err)


def test_mixed_series(series):
    edit(series[8], SeriesInstanceUID=pydicom.uid.generate_uid())
    fails(series, "mixed-series", series[8])


def test_not_ct_modality(series):
    edit(series[1], Modality="MR")
    assert "'MR'" in str(fails(series, "not-ct", series[1]))


def test_not_ct_sop_class(series):
    for f in series:
        edit(f, SOPClassUID=pydicom.uid.MRImageStorage)
    assert "MR Image Storage" in str(fails(series, "not-ct", series))


def test_localizer_image_type(series):
    edit(series[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    fails(series, "localizer", series[0])


def test_localizer_by_orientation(series, tmp_path):
    scout = write_ct_series(tmp_path / "scout", n_slices=1, iop=(1, 0, 0, 0, 0, -1))[0]
    for kw in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        edit(scout, **{kw: pydicom.dcmread(series[0]).get(kw)})
    fails(series + [scout], "localizer", scout)


def test_mixed_geometry_rows(series):
    edit(series[5], Rows=30)
    assert "Rows/Columns" in str(fails(series, "mixed-geometry", series[5]))


def test_mixed_geometry_pixel_spacing(series):
    edit(series[9], PixelSpacing=["0.9", "0.7"])
    fails(series, "mixed-geometry", series[9])


def test_mixed_geometry_orientation_names_the_odd_file(series):
    odd = min(series, key=str)  # the first file read: it must not become the reference
    c, s = np.cos(np.radians(2)), np.sin(np.radians(2))
    edit(odd, ImageOrientationPatient=[f"{v:.6f}" for v in (c, s, 0, -s, c, 0)])
    assert "ImageOrientationPatient" in str(fails(series, "mixed-geometry", odd))


def test_object_without_pixels_is_not_ct(series):
    edit(series[3], Modality="SR", PixelData=None)
    fails(series, "not-ct", series[3])


def test_missing_geometry(series):
    edit(series[4], ImagePositionPatient=None)
    fails(series, "missing-geometry", series[4])


def test_missing_middle_slice(series):
    series[6].unlink()
    files = series[:6] + series[7:]
    err = fails(files, "missing-slices", series[7])
    assert "about 1 slice(s) missing" in str(err) and "5.00 mm" in str(err)
    assert str(series[5]) in str(err)  # says where: after which file


def test_irregular_spacing(series):
    ipp = [float(v) for v in pydicom.dcmread(series[6]).ImagePositionPatient]
    edit(series[6], ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.8])  # 2.5 mm step -> 3.3
    fails(series, "irregular-spacing", [series[6], series[7]])


def test_too_few_slices(series):
    err = fails(series[:5], "too-few-slices", series[:5])
    assert "5 slice(s)" in str(err) and "min_slices" in err.hint
    vol, _ = load_series(series[:5], KEY, ConvertOptions(min_slices=5))
    assert vol.array.shape == (20, 24, 5)


def test_gantry_tilt_rejected_then_sheared(series):
    tilt(series, 15.0)
    assert "tilt" in str(fails(series, "gantry-tilt", series))
    vol, info = load_series(series, KEY, ConvertOptions(allow_gantry_tilt=True))
    assert any("gantry tilt" in w for w in info.warnings)
    for k, f in enumerate(series):  # the sheared affine still puts each slice where it is
        ipp = np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient])
        np.testing.assert_allclose(voxel_to_lps(vol, [0, 0, k]), ipp, atol=1e-4)


def test_multi_frame_rejected(series):
    edit(series[0], NumberOfFrames=2)
    fails(series, "multi-frame", series[0])


# --- real data ------------------------------------------------------------------------------


@needs_ts
def test_real_blank_uid_series_rejected_by_default():
    files = sorted(TS_DICOM.iterdir())
    err = fails(files, "blank-uid", files)
    assert "repair_blank_uids" in err.hint


@needs_ts
def test_real_series_repaired_matches_label_grid_and_hu():
    nib = pytest.importorskip("nibabel")
    vol, info = load_series(sorted(TS_DICOM.iterdir()), KEY, ConvertOptions(repair_blank_uids=True))
    assert info.uids_repaired and info.transfer_syntax_uid == pydicom.uid.JPEG2000Lossless
    assert vol.array.shape == (512, 512, 20) and vol.array.dtype == np.int16
    assert vol.array.min() == -1024 and 1000 < vol.array.max() < 3000  # air .. cortical bone
    labels = nib.load(TS_LABELS)
    # Same physical grid, flipped in y: the index map between them is an exact permutation.
    index_map = np.linalg.inv(labels.affine) @ vol.affine
    np.testing.assert_allclose(index_map, np.array(
        [[1, 0, 0, 0], [0, -1, 0, 511], [0, 0, 1, 0], [0, 0, 0, 1]]), atol=1e-4)
    lab = np.asarray(labels.dataobj)[:, ::-1, :]
    assert 150 < vol.array[np.isin(lab, [32, 33])].mean() < 600  # vertebrae are bone
    assert vol.array[lab == 0].min() == -1024


@needs_ts
def test_real_series_with_valid_uids_converts_by_default(tmp_path):
    files = real_series_with_uids(TS_DICOM, tmp_path)
    vol, info = load_series(files, KEY)
    repaired, _ = load_series(
        sorted(TS_DICOM.iterdir()), KEY, ConvertOptions(repair_blank_uids=True)
    )
    np.testing.assert_array_equal(vol.array, repaired.array)
    assert not info.uids_repaired and vol.same_grid(repaired)


@needs_ts
def test_real_fault_truncated_jpeg2000(tmp_path):
    files = copy_series(sorted(TS_DICOM.iterdir()), tmp_path)
    truncate(files[10], 0.9)
    fails(files, "unreadable", files[10], ConvertOptions(repair_blank_uids=True))


@needs_ts
@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
def test_real_series_agrees_with_dcm2niix(tmp_path):
    nib = pytest.importorskip("nibabel")
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-o", str(tmp_path), "-f", "ref",
                    str(TS_DICOM)], check=True, capture_output=True)
    ref = nib.load(tmp_path / "ref.nii")
    vol, _ = load_series(sorted(TS_DICOM.iterdir()), KEY, ConvertOptions(repair_blank_uids=True))
    # Compare voxel-centre physical positions (dcm2niix flips rows), then the values there.
    index_map = np.linalg.inv(ref.affine) @ vol.affine
    np.testing.assert_allclose(index_map, np.rint(index_map), atol=1e-4)
    ijk = np.stack(np.meshgrid(*map(np.arange, vol.array.shape), indexing="ij"), -1).reshape(-1, 3)
    theirs = np.rint(ijk @ index_map[:3, :3].T + index_map[:3, 3]).astype(int)
    np.testing.assert_array_equal(
        vol.array.reshape(-1), ref.get_fdata()[tuple(theirs.T)].astype(np.int16)
    )


@needs_ct3
def test_real_three_slice_series():
    files = sorted(CT3_DICOM.iterdir())
    assert "3 slice(s)" in str(fails(files, "too-few-slices", files))
    vol, info = load_series(files, KEY, ConvertOptions(min_slices=3))
    assert vol.array.shape == (512, 512, 3) and info.slice_spacing_mm == pytest.approx(1.0)
    assert vol.array.min() >= -3024 and vol.array.max() < 4000
    ipp_first = np.array([float(v) for v in pydicom.dcmread(info.files[0]).ImagePositionPatient])
    np.testing.assert_allclose(voxel_to_lps(vol, [0, 0, 0]), ipp_first, atol=1e-5)
    assert info.files[0].endswith("03.dcm")  # lowest z first, not InstanceNumber order


# --- malformed values: recorded as reasons, never a crash ------------------------------------




def _patch(path, keyword, text: bytes):
    """Overwrite an element's stored bytes in place (same length), as a broken exporter might."""
    raw = pydicom.dcmread(path).get_item(keyword)
    data = bytearray(path.read_bytes())
    data[raw.value_tell: raw.value_tell + raw.length] = text.ljust(raw.length, b" ")[: raw.length]
    path.write_bytes(bytes(data))


def test_malformed_rescale_is_rejected_not_guessed(series):
    _patch(series[3], "RescaleIntercept", b"abc")
    fails(series, "bad-rescale", series[3])


def test_huge_slope_is_a_series_failure_not_infinite_hu(series):
    """RescaleSlope 1e300 gave inf voxels (a numpy warning only), then a SEG naming thoracic
    vertebrae lumbar: it is a failure of the series, before segmentation."""
    edit(series[4], RescaleSlope="1e300")
    fails(series, "implausible-hu", series[4])


def test_signed_pixels_labelled_unsigned_are_refused(series):
    """Air stored as -1000 in signed pixels but labelled unsigned reads as 64,536 HU."""
    ds = pydicom.dcmread(series[2])
    pixels = np.full((ds.Rows, ds.Columns), -1000, np.int16)
    pixels[4:8, 4:8] = 300
    ds.PixelData = pixels.tobytes()
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.save_as(series[2])
    with pytest.raises(InvalidSeriesError) as info:
        load_series(series, KEY, ConvertOptions())
    assert info.value.reason == "implausible-hu"
    assert "PixelRepresentation 0" in str(info.value) and "64536" in str(info.value)


def test_zero_slope_is_rejected(series):
    edit(series[5], RescaleSlope=0)
    fails(series, "bad-rescale", series[5])


def test_single_valued_image_type_localizer(series):
    for f in series:
        edit(f, ImageType="LOCALIZER")
    fails(series, "localizer", series)


def test_malformed_number_of_frames_is_reported(series):
    edit(series[2], NumberOfFrames=1)
    _patch(series[2], "NumberOfFrames", b"x")
    err = fails(series, "unreadable", series[2])
    assert "NumberOfFrames" in str(err)


def test_malformed_rows_is_reported_and_scan_keeps_the_file(series):
    from spine_idc.sources.scan import scan_folder

    data = bytearray(series[4].read_bytes())
    raw = pydicom.dcmread(series[4]).get_item("Rows")
    data[raw.value_tell: raw.value_tell + 2] = b"\x00\x00"  # Rows = 0
    series[4].write_bytes(bytes(data))
    (found,) = scan_folder(series[0].parent)
    assert found.n_files == len(series)
    fails(series, "missing-geometry", series[4])
