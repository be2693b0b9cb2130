"""A DICOMweb server that misbehaves (``dicomweb_stub.py`` on loopback): malformed QIDO-RS
records, and answers so slow that only a limit on the whole attempt ends them."""

from __future__ import annotations

import logging
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_faults import write_ct_series
from support.dicomweb_stub import DicomwebStub, qido_record
from spine_idc.config import Config
from spine_idc.sources.fetch import Remote, download_series
from spine_idc.errors import TransientError
from spine_idc.manifest import ManifestRow, read_manifest
from spine_idc.outcome import read_failure
from spine_idc.pipeline import stages


def _dicomweb_config(url: str, **extra) -> Config:
    return Config.from_dict({"source": "dicomweb", "dicomweb_url": url, "dicomweb": {"auth": "none"},
                             **extra})


def test_malformed_qido_records_are_skipped_with_a_warning_and_the_rest_go_on(tmp_path, caplog):
    """A StudyInstanceUID like ``../../x`` (whose instances had to be counted, or not) or a
    record without a SeriesInstanceUID used to abort the whole cohort."""
    good = sorted(generate_uid() for _ in range(2))
    records = [
        qido_record(generate_uid(), good[0], n=30),
        qido_record("../../x", "1.2.3.4.5", n=None),  # the count is asked for under the bad study
        qido_record("../../y", "1.2.3.4.6", n=30),
        qido_record(generate_uid(), None, n=30),
        qido_record(None, "1.2.3.4.7", n=30),
        {"0020000E": "not an attribute", "00080060": {"vr": "CS", "Value": ["CT"]}},
        qido_record(generate_uid(), good[1], n=30),
    ]
    caplog.set_level(logging.WARNING)
    with DicomwebStub(series=records) as stub:
        stages.make_manifest(_dicomweb_config(stub.url), tmp_path / "m.tsv", tmp_path / "lists")
    assert [r.series_key for r in read_manifest(tmp_path / "m.tsv")] == good
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for uid, what in (("1.2.3.4.5", "'../../x'"), ("1.2.3.4.6", "'../../y'"), ("1.2.3.4.7", "''")):
        said = [w for w in warned if uid in w]
        assert len(said) == 1 and what in said[0] and "\n" not in said[0], warned
    assert any("invalid SeriesInstanceUID" in w for w in warned), warned


# --- download.timeout_s bounds one whole attempt -------------------------------------------------

TIMEOUT_S = 1.5
SLACK_S = 2.5


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small CT series: its files' bytes and its manifest row (source dicomweb)."""
    files = write_ct_series(tmp_path_factory.mktemp("wado") / "s", n_slices=3)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    row = ManifestRow(series_key=uid, series_instance_uid=uid, study_instance_uid=study, patient_id="P",
                      modality="CT", series_description="", n_instances=3, source="dicomweb",
                      location=f"/studies/{study}/series/{uid}")
    return row, [f.read_bytes() for f in files]


def _remote(url: str, **download) -> Remote:
    options = {"timeout_s": TIMEOUT_S, "retries": 0, "tool_retries": 3, "backoff_s": 0.1, **download}
    return _dicomweb_config(url, download=options).remote()


@pytest.mark.parametrize("slow", ["body", "headers", "silent"])
def test_a_slow_server_is_stopped_after_timeout_s_and_recorded_on_the_last_attempt(series, tmp_path, slow):
    """A server that trickles a byte at a time (after its headers, or its headers too), or
    never answers, used to hold an attempt for minutes: timeout_s was a limit per read."""
    row, parts = series
    with DicomwebStub(instances={row.series_instance_uid: parts}) as stub:
        stub.trickle_s = 0.05  # the whole answer would take minutes
        stub.trickle_body_only = slow == "body"
        stub.silent = slow == "silent"
        remote = _remote(stub.url, retries=1)
        started = time.monotonic()
        with pytest.raises(TransientError, match=f"(?i)timed out after {TIMEOUT_S:g} s"):
            download_series(row, tmp_path / "first", remote, attempt=1)  # retries remain: raised
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert not (tmp_path / "first").exists()

        started = time.monotonic()
        failure = download_series(row, tmp_path / "last", remote, attempt=2)  # the last one: recorded
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S + 0.1  # + the backoff
    assert failure.reason == "download-failed" and "timed out" in failure.message
    assert read_failure(tmp_path / "last") == failure
    assert not (tmp_path / "last" / "dicom").exists()


def test_a_fast_server_is_not_cut_by_the_attempt_limit(series, tmp_path):
    row, parts = series
    with DicomwebStub(instances={row.series_instance_uid: parts}) as stub:
        stub.trickle_s = 0.0002  # a few kB in a second or two: within the limit
        assert download_series(row, tmp_path / "d", _remote(stub.url, timeout_s=20)) is None
    assert len(list((tmp_path / "d" / "dicom").iterdir())) == 3
