"""Shards: the unit of work of the workflow's per-series stages.

A cohort of 100,000 series cannot be one Snakemake job per series per stage (the plan alone
would take many minutes), and a GPU job should load its model once for many series.  The
manifest is therefore cut into shards of ``shard_size`` series (``work/shards/sNNNNN.tsv``, rows
sorted by series key), and each stage runs one job per shard that goes through its series one by
one.  Per-series outputs keep their places (``work/<stage>/<key>``, ``results/series/<key>/``), so
the cohort table and every reader of results are unchanged, and each series still ends in its
products or in a recorded failure.

A shard job writes its marker (``work/done/<stage>/<shard>.json``: what happened to each series)
only when every series is done, so a killed job is simply run again.  Each series' result is
stamped (``work/stamps/<stage>/<key>``: a hash of the stage's options, the package version and
the series' upstream stamp), and a job skips a series whose stamp is current: a re-run job, or a
shard whose table changed because the cohort grew, redoes only what is missing or stale (on a
shared filesystem: without one, a job's folder starts empty but for its inputs' packs, and it
redoes its whole shard, see :mod:`spine_idc.pipeline.packs`).  Within a job, series are
independent: a bad series is recorded and the others go on.  A network fault on some series
(download, publish) lets the others finish and then fails the job, so that Snakemake's retries
fetch only what is missing; the last attempt records those series as failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

from .. import layout
from ..atomic import write_text
from ..errors import NetworkUnreachable, TransientError
from ..manifest import ManifestRow, read_manifest, write_manifest
from ..outcome import Failure, read_failure
from ..sources import is_remote

log = logging.getLogger(__name__)

INDEX = "index.json"


def shard_id(index: int) -> str:
    return f"s{index:05d}"


def write_shards(rows: list[ManifestRow], folder: Path, shard_size: int) -> list[str]:
    """Cut the manifest into shards of ``shard_size`` rows (sorted by key); return their ids."""
    rows = sorted(rows, key=lambda r: r.series_key)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(math.ceil(len(rows) / shard_size)):
        ids.append(shard_id(i))
        write_manifest(rows[i * shard_size:(i + 1) * shard_size], folder / f"{ids[-1]}.tsv")
    write_text(folder / INDEX, json.dumps({"shard_size": shard_size, "shards": ids}, indent=1))
    log.info("%d series in %d shards of up to %d", len(rows), len(ids), shard_size)
    return ids


def read_shard_ids(folder: str | Path) -> list[str]:
    return json.loads((Path(folder) / INDEX).read_text())["shards"]


def stamp_path(stage: str, key: str) -> Path:
    from ..uids import safe_series_key

    return Path("work") / "stamps" / stage / safe_series_key(key)


def read_stamp(stage: str, key: str) -> str:
    path = stamp_path(stage, key)
    return path.read_text().strip() if path.exists() else ""


def stamp_for(stage: str, options, upstream: str) -> str:
    """What a series' result at ``stage`` depends on, hashed."""
    from .. import __version__

    opts = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options
    text = json.dumps({"stage": stage, "options": opts, "version": __version__, "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _current(stage: str, key: str, want: str, *outputs: Path) -> bool:
    return read_stamp(stage, key) == want and all(p.exists() for p in outputs)


def _write_stamp(stage: str, key: str, value: str) -> None:
    write_text(stamp_path(stage, key), value + "\n")


def _row_stamp(row: ManifestRow) -> str:
    if is_remote(row.source):
        return read_stamp("download", row.series_key)
    return stamp_for("source", dataclasses.asdict(row), "")


def _write_marker(marker: Path, stage: str, outcomes: dict[str, str]) -> None:
    write_text(marker, json.dumps({"stage": stage, "series": outcomes}, indent=1))


def _status(failure: Failure | None) -> str:
    return "ok" if failure is None else f"failed:{failure.reason}"


def _retry_later(stage: str, transient: dict[str, TransientError]) -> None:
    if transient:
        keys = ", ".join(sorted(transient))
        first = next(iter(transient.values()))
        raise TransientError(f"{stage}: {len(transient)} series hit network faults ({keys}); "
                             f"the others are done. First: {first.message}", hint=first.hint)


def _download_stamp(row: ManifestRow) -> str:
    return stamp_for("download", {"location": row.location, "n": row.n_instances}, "")


def download(shard: Path, remote, marker: Path, attempt: int = 1) -> None:
    """Fetch every series of the shard not already fetched (verified, or failed for good)."""
    from .stages import download as download_series

    outcomes: dict[str, str] = {}
    transient: dict[str, TransientError] = {}
    for row in read_manifest(shard):
        key, out = row.series_key, layout.path("download", row.series_key)
        earlier = read_failure(out) if out.exists() else None
        if out.exists() and (earlier is None or earlier.reason != "download-failed"):
            outcomes[key] = _status(earlier)  # fetched in an earlier run
            if not read_stamp("download", key):
                _write_stamp("download", key, _download_stamp(row))
            continue
        if out.exists():  # a network failure recorded by an earlier run: try again
            shutil.rmtree(out)
        try:
            outcomes[key] = _status(download_series(row, remote, out, attempt=attempt))
        except NetworkUnreachable:
            raise  # the endpoint is gone: nothing else in the shard can succeed either
        except TransientError as err:
            transient[key] = err
            continue
        _write_stamp("download", key, _download_stamp(row))
    _retry_later("download", transient)
    _write_marker(marker, "download", outcomes)


def convert(shard: Path, options, marker: Path) -> None:
    from . import stages

    outcomes = {}
    for row in read_manifest(shard):
        key, out = row.series_key, layout.path("convert", row.series_key)
        want = stamp_for("convert", options, _row_stamp(row))
        if _current("convert", key, want, out):
            outcomes[key] = _status(read_failure(out))
            continue
        downloaded = layout.path("download", key) if is_remote(row.source) else None
        outcomes[key] = _status(stages.convert(row, options, out, downloaded=downloaded))
        _write_stamp("convert", key, want)
    _write_marker(marker, "convert", outcomes)


def segment(shard: Path, options, marker: Path, threads: int | None = None) -> None:
    """Segment the shard's stale series in one pipeline: the model is loaded once, and only if
    some series needs it (see :mod:`spine_idc.pipeline.segment_runner`)."""
    from . import segment_runner, stages

    identity = {**options.stamp_dict(), "identity": options.identity()}
    outcomes: dict[str, str] = {}
    jobs, wants = [], {}
    order = [row.series_key for row in read_manifest(shard)]
    for row in read_manifest(shard):
        key, out = row.series_key, layout.path("segment", row.series_key)
        want = stamp_for("segment", identity, read_stamp("convert", key))
        if _current("segment", key, want, out):
            outcomes[key] = _status(read_failure(out))
            continue
        jobs.append(segment_runner.SeriesJob(key, layout.path("convert", key), out))
        wants[key] = want

    def done(job, failure) -> None:
        _write_stamp("segment", job.key, wants[job.key])

    if jobs:
        results = stages.segment(jobs, options, done, threads=threads)
        outcomes.update({k: _status(f) for k, f in results.items()})
    _write_marker(marker, "segment", {k: outcomes[k] for k in order})


def finish(shard: Path, measure_options, marker: Path) -> None:
    """Measure, then write the SEG and SR, of every segmented series of the shard."""
    from . import stages

    outcomes = {}
    for row in read_manifest(shard):
        key = row.series_key
        segmented = layout.path("segment", key)
        upstream = read_failure(segmented)
        if upstream is not None:
            outcomes[key] = _status(upstream)
            continue
        want = stamp_for("finish", measure_options, read_stamp("segment", key))
        if _current("finish", key, want, layout.path("finish", key)):
            earlier = stages.series_failure(key)
            if earlier is not None or (layout.path("seg", key).exists() and layout.path("sr", key).exists()):
                outcomes[key] = _status(earlier)
                continue
        outcomes[key] = _status(stages.finish_series(
            layout.path("convert", key), segmented, measure_options, key))
        _write_stamp("finish", key, want)
    _write_marker(marker, "finish", outcomes)


def publish(shard: Path, options, marker: Path, attempt: int = 1) -> None:
    """Publish every finished series of the shard (idempotent: the store is asked first)."""
    from . import stages

    outcomes: dict[str, str] = {}
    transient: dict[str, TransientError] = {}
    for row in read_manifest(shard):
        key = row.series_key
        if stages.series_failure(key) is not None:
            outcomes[key] = "skipped"
            continue
        try:
            outcomes[key] = _status(stages.publish(
                layout.path("convert", key), layout.path("seg", key), layout.path("sr", key), key,
                options, layout.path("publish", key), attempt=attempt))
        except TransientError as err:
            transient[key] = err
    _retry_later("publish", transient)
    _write_marker(marker, "publish", outcomes)
