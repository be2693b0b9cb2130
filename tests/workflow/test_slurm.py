"""The cluster profiles (workflow/profiles/): each one parses, and the Slurm one runs the phantom
cohort on a live one-node Slurm cluster (``slurm_cluster``), one job cancelled half-way.

The cluster test needs root and the Debian packages slurm-wlm and munge, and skips without them.
Jobs run with this virtual environment on PATH: the node shares this machine's filesystem, as a
cluster's nodes share the login node's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from support import slurm_cluster
from support.trained_bundle import bundle  # noqa: F401  (a fixture)
from support.workflow_run import REPO, snakemake

PROFILES = REPO / "workflow" / "profiles"
PHANTOMS = ("source=phantom", "phantom={'count': 2, 'first_seed': 3, 'size': 'test'}")
# The environment the cloud profiles require (they name their image and bucket).
CLOUD_ENV = {"SPINE_IDC_IMAGE": "registry.example/spine-idc:test",
             "SPINE_IDC_STORAGE_PREFIX": "gs://example-bucket/spine-idc"}
# What a profile's executor needs installed to be parsed.
EXECUTOR_MODULES = {"gpu": "snakemake_executor_plugin_slurm",
                    "gcp-batch": "snakemake_executor_plugin_googlebatch",
                    "k8s": "snakemake_executor_plugin_kubernetes"}
EXECUTORS = {"gpu": "slurm", "gcp-batch": "googlebatch", "k8s": "kubernetes"}


# --- every profile parses ------------------------------------------------------------------


def _rendered(profile: str) -> dict:
    """The profile as Snakemake reads it: options, with `name=value` lists for resources."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(PROFILES / profile / "config.yaml") as stream:
        return ProfileConfigFileParser().parse(stream)


@pytest.mark.parametrize("profile", ["local", "gpu", "gcp-batch", "k8s"])
def test_profile_parses_as_snakemake_options(profile, monkeypatch):
    """Every key is an option Snakemake (with the executor's plugin) knows, every value parses."""
    if profile in EXECUTOR_MODULES:
        pytest.importorskip(EXECUTOR_MODULES[profile])
    from snakemake.cli import get_argument_parser

    for name, value in CLOUD_ENV.items():
        monkeypatch.setenv(name, value)
    get_argument_parser(profiles=[str(PROFILES / profile)]).parse_args([])  # exits if not
    options = _rendered(profile)
    if profile == "local":
        # one GPU in the machine; the segment rule asks for it only with a network backend
        assert "gpu=1" in options["resources"] and "set-resources" not in options
        return
    assert options["executor"] == EXECUTORS[profile]
    assert int(options["retries"]) >= 1  # a job lost with its node is submitted again
    # The segment rule asks for a GPU itself, and only for a network backend: a profile that
    # set one would give a classical segmentation a GPU machine too.
    assert not any(re.match(r"segment:(gpu|nvidia_gpu|machine_type|googlebatch_machine_type)=", entry)
                   for entry in options.get("set-resources", []))
    if profile in ("gcp-batch", "k8s"):  # no shared filesystem: files go through a bucket
        assert options["default-storage-provider"] == "gcs"
        assert options["default-storage-prefix"] == CLOUD_ENV["SPINE_IDC_STORAGE_PREFIX"]
        assert options["container-image"] == CLOUD_ENV["SPINE_IDC_IMAGE"]


def test_slurm_profile_takes_partitions_and_account_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPINE_IDC_SLURM_CPU_PARTITION", "all")  # a name that is also a builtin
    monkeypatch.setenv("SPINE_IDC_SLURM_GPU_PARTITION", "a100")
    monkeypatch.setenv("SPINE_IDC_SLURM_ACCOUNT", "spine")
    options = _rendered("gpu")
    assert {"slurm_partition='all'", "slurm_account='spine'"} <= set(options["default-resources"])
    # segment's partition and GPU come from the rule (a GPU only for a network backend)
    assert not any(entry.startswith(("segment:slurm_partition", "segment:gpu="))
                   for entry in options.get("set-resources", []))
    monkeypatch.delenv("SPINE_IDC_SLURM_CPU_PARTITION")
    monkeypatch.delenv("SPINE_IDC_SLURM_ACCOUNT")
    options = _rendered("gpu")  # the cluster's default partition, the plugin's guess of account
    assert not any(entry.startswith(("slurm_partition", "slurm_account"))
                   for entry in options["default-resources"])


@pytest.mark.parametrize("profile", ["gcp-batch", "k8s"])
def test_cloud_profile_names_the_variable_it_misses(profile, monkeypatch):
    from configargparse import ConfigFileParserException

    monkeypatch.delenv("SPINE_IDC_IMAGE", raising=False)
    with pytest.raises(ConfigFileParserException, match="SPINE_IDC_IMAGE"):
        _rendered(profile)


@pytest.mark.parametrize("profile", ["local", "gpu"])
def test_dry_run_with_profile(profile, tmp_path):
    """The workflow accepts the profile (rule names it does not have are ignored)."""
    if profile in EXECUTOR_MODULES:
        pytest.importorskip(EXECUTOR_MODULES[profile])
    out = snakemake(tmp_path, f"--profile={PROFILES / profile}", "--dry-run", *PHANTOMS)
    assert "phantoms" in out.stdout


# --- the phantom cohort on a live Slurm cluster ---------------------------------------------

