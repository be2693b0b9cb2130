"""The workflow as the gcp-batch and k8s profiles run it: no shared filesystem.

Each job starts in a new empty folder, deploys the workflow's sources from the default storage,
fetches its declared inputs from it and uploads its declared outputs; its folder is deleted when
it ends (``tests/support/executor_plugins``: Snakemake's own remote-job machinery, run as local
processes instead of pods).  The default storage is Snakemake's real GCS storage plugin, the
plugin those profiles name, against a GCS emulator on loopback; the series come from moto's S3
server in IDC's bucket layout, fetched by the real s5cmd, as in ``test_workflow_remote``.

What this shows: every file a stage needs from an earlier one travels in a declared output (the
shard packs, ``spine_idc.pipeline.packs``), and the results are the same as on a shared filesystem.
Marked ``slow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import requests

from support.gcs_server import gcs_emulator_available, start_gcs
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc
from spine_idc.phantom import write_phantom
from test_workflow_remote import _uid, write_standin_index
from support.trained_bundle import LEVELS, bundle  # noqa: F401  (a fixture)
from support.workflow_run import BIN, REPO, check_outputs, snakemake

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not gcs_emulator_available(), reason="gcp-storage-emulator is not installed")]

PLUGINS = Path(__file__).parents[1] / "support" / "executor_plugins"
BUCKET = "spine-idc-test"
GPU_ASKS = ("gpu", "nvidia_gpu", "machine_type", "googlebatch_machine_type")


def _clone(dest: Path) -> Path:
    """What a user runs from: the repository's workflow and config (no package, no tests)."""
    shutil.copytree(REPO / "workflow", dest / "workflow", symlinks=False)
    shutil.copy(REPO / "config.yaml", dest / "config.yaml")
    return dest


def _cloud_snakemake(clone: Path, profile: str, gcs, jobs_dir: Path, *args: str,
                     preempt: str = "") -> subprocess.CompletedProcess:
    """``snakemake --profile workflow/profiles/<profile>`` as documented, with this file's
    executor in place of the profile's (the rest of the profile applies: storage, retries)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", "workflow/Snakefile", "--configfile", "config.yaml",
           "--profile", f"workflow/profiles/{profile}", "--executor", "emptydir", "--jobs", "2",
           *[a for a in args if a.startswith("--")], "--config", *[a for a in args if not a.startswith("--")]]
    env = {**os.environ, **gcs.client_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           # the profile's required site variables
           "SPINE_IDC_IMAGE": "registry.example/spine-idc:test",
           "SPINE_IDC_STORAGE_PREFIX": f"gs://{BUCKET}/run",
           "PYTHONPATH": str(PLUGINS), "SPINE_IDC_EMPTYDIR_ROOT": str(jobs_dir),
           "SPINE_IDC_EMPTYDIR_PASS": "STORAGE_EMULATOR_HOST", "SPINE_IDC_EMPTYDIR_PREEMPT": preempt}
    out = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(jobs_dir.glob("*.log")))
        raise AssertionError(f"snakemake failed:\n{out.stderr[-5000:]}\n--- job logs ---\n{logs}")
    return out


def _asked(jobs_dir: Path) -> dict[str, list[dict]]:
    """What each rule's jobs asked the executor for (rule -> resources of each job)."""
    asked: dict[str, list[dict]] = {}
    for path in jobs_dir.glob("*.json"):
        job = json.loads(path.read_text())
        asked.setdefault(job["rule"], []).append(job["resources"])
    return asked


@pytest.mark.parametrize("profile,backend,publish", [("gcp-batch", "classical", True), ("k8s", "monai", False)])
def test_idc_cohort_without_a_shared_filesystem(profile, backend, publish, tmp_path, request):
    """source=idc through jobs that share only a GCS bucket: two series finish, one with an
    instance missing from IDC's bucket is recorded as failed, a segment job killed half-way (a
    reclaimed spot VM) is run again, and the measurements, SEG segments and failures equal
    those of a run on a shared filesystem.  The network's model folder comes from the bucket
    (segment.model: gs://...), fetched into each segment job.  Only a network backend
    asks for a GPU (k8s: the GPU pool), and only for segment.  With publishing, the SEG and SR
    reach Orthanc (DICOMweb) with the source CT, and the cohort table has the viewer links."""
    with contextlib.ExitStack() as stack:
        store = None
        if publish:
            if not orthanc_available():
                pytest.skip(UNAVAILABLE_REASON)
            store = stack.enter_context(start_orthanc(tmp_path / "orthanc"))
        _cohort_without_a_shared_filesystem(profile, backend, store, tmp_path, request)


