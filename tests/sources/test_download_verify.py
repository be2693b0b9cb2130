"""What arrives is checked against the manifest before anything converts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from support.dicom_faults import truncate, write_ct_series
from spine_idc.sources.verify import verify_series
from spine_idc.errors import SeriesError


@pytest.fixture
def series(tmp_path):
    files = write_ct_series(tmp_path / "s", n_slices=12)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    return tmp_path / "s", files, str(uid)


def check(folder: Path, uid: str, n: int):
    return verify_series(folder, series_key=uid, series_instance_uid=uid, n_instances=n)


def reason(folder: Path, uid: str, n: int) -> SeriesError:
    with pytest.raises(SeriesError) as info:
        check(folder, uid, n)
    assert uid in str(info.value)  # every message names the series
    return info.value


def test_a_whole_series_passes(series):
    folder, files, uid = series
    verified = check(folder, uid, len(files))
    assert len(verified.files) == 12 and verified.n_bytes == sum(f.stat().st_size for f in files)


def test_a_missing_instance_is_an_incomplete_download(series):
    folder, files, uid = series
    files[5].unlink()
    err = reason(folder, uid, 12)
    assert err.reason == "incomplete-download" and "11 of the 12" in err.detail


def test_more_instances_than_indexed(series):
    folder, files, uid = series
    assert reason(folder, uid, 10).reason == "unexpected-instances"


@pytest.mark.parametrize("fraction", [0.9, 0.3, 0.01])
def test_a_truncated_instance_is_corrupt(series, fraction):
    folder, files, uid = series
    truncate(files[3], fraction)
    err = reason(folder, uid, 12)
    assert err.reason == "corrupt-instance" and err.path == str(files[3])


def test_a_file_that_is_not_dicom_is_corrupt(series):
    folder, files, uid = series
    files[0].write_text("<html>503 Service Unavailable</html>")
    assert reason(folder, uid, 12).reason == "corrupt-instance"


def test_an_instance_of_another_series_is_named(series, tmp_path):
    folder, files, uid = series
    other = write_ct_series(tmp_path / "other", n_slices=3)
    files[0].unlink()
    shutil.copy(other[1], folder / "stray.dcm")
    err = reason(folder, uid, 12)
    assert err.reason == "wrong-series" and err.path.endswith("stray.dcm")


def test_the_same_instance_twice(series):
    folder, files, uid = series
    files[1].unlink()
    shutil.copy(files[0], folder / "copy.dcm")
    assert reason(folder, uid, 12).reason == "duplicate-instance"


@pytest.mark.real_data
@pytest.mark.parametrize("fraction", [0.95, 0.6])
def test_a_truncated_jpeg2000_instance_is_corrupt(tmp_path, fraction):
    from support.dicom_faults import TS_DICOM

    if not TS_DICOM.is_dir():
        pytest.skip("../shared/data is not here")
    folder = tmp_path / "s"
    shutil.copytree(TS_DICOM, folder)
    files = sorted(folder.iterdir())
    # The real series has blank UIDs: give it one so only the truncation is wrong.
    uid = "1.2.826.0.1.3680043.8.498.1"
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, f"{uid}.{i + 1}"
        ds.save_as(f)
    assert check(folder, uid, len(files))
    truncate(files[7], fraction)
    err = reason(folder, uid, len(files))
    assert err.reason == "corrupt-instance" and err.path == str(files[7])
