"""Faults of the machine (a full disk, a read-only folder, no memory) are never a series' failure.

The disk is really full here: a small tmpfs is mounted over the stage's folder where this test
may mount one (root with CAP_SYS_ADMIN), else the job runs under a file-size limit
(``RLIMIT_FSIZE``), whose writes fail with ``EFBIG`` just as a full disk's fail with ``ENOSPC``.
Either way the job must fail, record nothing against the series, stamp nothing, and the next
run, with the room back, must do the work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spine_idc import layout
from spine_idc.config import Config
from spine_idc.errors import (MachineFault, SeriesError, TransientError, machine_fault,
                              raise_if_machine_fault)
from spine_idc.manifest import read_manifest
from spine_idc.pipeline import shards, stages

LOCAL = Config.from_dict({"source": "local", "shard_size": 10})
SHARD = Path("work/shards/s00000.tsv")


def _mount_tmpfs(folder: Path, size: int) -> bool:
    if os.geteuid() != 0:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


class SmallDisk:
    """``folder`` with room for ``size`` bytes (a tmpfs), or else jobs run under that file-size
    limit; :meth:`enlarge` gives the room back, as a person would after the failure."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self.tmpfs = _mount_tmpfs(folder, size)
        self.full = True

    def enlarge(self) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.folder)], check=True)
        self.full = False

    def limit(self) -> None:  # the job's preexec_fn
        if not self.tmpfs and self.full:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, hard))

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


@contextlib.contextmanager
def small_disk(folder: Path, size: int):
    disk = SmallDisk(folder, size)
    try:
        yield disk
    finally:
        disk.close()


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A phantom series converted and segmented (one shard), in a folder of its own."""
    from spine_idc.config import parse_section
    from spine_idc.phantom import write_phantom

    root = tmp_path_factory.mktemp("segmented")
    here = os.getcwd()
    os.chdir(root)
    try:
        write_phantom(0, root / "input" / "p", size="test")
        rows = stages.make_manifest(LOCAL, root / "m.tsv", root / "lists", input_dir=root / "input")
        shards.write_shards(rows, root / "work" / "shards", LOCAL.shard_size)
        shards.convert(SHARD, parse_section("{}", "convert"), Path("work/done/convert/s00000.json"))
        shards.segment(SHARD, parse_section("{}", "segment"), Path("work/done/segment/s00000.json"))
    finally:
        os.chdir(here)
    (row,) = read_manifest(root / "m.tsv")
    return root, row.series_key


@pytest.fixture
def work(segmented, tmp_path, monkeypatch):
    """A copy of ``segmented`` to work in (the current folder); the series' key."""
    root, key = segmented
    shutil.copytree(root, tmp_path / "w", symlinks=True)
    monkeypatch.chdir(tmp_path / "w")
    return key


def _job(stage: str, disk: SmallDisk) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spine_idc.cli", "shard", stage, "--shard", str(SHARD),
         "--options", "{}", "--out", f"work/done/{stage}/s00000.json"],
        capture_output=True, text=True, preexec_fn=disk.limit, timeout=120)


def _failed_for_the_machine(job: subprocess.CompletedProcess, key: str) -> None:
    assert job.returncode != 0, job.stderr
    assert f"series {key}" in job.stderr and "fault of this machine" in job.stderr, job.stderr
    assert "No space left on device" in job.stderr or "File too large" in job.stderr


def test_a_full_disk_fails_the_segment_job_records_nothing_and_the_rerun_segments(work):
    key = work
    out = layout.path("segment", key)
    shutil.rmtree(out)
    shards.stamp_path("segment", key).unlink()
    Path("work/done/segment/s00000.json").unlink()
    # Room for a failure record, not for the label maps.
    with small_disk(Path("work/segment"), 32 * 1024) as disk:
        _failed_for_the_machine(_job("segment", disk), key)
        assert not out.exists()
        assert not shards.stamp_path("segment", key).exists()
        assert not Path("work/done/segment/s00000.json").exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]

        disk.enlarge()
        job = _job("segment", disk)
        assert job.returncode == 0, job.stderr
        assert (out / layout.LABELS).exists() and not (out / layout.FAILURE).exists()
        assert json.loads(Path("work/done/segment/s00000.json").read_text())["series"] == {key: "ok"}


