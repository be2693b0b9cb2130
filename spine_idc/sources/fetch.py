"""Fetch one series of the manifest into a folder that exists only when the series is whole.

Each remote source's :meth:`~.base.Source.fetch` (s5cmd from IDC's buckets, :mod:`.idc.s3`;
WADO-RS, :mod:`.dicomweb.series`) copies what it holds into a temporary folder;
:func:`~.verify.verify_series` then checks it against the manifest; only then is the folder
renamed into place.  A partial series therefore never reaches conversion, and a killed download
leaves nothing behind but a temporary folder.

Faults are of two kinds:

* transient (:class:`~spine_idc.errors.TransientError`: connection refused or cut, 5xx,
  timeouts: ``download.timeout_s`` bounds one whole attempt, however slowly data arrive).  The tool retries inside one attempt (s5cmd's ``--retry-count``, HTTP retries with
  backoff); if it still fails, the attempt raises, and Snakemake runs the job again
  (``download.retries``) after a backoff.  The last attempt records the failure instead, so the
  rest of the cohort finishes;
* permanent (:class:`~spine_idc.errors.SeriesError`: missing or extra instances, a damaged
  object, a stray instance of another series, a series the server does not have).  Verification
  failures are fetched once more within the attempt (a damaged transfer can pass), then
  recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from ..atomic import atomic_dir, write_text
from ..errors import SeriesError, SpineIdcError, TransientError, raise_if_machine_fault
from ..outcome import Failure, write_failure
from . import get_source
from .base import Remote
from .verify import verify_series

log = logging.getLogger(__name__)

DICOM_DIR = "dicom"
INFO = "download.json"


def _fetch(row, dest: Path, remote: Remote, deadline: float):
    """Copy the series into ``dest`` by ``deadline`` (``time.monotonic()``), or raise
    :class:`TransientError` saying it timed out."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransientError(f"series {row.series_key}: download timed out after "
                             f"{remote.download.timeout_s:g} s (download.timeout_s)")
    return get_source(row.source).fetch(row, dest, remote, left)


def backoff_s(attempt: int, base_s: float) -> float:
    """Wait before attempt ``attempt`` (1-based): none, then base, 2*base, 4*base... up to 5 min."""
    return 0.0 if attempt <= 1 else min(300.0, base_s * 2 ** (attempt - 2))


def download_series(row, out_dir: Path, remote: Remote, *, attempt: int = 1) -> Failure | None:
    """Fetch, verify and publish ``out_dir/dicom/`` plus ``download.json``, or ``failure.json``.

    Raises :class:`TransientError` when a network fault persists and attempts remain
    (``attempt <= download.retries``); on the last attempt the fault is recorded instead.
    """
    opts = remote.download
    last_attempt = attempt > opts.retries
    # Unreachable: raise at once, record nothing, no waiting.  Not being able to reach the
    # source at all says nothing about a series, so it is never the series' failure.
    get_source(row.source).probe(remote)
    wait = backoff_s(attempt, opts.backoff_s)
    if wait:
        log.info("series %s: attempt %d, waiting %.0f s first", row.series_key, attempt, wait)
        time.sleep(wait)
    deadline = time.monotonic() + opts.timeout_s  # one whole attempt: both tries, verification
    with atomic_dir(out_dir) as tmp:
        try:
            for verify_try in (1, 2):
                dest = tmp / DICOM_DIR
                if dest.exists():
                    shutil.rmtree(dest)
                dest.mkdir()
                started = time.monotonic()
                stats = _fetch(row, dest, remote, deadline)
                try:
                    verified = verify_series(dest, series_key=row.series_key,
                                             series_instance_uid=row.series_instance_uid,
                                             n_instances=row.n_instances)
                    break
                except SeriesError as err:  # the tool's own SeriesErrors are not re-fetched
                    if verify_try == 2:
                        raise
                    log.warning("%s; fetching the series once more", err)
        except SeriesError as err:
            raise_if_machine_fault(err, row.series_key, "download")  # a disk error, not the data
            log.error("%s", err)
            return _record(tmp, err, row)
        except SpineIdcError as err:
            if not isinstance(err, TransientError):
                raise  # a broken installation or a full disk: stop the job, record nothing
            if not last_attempt:
                log.error("attempt %d of %d failed: %s", attempt, opts.retries + 1, err)
                raise
            failure = SeriesError(row.series_key, "download-failed",
                                  f"{err.message} (after {attempt} attempts)",
                                  hint=err.hint or "check the network and the endpoint, then run again")
            log.error("%s", failure)
            return _record(tmp, failure, row)
        seconds = time.monotonic() - started
        info = {
            "series_key": row.series_key,
            "source": row.source,
            "location": row.location,
            "instances": len(verified.files),
            "bytes": verified.n_bytes,
            "seconds": round(seconds, 3),
            "mb_per_s": round(verified.n_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
            "attempt": attempt,
            "tool_files": getattr(stats, "files", None),
        }
        write_text(tmp / INFO, json.dumps(info, indent=2))
    log.info("series %s: %d instances, %.1f MB in %.1f s", row.series_key, info["instances"],
             verified.n_bytes / 1e6, seconds)
    return None


def _record(folder: Path, err: SeriesError, row) -> Failure:
    shutil.rmtree(folder / DICOM_DIR, ignore_errors=True)  # never keep a partial series
    failure = Failure.from_error("download", err)
    if failure.path:  # the file is gone with the temporary folder: name the object instead
        failure = dataclasses.replace(failure, path=f"{row.location.rstrip('/')}/{Path(failure.path).name}")
    write_failure(folder, failure)
    return failure


def downloaded_files(folder: Path) -> list[Path]:
    """The verified DICOM files of a finished download folder."""
    return sorted(p for p in (Path(folder) / DICOM_DIR).iterdir() if p.is_file())
