"""The segment stage over a shard of series: the model loaded once, the GPU kept fed.

A network backend splits its work in three (``preprocess``, ``infer``, ``finish``); this module
runs them as a three-stage pipeline over the shard's series:

* **loader** threads (two by default) read the next series' volumes and put them on the model's
  grid (reading a compressed 512x512x300 volume takes a second or two: it must not leave the
  GPU idle);
* the calling thread runs **inference**, one series at a time (one model in memory);
* **writer** threads (two by default) derive bodies and QC and write the label maps (gzip
  again): on a fast GPU this CPU work takes longer than the inference.

At most ``loaders`` series are loaded ahead and ``writers`` wait to be written, so memory stays
bounded whatever the shard size.  A
series that fails anywhere is recorded in its own folder (``failure.json``) and the shard goes
on; a :class:`~spine_idc.errors.ConfigError` (weights missing, wrong device) is raised before
the first series is touched, so a misconfigured batch stops at once instead of recording every
series as failed.  Backends without the three steps (the classical one) are called per series
through ``segment``; the loader still reads ahead.  Which kind a backend is, is its class's to
declare (:class:`~spine_idc.segment.StagedBackend`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .. import layout
from ..atomic import atomic_dir, write_text
from ..config import SegmentConfig
from ..errors import ConfigError, SegmentationError, SeriesError, machine_fault, raise_if_machine_fault
from ..outcome import Failure, read_failure, write_failure

log = logging.getLogger(__name__)


def backend_for(options: SegmentConfig):
    """The configured backend, built, and its options (the SEG's algorithm parameters unless
    the backend says which weights ran)."""
    return options.build(), dataclasses.asdict(options.options)


def algorithm(backend, params: dict) -> dict:
    """What goes into the SEG's algorithm identification."""
    return {"name": backend.name, "version": backend.version,
            "parameters": getattr(backend, "parameters", None) or params}


@dataclasses.dataclass
class SeriesJob:
    """One series of the shard: where its volume is and where its result goes."""

    key: str
    converted: Path
    out: Path


@dataclasses.dataclass
class _Loaded:
    job: SeriesJob
    item: object = None
    failure: Failure | None = None  # upstream or load failure, recorded by the writer
    error: BaseException | None = None


def _record_error(job: SeriesJob, exc: BaseException, path: Path | None = None) -> Failure:
    """``path``: the file being read or written when it happened (named in failures.csv).

    Raises :class:`~spine_idc.errors.MachineFault` instead for a fault of the machine.
    """
    raise_if_machine_fault(exc, job.key, "segment")
    if isinstance(exc, SeriesError):
        log.error("segment failed: %s", exc)
        return Failure.from_error("segment", exc)
    log.error("segment of series %s raised an unexpected error", job.key, exc_info=exc)
    return Failure.from_error("segment", SeriesError(
        job.key, "segment-error", f"unexpected {type(exc).__name__}: {exc}",
        path=str(path or job.converted / layout.VOLUME),
        hint="see the job log for the traceback; please report it"))