def test_a_full_disk_fails_the_finish_job_records_nothing_and_the_rerun_finishes(work):
    key = work
    # Room for the measurements (about 11 kB), not for the SEG (about 2 MB).
    with small_disk(Path("results/series"), 48 * 1024) as disk:
        _failed_for_the_machine(_job("finish", disk), key)
        assert not layout.path("finish", key).exists()  # no record that the cohort would list
        assert stages.series_failure(key) is None
        assert not shards.stamp_path("finish", key).exists()
        assert not layout.path("seg", key).exists()

        disk.enlarge()
        job = _job("finish", disk)
        assert job.returncode == 0, job.stderr
        assert layout.path("seg", key).exists() and layout.path("sr", key).exists()
        assert json.loads(Path("work/done/finish/s00000.json").read_text())["series"] == {key: "ok"}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE,
                                  errno.ENFILE, errno.ENOMEM, errno.EFBIG])
def test_machine_errnos_are_faults_of_the_machine(code):
    assert machine_fault(OSError(code, os.strerror(code))) is not None


def test_a_series_error_caused_by_the_machine_is_the_machine():
    try:
        try:
            raise OSError(errno.EIO, "Input/output error", "/data/1.dcm")
        except OSError as e:
            raise SeriesError("s", "unreadable", "cannot parse the file as DICOM") from e
    except SeriesError as err:
        with pytest.raises(MachineFault, match="series s") as raised:
            raise_if_machine_fault(err, "s", "convert")
    assert "Input/output error" in str(raised.value)
    assert machine_fault(MemoryError()) is not None


@pytest.mark.parametrize("exc", [ZeroDivisionError("boom"), FileNotFoundError(errno.ENOENT, "gone"),
                                 ValueError("bad"), TransientError("net"),
                                 SeriesError("s", "unreadable", "not DICOM")])
def test_faults_of_the_series_or_network_are_not_the_machine(exc):
    assert machine_fault(exc) is None
    raise_if_machine_fault(exc, "s", "convert")  # does not raise


def test_a_full_disk_fails_the_download_job_records_nothing_and_the_rerun_downloads(tmp_path, monkeypatch):
    """WADO-RS from a loopback server into a full work/download: it used to be recorded as
    download-error, stamped, and never fetched again."""
    from support.dicom_faults import write_ct_series
    from support.dicomweb_stub import DicomwebStub
    from spine_idc.manifest import ManifestRow, write_manifest

    monkeypatch.chdir(tmp_path)
    files = write_ct_series(tmp_path / "s", n_slices=12, rows=64, cols=64)
    import pydicom

    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, key = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    write_manifest([ManifestRow(series_key=key, series_instance_uid=key, study_instance_uid=study,
                                patient_id="P", modality="CT", series_description="", n_instances=12,
                                source="dicomweb")], SHARD)
    with DicomwebStub(instances={key: [f.read_bytes() for f in files]}) as stub:
        options = json.dumps({"source": "dicomweb", "dicomweb_url": stub.url, "dicomweb": {"auth": "none"}})
        with small_disk(Path("work/download"), 32 * 1024) as disk:  # the series is ~100 kB
            job = subprocess.run(
                [sys.executable, "-m", "spine_idc.cli", "shard", "download", "--shard", str(SHARD),
                 "--options", options, "--out", "work/done/download/s00000.json"],
                capture_output=True, text=True, preexec_fn=disk.limit, timeout=120)
            _failed_for_the_machine(job, key)
            assert not layout.path("download", key).exists()
            assert not shards.stamp_path("download", key).exists()

            disk.enlarge()
            job = subprocess.run(job.args, capture_output=True, text=True, timeout=120)
            assert job.returncode == 0, job.stderr
            assert len(list((layout.path("download", key) / "dicom").iterdir())) == 12
            assert json.loads(Path("work/done/download/s00000.json").read_text())["series"] == {key: "ok"}


def test_series_errors_cross_process_boundaries():
    """A failed series raised in a worker process reaches the parent as the same error: a
    process pool pickles it, and the default pickling of an exception would call
    ``cls(message)`` and break the pool instead."""
    import pickle

    from spine_idc.errors import SegmentationError

    e = SegmentationError("1.2.3", "no-spine", "no canal", path="x.dcm", hint="look")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is SegmentationError
    assert (back.series, back.reason, back.detail, back.path, back.hint, str(back)) == (
        e.series, e.reason, e.detail, e.path, e.hint, str(e))
