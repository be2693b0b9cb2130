"""The whole chain through Snakemake: phantoms, a mixed local folder with bad series, a killed run.

These run the real workflow (`snakemake` as a subprocess, the `spine-idc` verbs, the real
segmenter and highdicom writers) on small phantoms, so they are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from spine_idc.phantom import write_phantom

from support.workflow_run import _keys, check_outputs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, "source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}")
    return workdir


def test_phantom_demo_end_to_end(demo_run):
    keys = _keys(demo_run)
    assert len(keys) == 2
    table = check_outputs(demo_run, keys)
    assert (table["volume_ml"] > 0).all()
    assert table["identified"].any()
    failures = pd.read_csv(demo_run / "results" / "cohort" / "failures.csv")
    assert failures.empty


def test_rerun_does_nothing(demo_run):
    out = snakemake(demo_run, "source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_lost_products_are_made_again_after_segmentation(tmp_path, demo_run):
    """Killed after segmenting, part-way through SEG/SR: the next run makes them again."""
    work = tmp_path / "copy"
    shutil.copytree(demo_run, work, symlinks=True)
    key = _keys(work)[0]
    # a finish job killed part-way: some products written, its shard marker (and the cohort) not
    for lost in (work / "results" / "series" / key / "seg.dcm", work / "results" / "series" / key / "sr.dcm",
                 work / "work" / "measure" / f"{key}.json", *(work / "work" / "done" / "finish").iterdir(),
                 *(work / "results" / "cohort").iterdir()):
        lost.unlink()
    snakemake(work, "source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}")
    check_outputs(work, _keys(work))


def test_an_enlarged_cohort_processes_only_the_new_series(tmp_path, demo_run):
    """Two phantoms done; ask for three: the shards are re-cut, only the new series is computed."""
    work = tmp_path / "copy"
    shutil.copytree(demo_run, work, symlinks=True)
    before = {k: (work / "results" / "series" / k / "seg.dcm").stat().st_mtime_ns for k in _keys(work)}
    snakemake(work, "source=phantom", "phantom={'count': 3, 'first_seed': 3, 'size': 'test'}", "shard_size=2")
    keys = _keys(work)
    assert len(keys) == 3 and set(before) < set(keys)
    check_outputs(work, keys)
    for key, mtime in before.items():  # not computed again
        assert (work / "results" / "series" / key / "seg.dcm").stat().st_mtime_ns == mtime


# --- a local folder with every kind of bad series ------------------------------------------


def _copy_series(src: list[Path], dest: Path, tag: str) -> list[Path]:
    """Copy a series under new UIDs (a distinct series), files named without order."""
    dest.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[tag, "series"])
    out = []
    for i, f in enumerate(src):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = dest / f"{tag}-{i:03d}.dcm"
        ds.save_as(target)
        out.append(target)
    return out


def _by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(files, fn):
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def make_bad_folder(root: Path) -> dict[str, str]:
    """Good phantoms mixed with one series of each fault; returns {series_key: expected reason}."""
    base = root / "base"
    good_a, _ = write_phantom(3, base / "a")
    good_b, _ = write_phantom(4, base / "b")
    source = root / "input"
    mixed = source / "scanner" / "mixed"
    expected: dict[str, str] = {}
    for files in (good_a, good_b):  # two good series interleaved in one folder
        copied = _copy_series(files, mixed, files[0].parent.parent.name)
        expected[pydicom.dcmread(copied[0]).SeriesInstanceUID] = "ok"
    (mixed / "README.txt").write_text("not DICOM")

    def fault(tag: str, reason: str) -> list[Path]:
        files = _copy_series(good_a, source / tag, tag)
        expected[pydicom.dcmread(files[0]).SeriesInstanceUID] = reason
        return files

    files = fault("corrupt", "unreadable")
    victim = _by_position(files)[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    _edit(fault("notct", "not-ct"), lambda ds: setattr(ds, "Modality", "MR"))
    for f in _by_position(fault("short", "too-few-slices"))[4:]:
        f.unlink()
    files = _by_position(fault("gap", "missing-slices"))
    files[len(files) // 2].unlink()
    _edit(fault("scout", "localizer"), lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    files = _by_position(fault("dup", "duplicate-uid"))
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.dcmread(files[4]).SOPInstanceUID
    ds.save_as(files[3])
    files = fault("size", "mixed-geometry")
    ds = pydicom.dcmread(files[0])
    arr = ds.pixel_array[:-8, :]
    ds.Rows = arr.shape[0]
    ds.PixelData = arr.tobytes()
    ds.save_as(files[0])
    # blank UIDs: grouped per folder under a nouid- key
    blank = fault("blank", "blank-uid")
    del expected[pydicom.dcmread(blank[0]).SeriesInstanceUID]
    _edit(blank, lambda ds: (setattr(ds, "SeriesInstanceUID", ""), setattr(ds, "SOPInstanceUID", "")))
    expected["nouid"] = "blank-uid"
    shutil.rmtree(base)
    return expected


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """The bad folder through the workflow with the default configuration."""
    root = tmp_path_factory.mktemp("bad")
    expected = make_bad_folder(root)
    out = snakemake(root, "source=local", f"input_dir={root / 'input'}")
    return root, expected, out


def test_local_folder_with_bad_series(bad_run):
    tmp_path, expected, _ = bad_run
    good = sorted(k for k, r in expected.items() if r == "ok")
    check_outputs(tmp_path, good)
    failures = pd.read_csv(tmp_path / "results" / "cohort" / "failures.csv", dtype=str)
    got = dict(zip(failures["series_key"], failures["reason"]))
    nouid = [k for k in got if k.startswith("nouid-")]
    assert len(nouid) == 1
    got["nouid"] = got.pop(nouid[0])
    assert got == {k: r for k, r in expected.items() if r != "ok"}
    for _, row in failures.iterrows():  # the shard's job log names the series, reason and file
        log = "".join(p.read_text() for p in (tmp_path / "logs" / row["stage"]).glob("*.log"))
        assert f"series {row['series_key']}: {row['message']}" in log
        assert row["message"]
    assert failures.loc[failures["reason"] == "unreadable", "path"].notna().all()


def test_fail_on_series_errors(bad_run, tmp_path):
    """Failed series leave the exit status 0 by default; with fail_on_series_errors: true the
    run exits non-zero, after the cohort tables are written, saying so in one line."""
    root, expected, default = bad_run
    assert default.returncode == 0
    n_failed = sum(r != "ok" for r in expected.values())
    assert f"{n_failed} failed" in default.stdout + default.stderr  # the closing summary
    work = tmp_path / "copy"
    shutil.copytree(root, work, symlinks=True)
    cohort = work / "results" / "cohort"
    tables = {p.name: p.read_bytes() for p in cohort.iterdir() if p.suffix == ".csv"}
    shutil.rmtree(cohort)  # the cohort job runs again, then the run fails
    out = snakemake(work, "source=local", f"input_dir={root / 'input'}", "fail_on_series_errors=true",
                    check=False)
    assert out.returncode != 0
    console = out.stdout + out.stderr
    said = [line for line in console.splitlines() if "fail_on_series_errors is set" in line]
    assert said and f"{n_failed} of {len(expected)} series failed" in said[0], console[-3000:]
    assert sorted(p.name for p in cohort.iterdir()) == [  # written, and kept
        "failures.csv", "measurements.csv", "measurements.parquet"]
    assert {p.name: p.read_bytes() for p in cohort.iterdir() if p.suffix == ".csv"} == tables
    assert len(pd.read_parquet(cohort / "measurements.parquet")) > 0


def test_a_failed_job_says_why_on_the_console(tmp_path, demo_run):
    """The reason of a failed job used to be only in logs/<stage>/<shard>.log; Snakemake's
    console said "Look above for error messages" above nothing.  Here a model folder that passes
    the config check but whose weights are not a checkpoint fails the segment job."""
    pytest.importorskip("monai")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({
        "architecture": "SegResNet", "network": {"out_channels": 2}, "checkpoint": "model.pt",
        "spacing_mm": [6, 6, 6], "roi_size": [48, 48, 48], "orientation": "RAS",
        "intensity": {"kind": "range", "a_min": -1000, "a_max": 1500, "b_min": 0, "b_max": 1},
        "labels": {"1": "L1"}}))
    (model / "model.pt").write_bytes(b"not a checkpoint")
    work = tmp_path / "copy"
    shutil.copytree(demo_run, work, symlinks=True)
    out = snakemake(work, "source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}",
                    f"segment={{'backend': 'monai', 'model': '{model}', 'device': 'cpu'}}", check=False)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("spine-idc shard segment")]
    assert len(said) == 1, out.stderr[-3000:]
    assert "error: model" in said[0] and "cannot read model.pt" in said[0]
    log = "".join(p.read_text() for p in (work / "logs" / "segment").glob("*.log"))
    assert "cannot read model.pt" in log

def test_killed_run_resumes(tmp_path, demo_run):
    config = ("source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}")
    proc = snakemake(tmp_path, *config, popen=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any((tmp_path / "work" / "segment").glob("*")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job tree, mid-segmentation
    proc.wait()
    assert not (tmp_path / "results" / "cohort").exists()
    snakemake(tmp_path, "--unlock", *config)  # a killed Snakemake leaves its lock behind
    snakemake(tmp_path, *config)
    keys = _keys(tmp_path)
    resumed = check_outputs(tmp_path, keys).sort_values(["series_key", "label_value"])
    reference = pd.read_parquet(demo_run / "results" / "cohort" / "measurements.parquet")
    reference = reference.sort_values(["series_key", "label_value"])
    cols = ["series_key", "level", "volume_ml", "trabecular_mean_hu"]
    pd.testing.assert_frame_equal(resumed[cols].reset_index(drop=True), reference[cols].reset_index(drop=True))
    for key in keys:  # deterministic UIDs: the resumed SEG is the same instance
        a = pydicom.dcmread(tmp_path / "results" / "series" / key / "seg.dcm", stop_before_pixels=True)
        b = pydicom.dcmread(demo_run / "results" / "series" / key / "seg.dcm", stop_before_pixels=True)
        assert a.SOPInstanceUID == b.SOPInstanceUID


def test_config_strings_with_braces_are_not_wildcards(tmp_path, demo_run):
    """A local folder named with braces and the documented viewer template placeholders used
    to stop the run with a WildcardError: config reaches the rules as it is."""
    folder = tmp_path / "in{x}"
    shutil.copytree(demo_run / "resources" / "phantoms", folder)
    work = tmp_path / "run"
    snakemake(work, "source=local", f"input_dir={folder}",
              "publish={'viewer_template': 'http://viewer.example/{study}/{series}'}")
    keys = _keys(work)
    assert len(keys) == 2
    check_outputs(work, keys)


DIGEST = Path(__file__).parents[1] / "support" / "data" / "demo_digest.json"
DIGEST_COLUMNS = ["level", "label_value", "voxel_count", "volume_ml", "trabecular_mean_hu",
                  "body_height_anterior_mm", "body_height_middle_mm", "body_height_posterior_mm",
                  "name_confidence", "qc_pass"]


def _plain(value):
    """A table cell as JSON holds it: floats rounded to 3 decimals, NaN as None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 3)
    return value