SLURM_OPTIONS = (
    f"--profile={PROFILES / 'gpu'}",
    # No accounting database on the test cluster: job states come from squeue.
    "--slurm-status-command=squeue",
    # Phantom jobs take seconds; the plugin would first look after 40.
    "--slurm-init-seconds-before-status-checks=1",
)
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) ")
# A job block in Snakemake's log: `rule x:` or `checkpoint x:` (not `localrule x:`), its jobid.
REMOTE_JOB = re.compile(r"^(?:rule|checkpoint) \w+:\n(?:    .*\n)*?    jobid: (\d+)$", re.M)


@pytest.fixture
def cluster(monkeypatch):
    pytest.importorskip(EXECUTOR_MODULES["gpu"])
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(slurm_cluster.slurm_cluster())
        except slurm_cluster.ClusterBusy as busy:
            pytest.skip(str(busy))
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
        monkeypatch.setenv("SPINE_IDC_SLURM_CPU_PARTITION", slurm_cluster.CPU_PARTITION)
        monkeypatch.setenv("SPINE_IDC_SLURM_GPU_PARTITION", slurm_cluster.GPU_PARTITION)
        monkeypatch.setenv("SPINE_IDC_SLURM_GPU_THREADS", "1")  # the node may have 2 CPUs
        yield cluster


@pytest.mark.slow
@pytest.mark.slurm
def test_phantom_cohort_on_slurm_survives_a_cancelled_job(cluster, bundle, tmp_path):
    """The monai backend (a network trained in the tests; on this machine's CPU), so that the
    segment rule asks Slurm for the GPU partition and a GPU (the node's stand-in GRES)."""
    pytest.importorskip("monai")
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    cohort = ("source=phantom", "phantom={'count': 2, 'first_seed': 3, 'levels': ['L1', 'sacrum']}",
              f"segment={{'backend': 'monai', 'model': '{bundle}'}}")
    run = snakemake(on_slurm, *SLURM_OPTIONS, *cohort, popen=True)
    try:
        cancelled = _cancel_first_running(cluster, "segment", run)
        # the reference, while Slurm carries on; one thread for segment as on the cluster, so
        # that the network's sums are made in the same order
        snakemake(local, "--set-threads=segment=1", *cohort)
        assert run.wait(timeout=420) == 0, _log(on_slurm)[-6000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait()
    log = _log(on_slurm)
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = cluster.jobs(name=run_id)

    # Every job that was not a local rule went through Slurm, and nothing else did.
    submitted = SUBMITTED.findall(log)
    assert set(REMOTE_JOB.findall(log)) == {snakemake_id for snakemake_id, _ in submitted}
    assert sorted(job.job_id for job in jobs) == sorted(slurm_id for _, slurm_id in submitted)
    assert {"convert", "segment", "finish"} <= {job.rule for job in jobs}
    assert not {"phantoms", "manifest", "cohort"} & {job.rule for job in jobs}  # local rules
    # Segmentation on the GPU partition with a GPU; everything else on the CPU partition.
    for job in jobs:
        if job.rule == "segment":
            assert job.partition == slurm_cluster.GPU_PARTITION
            assert "gpu:1" in cluster.details(job.job_id)["TresPerJob"]
        else:
            assert job.partition == slurm_cluster.CPU_PARTITION, job

    # The cancelled job was submitted again (the profile's retries) and finished; all else once.
    assert [job.state for job in jobs if job.job_id == cancelled.job_id] == ["CANCELLED"]
    assert f"SLURM-job '{cancelled.job_id}' failed" in log and "Trying to restart job" in log
    again = [job for job in jobs if job.comment == cancelled.comment
             and job.job_id != cancelled.job_id]
    assert [job.state for job in again] == ["COMPLETED"]
    assert all(job.state == "COMPLETED" for job in jobs if job.job_id != cancelled.job_id)

    # The same products as a local run: same files, same UIDs, same measurements, no failures.
    assert _results(on_slurm) == _results(local)
    assert _instance_uids(on_slurm) == _instance_uids(local)
    pd.testing.assert_frame_equal(_measurements(on_slurm), _measurements(local))
    assert pd.read_csv(on_slurm / "results" / "cohort" / "failures.csv").empty

    # A second run finds everything done and submits nothing.
    out = snakemake(on_slurm, *SLURM_OPTIONS, *cohort)
    assert "Nothing to be done" in out.stdout + out.stderr
    assert len(cluster.jobs()) == len(jobs)


def _cancel_first_running(cluster, rule: str, run: subprocess.Popen,
                          timeout: float = 240) -> slurm_cluster.SlurmJob:
    """scancel the first job of ``rule`` seen RUNNING (the job, not the workflow, is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the workflow ended (exit {run.returncode}) before {rule} ran"
        running = [job for job in cluster.jobs() if job.rule == rule and job.state == "RUNNING"]
        if running:
            cluster.cancel(running[0].job_id)
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no {rule} job ran within {timeout:.0f} s")


def _log(workdir: Path) -> str:
    """The log of the first run in ``workdir``."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    return logs[0].read_text() if logs else "(no Snakemake log)"


def _results(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*")
                  if p.is_file())


def _instance_uids(workdir: Path) -> dict[str, str]:
    return {str(p.relative_to(workdir)): pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in sorted((workdir / "results" / "series").rglob("*.dcm"))}


def _measurements(workdir: Path) -> pd.DataFrame:
    table = pd.read_parquet(workdir / "results" / "cohort" / "measurements.parquet")
    return table.sort_values(["series_key", "label_value"]).reset_index(drop=True)
