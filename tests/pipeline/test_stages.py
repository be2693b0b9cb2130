"""Stage edges: bad input becomes a recorded failure; products appear only on success."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from support.dicom_faults import edit, write_ct_series

from spine_idc import layout
from spine_idc.config import Config, SegmentConfig
from spine_idc.convert import ConvertOptions
from spine_idc.manifest import read_manifest
from spine_idc.outcome import read_failure
from spine_idc.pipeline import stages
from spine_idc.pipeline.segment_runner import SeriesJob

LOCAL = Config.from_dict({"source": "local"})


@pytest.fixture
def manifest(tmp_path):
    files = write_ct_series(tmp_path / "input" / "s")
    stages.make_manifest(LOCAL, tmp_path / "m.tsv", tmp_path / "lists", input_dir=tmp_path / "input")
    (row,) = read_manifest(tmp_path / "m.tsv")
    return row, row.series_key, files


def _segment(converted, key, out):
    """The segment stage on one series."""
    return stages.segment([SeriesJob(key, converted, out)], SegmentConfig.of("classical", spacing_mm=1.0))[key]


def test_convert_success_writes_products_only(manifest, tmp_path):
    row, key, _ = manifest
    out = tmp_path / "convert" / key
    assert stages.convert(row, ConvertOptions(min_slices=3), out) is None
    assert sorted(p.name for p in out.iterdir()) == [layout.SERIES_INFO, layout.VOLUME]
    assert read_failure(out) is None


def test_convert_failure_is_recorded_with_the_file(manifest, tmp_path):
    row, key, files = manifest
    files[5].unlink()  # deleted after the manifest was written
    out = tmp_path / "convert" / key
    failure = stages.convert(row, ConvertOptions(min_slices=3), out)
    assert failure.reason == "unreadable" and str(files[5]) in failure.path
    assert sorted(p.name for p in out.iterdir()) == [layout.FAILURE]
    assert json.loads((out / layout.FAILURE).read_text())["stage"] == "convert"


def test_unexpected_error_is_recorded_not_raised(manifest, tmp_path, monkeypatch):
    row, key, _ = manifest

    def broken(*args, **kwargs):  # stands in for a bug no check anticipated
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("spine_idc.convert.load_series", broken)
    out = tmp_path / "convert" / key
    failure = stages.convert(row, ConvertOptions(min_slices=3), out)
    assert failure.reason == "convert-error" and "ZeroDivisionError" in failure.message


def test_volume_without_spine_is_a_segment_failure(manifest, tmp_path):
    row, key, _ = manifest
    stages.convert(row, ConvertOptions(min_slices=3), tmp_path / "c")
    failure = _segment(tmp_path / "c", key, tmp_path / "s")
    assert failure is not None and failure.stage == "segment"
    assert not (tmp_path / "s" / layout.LABELS).exists()


def test_outputs_follow_the_umask(manifest, tmp_path):
    row, key, _ = manifest
    old = os.umask(0o022)
    try:
        stages.convert(row, ConvertOptions(min_slices=3), tmp_path / "c")
    finally:
        os.umask(old)
    assert (tmp_path / "c" / layout.VOLUME).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755


def test_invalid_long_uid_does_not_break_the_manifest(tmp_path):
    good = write_ct_series(tmp_path / "input" / "good")
    bad = write_ct_series(tmp_path / "input" / "bad")
    for f in bad:
        edit(f, SeriesInstanceUID="1." + "2" * 70)
    stages.make_manifest(LOCAL, tmp_path / "m.tsv", tmp_path / "lists", input_dir=tmp_path / "input")
    keys = sorted(r.series_key for r in read_manifest(tmp_path / "m.tsv"))
    assert len(keys) == 2 and keys[1].startswith("nouid-")
    assert np.all([len(k) <= 64 for k in keys])
    assert good


def test_segment_passes_a_convert_failure_on(manifest, tmp_path):
    row, key, files = manifest
    files[5].unlink()
    stages.convert(row, ConvertOptions(min_slices=3), tmp_path / "c")
    failure = _segment(tmp_path / "c", key, tmp_path / "s")
    assert failure.stage == "convert" and failure.reason == "unreadable"
    assert read_failure(tmp_path / "s") == failure