def _demo_digest(workdir: Path) -> dict:
    """What the demo's outputs are, compactly: each series' SEG and SR identity, the SEG's
    segments and a hash of its pixel data, and the measurements of the cohort table."""
    import hashlib

    out = {}
    table = pd.read_parquet(workdir / "results" / "cohort" / "measurements.parquet")
    for key in sorted(_keys(workdir)):
        folder = workdir / "results" / "series" / key
        seg = pydicom.dcmread(folder / "seg.dcm")
        sr = pydicom.dcmread(folder / "sr.dcm", stop_before_pixels=True)
        rows = table[table["series_key"] == key].sort_values("label_value")[DIGEST_COLUMNS]
        out[key] = {
            "seg_sop_instance_uid": str(seg.SOPInstanceUID),
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "segments": [str(s.SegmentLabel) for s in seg.SegmentSequence],
            "seg_pixel_sha256": hashlib.sha256(seg.PixelData).hexdigest(),
            "measurements": [{k: _plain(v) for k, v in row.items()}
                             for row in rows.to_dict("records")],
        }
    return out


def test_demo_outputs_match_the_stored_digest(demo_run):
    """The demo's SEG and SR (UIDs, segments, pixel data) and measurements are what they were
    when ``tests/support/data/demo_digest.json`` was written: a restructuring of the code must not
    change them.  A change that means to alter the outputs rewrites the digest knowingly:
    ``SPINE_IDC_WRITE_DIGEST=1 pytest tests/workflow/test_workflow.py -k digest``, and says why in
    its commit."""
    import json

    digest = _demo_digest(demo_run)
    if os.environ.get("SPINE_IDC_WRITE_DIGEST") == "1":
        DIGEST.write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
    stored = json.loads(DIGEST.read_text())
    assert digest.keys() == stored.keys()
    for key in stored:
        for field in stored[key]:
            assert digest[key][field] == stored[key][field], f"{key}: {field} changed"