def _cohort_without_a_shared_filesystem(profile, backend, store, tmp_path, request):
    from support.s3_server import IDC_BUCKET, start_moto, upload_series

    segment, levels, model = f"segment={{'backend': '{backend}'}}", None, None
    if backend == "monai":  # the network trained by the tests, on this CPU (device auto)
        pytest.importorskip("monai")
        model = request.getfixturevalue("bundle")
        levels = LEVELS  # what it was trained on
    made = {name: write_phantom(seed, tmp_path / "phantoms" / name, levels=levels)[0]
            for name, seed in (("good-a", 0), ("good-b", 4), ("missing", 2))}
    with start_moto(tmp_path) as s3, start_gcs(tmp_path, BUCKET) as gcs:
        listed = []
        for name, files in made.items():
            uploaded = upload_series(s3.url, IDC_BUCKET, files[:-1] if name == "missing" else files)
            listed.append((files, uploaded.location, len(files)))
        index = write_standin_index(tmp_path / "idc_index.parquet", listed)
        config = ("source=idc", f"idc={{'index': '{index}'}}",
                  "query={'collections': ['spine_phantoms'], 'max_series': 'null'}",
                  f"download={{'endpoint_url': '{s3.url}', 'retries': 0}}", "shard_size=2",
                  *([f"publish={{'to': 'dicomweb', 'url': '{store.url}', 'include_source': True}}"] if store else []),
                  # one thread for segment in both runs, so that a network sums in the same order
                  "--set-threads=segment=1")
        in_cloud = here = segment
        if model is not None:  # in the cloud the model folder comes from the bucket
            gcs.upload_folder(model, "models/spine")
            in_cloud = f"segment={{'backend': 'monai', 'model': 'gs://{BUCKET}/models/spine'}}"
            here = f"segment={{'backend': 'monai', 'model': '{model}'}}"
        clone = _clone(tmp_path / "clone")
        # The first segment job is killed while it runs, as when a spot VM is reclaimed: the
        # profile's retries submit it again, into a new empty folder.
        _cloud_snakemake(clone, profile, gcs, tmp_path / "jobs", *config, in_cloud, preempt="segment")
        again = _cloud_snakemake(clone, profile, gcs, tmp_path / "again", *config, in_cloud)
        shared = tmp_path / "shared"
        snakemake(shared, *config, here)

    assert "Nothing to be done" in again.stdout + again.stderr  # all of it is in the bucket
    bucket = tmp_path / "gcs" / ".cloudstorage" / BUCKET / "run"
    keys = sorted(pd.read_csv(bucket / "results" / "manifest.tsv", sep="\t", dtype=str)["series_key"])
    assert len(keys) == 3
    # Nothing per series crossed between jobs except inside the declared packs ...
    assert sorted(p.name for p in (bucket / "work" / "packs").iterdir()) == [
        "convert", "download", "finish", *(["publish"] if store else []), "segment"]
    assert sorted(p.name for p in (bucket / "work" / "packs" / "finish").iterdir()) == ["s00000.tar", "s00001.tar"]
    assert not (bucket / "work" / "convert").exists()
    assert not list(clone.glob("work/convert/*/volume.nii.gz"))  # only series.json came back
    assert not (bucket / "work" / "done").exists()  # the markers are in the packs: one file a job
    # ... and the cohort, on the submitting machine, unpacked the finished series.
    local = clone / ".snakemake" / "storage" / "gcs" / BUCKET / "run"
    failures = pd.read_csv(local / "results" / "cohort" / "failures.csv", dtype=str)
    missing = _uid(made["missing"])
    assert list(zip(failures["series_key"], failures["reason"])) == [(missing, "incomplete-download")]
    done = [k for k in keys if k != missing]
    made_by_uid = {_uid(files): files for files in made.values()}
    check_outputs_at(clone, local, done)

    # The same answers as on a shared filesystem.
    cloud = pd.read_parquet(local / "results" / "cohort" / "measurements.parquet")
    here = pd.read_parquet(shared / "results" / "cohort" / "measurements.parquet")
    columns = [c for c in here.columns if c not in ("seg_path", "sr_path")]
    pd.testing.assert_frame_equal(cloud[columns].reset_index(drop=True), here[columns].reset_index(drop=True))
    for key in done:
        a = pydicom.dcmread(clone / "results" / "series" / key / "seg.dcm")
        b = pydicom.dcmread(shared / "results" / "series" / key / "seg.dcm")
        assert a.PixelData == b.PixelData
        assert [s.SegmentLabel for s in a.SegmentSequence] == [s.SegmentLabel for s in b.SegmentSequence]

    if store is not None:  # published from the cloud run (the shared run found them there)
        assert (cloud["viewer_url"] != "").all()
        for key in done:
            seg = pydicom.dcmread(clone / "results" / "series" / key / "seg.dcm", stop_before_pixels=True)
            found = requests.get(f"{store.url}/studies/{seg.StudyInstanceUID}/series", timeout=30).json()
            assert sorted(item["00080060"]["Value"][0] for item in found) == ["CT", "SEG", "SR"]
            record = json.loads((clone / "work" / "publish" / f"{key}.json").read_text())
            assert {i["status"] for i in record["instances"]} == {"stored"}  # by the cloud run
            assert len(record["instances"]) == len(made_by_uid[key]) + 2  # the CT, SEG and SR

    # The preempted segment job ran again, and only it.
    assert (tmp_path / "jobs" / "preempted").read_text().startswith("segment ")
    asked = _asked(tmp_path / "jobs")
    assert len(asked["segment"]) == 3 and len(asked["finish"]) == 2  # 2 shards, one segment twice

    # What the jobs asked for: a GPU for a network's segment only.
    assert sorted(asked) == ["convert", "download", "finish", *(["publish"] if store else []), "segment"]
    for rule, jobs in asked.items():
        for resources in jobs:
            if rule == "segment" and backend == "monai":
                assert resources["gpu"] == 1 and resources["gpu_manufacturer"] == "nvidia"
                assert resources["machine_type"] == "g2-standard-8" and resources["scale"] == 0
                assert resources["nvidia_gpu"] == "nvidia-l4"
            else:
                assert not set(GPU_ASKS) & set(resources), (rule, resources)


