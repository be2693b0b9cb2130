"""A DICOMweb server that misbehaves (``dicomweb_stub.py`` on loopback): malformed QIDO-RS
records, and answers so slow that only a limit on the whole attempt ends them."""

from __future__ import annotations

import logging

from pydicom.uid import generate_uid

from dicomweb_stub import DicomwebStub, qido_record
from spine_idc import stages
from spine_idc.config import Config
from spine_idc.manifest import read_manifest


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