def run(jobs: list[SeriesJob], options: SegmentConfig,
        done: Callable[[SeriesJob, Failure | None], None] | None = None,
        backend=None, stats: dict | None = None, loaders: int = 2,
        writers: int = 2, threads: int | None = None) -> dict[str, Failure | None]:
    """Segment ``jobs`` in a pipeline; ``done`` is called (writer thread) as each is written.

    Returns each series' failure (``None`` when it was segmented).  ``stats``, if given, gets
    the wall time, the time in inference and the time spent waiting for the loader (seconds).
    ``threads`` (the job's CPUs) caps torch's intra-op threads, so a job uses what it was given
    and the same job gives the same numbers wherever it runs.
    """
    from ..segment import StagedBackend
    from ..volume import read_nifti

    notify = done if done is not None else (lambda job, failure: None)
    if backend is None:
        backend, params = backend_for(options)
    else:
        params = {}
    if threads and "torch" in sys.modules:  # a network backend: torch is loaded by now
        sys.modules["torch"].set_num_threads(max(1, int(threads)))
    algo = algorithm(backend, params)
    stepwise = isinstance(backend, StagedBackend)
    results: dict[str, Failure | None] = {}
    timing = {"wait_load": 0.0, "infer": 0.0}

    def load(job: SeriesJob) -> _Loaded:
        try:
            upstream = read_failure(job.converted)
            if upstream is not None:
                return _Loaded(job, failure=upstream)
            ct = read_nifti(job.converted / layout.VOLUME)
            return _Loaded(job, item=backend.preprocess(ct, job.key) if stepwise else ct)
        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the shard
            return _Loaded(job, error=exc)

    def write(loaded: _Loaded, outcome) -> None:
        job = loaded.job
        failure = loaded.failure
        try:
            with atomic_dir(job.out) as tmp:
                if failure is None:
                    failure = _write_result(tmp, backend, loaded, outcome, algo, stepwise)
                else:
                    write_failure(tmp, failure)
        except Exception as exc:  # noqa: BLE001 - recorded, unless the machine is to blame
            if machine_fault(exc) is not None:  # the disk, not the series: leave nothing behind
                shutil.rmtree(job.out, ignore_errors=True)  # an older result is no longer current
                raise_if_machine_fault(exc, job.key, "segment")
            log.exception("could not write the result of series %s", job.key)
            failure = _record_error(job, exc, path=job.out)
            try:  # record it, so that an older result cannot pass for this run's
                with atomic_dir(job.out) as tmp:
                    write_failure(tmp, failure)
            except Exception as again:  # noqa: BLE001 - nothing can be written: leave nothing, stamp nothing
                shutil.rmtree(job.out, ignore_errors=True)
                raise_if_machine_fault(again, job.key, "segment")
                log.exception("could not record the failure of series %s either", job.key)
                results[job.key] = failure
                return
        results[job.key] = failure
        try:
            notify(job, failure)
        except Exception as exc:  # noqa: BLE001 - a missing stamp only means the series is redone
            raise_if_machine_fault(exc, job.key, "segment")
            log.exception("series %s: could not record its completion", job.key)

    t_start = time.perf_counter()
    ahead = max(1, loaders)
    with ThreadPoolExecutor(ahead, thread_name_prefix="load") as loader, \
            ThreadPoolExecutor(max(1, writers), thread_name_prefix="write") as writer:
        pending: list[Future] = [loader.submit(load, job) for job in jobs[:ahead]]
        written: list[Future] = []
        for i in range(len(jobs)):
            t = time.perf_counter()
            loaded = pending.pop(0).result()
            timing["wait_load"] += time.perf_counter() - t
            if i + ahead < len(jobs):
                pending.append(loader.submit(load, jobs[i + ahead]))
            outcome: object = None
            if loaded.failure is None:
                t = time.perf_counter()
                try:
                    if loaded.error is not None:
                        raise loaded.error
                    outcome = (backend.infer(loaded.item, loaded.job.key) if stepwise
                               else backend.segment(loaded.item, series_key=loaded.job.key))
                except ConfigError:
                    raise  # the model or the device, not the series: stop before recording more
                except Exception as exc:  # noqa: BLE001 - recorded, the shard goes on
                    if _device_broken(exc):
                        raise
                    loaded.failure = _record_error(loaded.job, exc)
                timing["infer"] += time.perf_counter() - t
            while len(written) >= max(1, writers):
                written.pop(0).result()  # bounded: the oldest write must finish first
            written.append(writer.submit(write, loaded, outcome))
        for future in written:
            future.result()
    wall = time.perf_counter() - t_start
    if stats is not None:
        stats.update(series=len(jobs), wall=wall, **timing)
    if jobs:
        log.info("segmented %d series in %.1f s: %.1f s inference (%.0f%% of the time), %.1f s "
                 "waiting for the loader", len(jobs), wall, timing["infer"],
                 100 * timing["infer"] / max(wall, 1e-9), timing["wait_load"])
    return results


def _device_broken(exc: BaseException) -> bool:
    """A CUDA error that every later series would hit too (not out-of-memory, which is one
    series' size): the job must stop and be retried, not record the rest as failed."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "device-side assert" in text)


def _write_result(tmp: Path, backend, loaded: _Loaded, outcome, algo: dict, stepwise: bool) -> Failure | None:
    import numpy as np

    from ..coding import SPINAL_CORD_VALUE
    from ..volume import write_nifti

    job = loaded.job
    try:
        result = backend.finish(loaded.item, *outcome, job.key) if stepwise else outcome
        labels = result.labels.array
        if not np.any((labels > 0) & (labels != SPINAL_CORD_VALUE)):  # the cord alone is no spine
            raise SegmentationError(job.key, "no-spine", "no vertebra was found")
    except Exception as exc:  # noqa: BLE001 - recorded, the shard goes on
        failure = _record_error(job, exc)
        write_failure(tmp, failure)
        return failure
    write_nifti(result.labels, tmp / layout.LABELS)
    write_nifti(result.bodies, tmp / layout.BODIES)
    qc = result.qc.to_dict()
    qc["algorithm"] = algo
    write_text(tmp / layout.QC, json.dumps(qc, indent=2))
    return None