def check_outputs_at(clone: Path, local: Path, keys: list[str]) -> None:
    """:func:`check_outputs` where the cohort table is a storage copy and the SEGs are unpacked."""
    view = clone / "view"
    (view / "results").mkdir(parents=True)
    (view / "results" / "series").symlink_to(clone / "results" / "series")
    (view / "results" / "cohort").symlink_to(local / "results" / "cohort")
    check_outputs(view, keys)


@pytest.mark.parametrize("source", ["phantom", "local"])
def test_a_source_on_this_machine_is_refused_without_a_shared_filesystem(source, tmp_path):
    """Jobs elsewhere could not read it: say so before anything runs."""
    args = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
            "--configfile", str(REPO / "config.yaml"), "-n", "--default-storage-provider", "gcs",
            "--default-storage-prefix", "gs://nowhere/run", "--config", f"source={source}",
            f"input_dir={tmp_path}"]
    # The storage plugin only needs to be constructible: an emulator address nobody listens on.
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "SNAKEMAKE_STORAGE_GCS_PROJECT": "x"}
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"source: {source} reads files on this machine" in text, text[-2000:]


def test_an_empty_cohort_without_a_shared_filesystem(tmp_path):
    """A query that selects nothing ends in empty tables, as on a shared filesystem."""
    from support.s3_server import start_moto

    index = write_standin_index(tmp_path / "idc_index.parquet", [])
    with start_moto(tmp_path) as s3, start_gcs(tmp_path, BUCKET) as gcs:  # the endpoint is probed
        _cloud_snakemake(_clone(tmp_path / "clone"), "k8s", gcs, tmp_path / "jobs", "source=idc",
                         f"idc={{'index': '{index}'}}", "query={'collections': ['spine_phantoms']}",
                         f"download={{'endpoint_url': '{s3.url}'}}")
    cohort = tmp_path / "gcs" / ".cloudstorage" / BUCKET / "run" / "results" / "cohort"
    assert pd.read_parquet(cohort / "measurements.parquet").empty
    assert pd.read_csv(cohort / "failures.csv").empty
    assert not list((tmp_path / "jobs").glob("*.json"))  # no shard job was submitted
