"""The download stage end to end against a real S3 server (moto) and a real DICOMweb server
(Orthanc): a series reaches its folder whole and verified, or not at all.

Faults are real network faults, injected by a TCP proxy between s5cmd (or the DICOMweb client)
and the server: a server that dies mid-series, one that is down, objects missing, cut short or
belonging to another series.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import urlparse

import pydicom
import pytest

from support.faultproxy import FaultProxy
from support.s3_server import IDC_BUCKET, start_moto, upload_series
from spine_idc.config import DownloadConfig
from spine_idc.sources.fetch import DICOM_DIR, INFO, Remote, download_series, downloaded_files
from spine_idc.errors import NetworkUnreachable, TransientError
from spine_idc.manifest import ManifestRow
from spine_idc.outcome import read_failure
from spine_idc.phantom import write_phantom

OPTS = DownloadConfig(endpoint_url="", retries=1, tool_retries=2, backoff_s=0.0, timeout_s=120, stall_s=30,
                      probe_timeout_s=2)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return [write_phantom(seed, root / str(seed))[0][:40] for seed in (0, 1)]  # 40 slices each


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with start_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def proxy(moto):
    target = urlparse(moto.url)
    with FaultProxy(target.hostname, target.port) as p:
        yield p


def row_for(files: list[Path], location: str, *, n: int | None = None, source: str = "idc") -> ManifestRow:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    uid = str(ds.SeriesInstanceUID)
    return ManifestRow(series_key=uid, series_instance_uid=uid, study_instance_uid=str(ds.StudyInstanceUID),
                       patient_id=str(ds.PatientID), modality="CT", series_description="",
                       n_instances=n or len(files), source=source, location=location)


def remote(endpoint: str, **changes) -> Remote:
    return Remote(dataclasses.replace(OPTS, endpoint_url=endpoint, **changes))


def test_a_whole_series_is_published_with_its_record(tmp_path, moto, phantoms):
    files = phantoms[0]
    uploaded = upload_series(moto.url, IDC_BUCKET, files)
    out = tmp_path / "dl"
    assert download_series(row_for(files, uploaded.location), out, remote(moto.url)) is None
    assert uploaded.mismatches(out / DICOM_DIR) == []
    assert len(downloaded_files(out)) == len(files)
    assert (out / INFO).exists() and read_failure(out) is None
    assert [p.name for p in tmp_path.iterdir()] == ["dl"]  # no temporary folder left


@pytest.mark.parametrize("fault, reason", [
    ("missing", "incomplete-download"),
    ("truncated", "corrupt-instance"),
    ("stray", "wrong-series"),
    ("empty", "not-found"),
])
def test_bad_series_at_the_source_are_recorded_and_nothing_partial_is_kept(tmp_path, moto, phantoms, fault, reason):
    files, other = phantoms
    n = len(files)
    if fault == "missing":
        uploaded = upload_series(moto.url, IDC_BUCKET, files[:-1])
    elif fault == "truncated":
        uploaded = upload_series(moto.url, IDC_BUCKET, files, truncate={7: 0.5})
    elif fault == "stray":
        uploaded = upload_series(moto.url, IDC_BUCKET, files[1:], extra_files=[other[0]])
    else:
        uploaded = upload_series(moto.url, IDC_BUCKET, [])
    out = tmp_path / "dl"
    failure = download_series(row_for(files, uploaded.location, n=n), out, remote(moto.url))
    assert failure is not None and failure.reason == reason and failure.stage == "download"
    assert failure.series_key == row_for(files, "").series_key
    assert read_failure(out) == failure
    assert not (out / DICOM_DIR).exists()  # a partial series never reaches conversion
    assert sorted(p.name for p in out.iterdir()) == ["failure.json"]


def test_a_server_dying_mid_series_is_retried_to_completion(tmp_path, moto, proxy, phantoms):
    files = phantoms[0]
    uploaded = upload_series(moto.url, IDC_BUCKET, files)
    proxy.cut_after(30_000, connections=6)  # the probe, HEAD and LIST take three
    out = tmp_path / "dl"
    assert download_series(row_for(files, uploaded.location), out, remote(proxy.url)) is None
    assert uploaded.mismatches(out / DICOM_DIR) == []
    assert proxy.stats.cut >= 2  # the faults did strike object transfers, and were survived


def test_a_persistent_fault_raises_for_a_retry_then_is_recorded_on_the_last_attempt(tmp_path, moto, proxy, phantoms):
    files = phantoms[0]
    uploaded = upload_series(moto.url, IDC_BUCKET, files)
    row = row_for(files, uploaded.location)
    out = tmp_path / "dl"
    proxy.http_error(503, connections=10_000)  # reachable, but every request fails
    with pytest.raises(TransientError):
        download_series(row, out, remote(proxy.url), attempt=1)  # Snakemake will run it again
    assert not out.exists()
    failure = download_series(row, out, remote(proxy.url), attempt=2)  # the last (retries=1)
    assert failure.reason == "download-failed" and "after 2 attempts" in failure.message
    assert not (out / DICOM_DIR).exists()
    proxy.passthrough()  # the server is back: a fresh run (after deleting the record) succeeds
    out.joinpath("failure.json").unlink()
    out.rmdir()
    assert download_series(row, out, remote(proxy.url)) is None


def test_an_unreachable_endpoint_is_never_recorded_against_the_series(tmp_path, moto, proxy, phantoms):
    files = phantoms[0]
    uploaded = upload_series(moto.url, IDC_BUCKET, files)
    proxy.down()
    out = tmp_path / "dl"
    for attempt in (1, 2):  # even on the last attempt: the network's fault, not the series'
        with pytest.raises(NetworkUnreachable, match="make demo"):
            download_series(row_for(files, uploaded.location), out, remote(proxy.url), attempt=attempt)
    assert not out.exists()


def test_dicomweb_server_stopping_mid_series_then_back(tmp_path, phantoms):
    from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc, upload

    if not orthanc_available():
        pytest.skip(UNAVAILABLE_REASON)
    files = phantoms[1]
    with start_orthanc(tmp_path / "orthanc") as server:
        upload(server, files)
        with FaultProxy("127.0.0.1", server.port) as proxy:
            url = f"{proxy.url}/dicom-web"
            row = row_for(files, f"{url}/studies/x/series/y", source="dicomweb")
            rem = Remote(dataclasses.replace(OPTS, retries=0, tool_retries=2), url, "none")
            proxy.cut_after(300_000, connections=2)
            out = tmp_path / "dl"
            assert download_series(row, out, rem) is None
            got = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in downloaded_files(out)}
            assert proxy.stats.cut >= 1
            assert got == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
