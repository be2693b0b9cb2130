"""One function per workflow stage: read the stage's inputs, call the core, write its outputs.

These are the thin edges between files on disk and the pure functions of the package.  Each
per-series stage writes into a temporary folder that is renamed into place when complete, and
turns bad input (:class:`~spine_idc.errors.SeriesError`) into a recorded :class:`Failure` instead
of a crash, so the rest of the batch finishes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .. import layout
from ..atomic import atomic_dir
from ..config import MeasureConfig, SegmentConfig
from ..errors import ConfigError, SeriesError, SpineIdcError, raise_if_machine_fault
from ..outcome import Failure, read_failure, write_failure
from .records import Finished, Measured, Published

log = logging.getLogger(__name__)


def _record(stage: str, folder: Path, err: SeriesError) -> Failure:
    raise_if_machine_fault(err, err.series, stage)  # e.g. a file unreadable for an I/O error
    log.error("%s failed: %s", stage, err)
    failure = Failure.from_error(stage, err)
    write_failure(folder, failure)
    return failure


def _unexpected(stage: str, folder: Path, series_key: str, exc: Exception) -> Failure:
    """Record an exception that no check anticipated, so one odd series cannot stop a cohort.

    The traceback goes to the job's log; ``failures.csv`` gets the type and message, under a
    reason that says it is unexpected (worth a bug report, unlike a recorded bad input).  A fault
    of the machine (:func:`~spine_idc.errors.machine_fault`) is raised instead: it is not the
    series' to carry.
    """
    raise_if_machine_fault(exc, series_key, stage)
    log.exception("%s of series %s raised an unexpected error", stage, series_key)
    err = SeriesError(series_key, f"{stage}-error", f"unexpected {type(exc).__name__}: {exc}",
                      hint="see the job log for the traceback; please report it")
    failure = Failure.from_error(stage, err)
    write_failure(folder, failure)
    return failure


def _require_success(folder: Path, stage: str) -> None:
    failure = read_failure(folder)
    if failure is not None:
        raise SpineIdcError(
            f"{stage} of series {failure.series_key} failed ({failure.reason}); "
            "later stages cannot run on it"
        )


def make_phantoms(seeds: list[int], size: str, out_dir: Path, levels=()) -> None:
    """Generate one phantom series per seed into ``out_dir/seed-NNNN/`` (DICOM + ground truth).

    ``levels`` (first, last) centres every phantom on that range instead of a drawn scenario.
    """
    from ..sources.phantom import write_phantoms

    write_phantoms(seeds, size, out_dir, levels=levels)


def make_manifest(cfg, out: Path, file_lists: Path, input_dir: Path | None = None) -> list:
    """The manifest of ``cfg.source``: a folder scan, an IDC query or a QIDO-RS search.

    For remote sources the endpoint is probed first, so an offline run stops here, in seconds,
    with a message, instead of after minutes of retries.  Returns the rows written, for the
    caller to cut into shards (:func:`.shards.write_shards`).
    """
    from ..manifest import write_manifest
    from ..sources import get_source

    file_lists.mkdir(parents=True, exist_ok=True)
    rows = get_source(cfg.source).list_series(cfg, file_lists, input_dir)
    if not rows:
        log.warning("the manifest is empty: no series matched")
    write_manifest(rows, out)
    return rows


def download(row, remote, out_dir: Path, attempt: int = 1) -> Failure | None:
    """Fetch one remote series into ``out_dir/dicom`` (verified), or record ``failure.json``.

    Network faults propagate (:class:`~spine_idc.errors.TransientError`,
    :class:`~spine_idc.errors.NetworkUnreachable`) for the caller to retry.
    """
    from ..sources.fetch import download_series

    try:
        return download_series(row, out_dir, remote, attempt=attempt)
    except SpineIdcError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, see _unexpected
        with atomic_dir(out_dir) as tmp:
            return _unexpected("download", tmp, row.series_key, exc)


def convert(row, options, out_dir: Path, downloaded: Path | None = None) -> Failure | None:
    """DICOM series -> ``volume.nii.gz`` + ``series.json``, or ``failure.json``.

    Remote series are read from their verified ``downloaded`` folder; a failed download is
    passed on unchanged.
    """
    from ..convert import load_series, write_converted

    from ..sources import is_remote

    series_key = row.series_key
    if is_remote(row.source):
        if downloaded is None:
            raise SpineIdcError(f"series {series_key} comes from {row.source}: give its download folder")
        upstream = read_failure(downloaded)
        if upstream is not None:
            with atomic_dir(out_dir) as tmp:
                write_failure(tmp, upstream)
            return upstream
        from ..sources.fetch import downloaded_files

        files = downloaded_files(downloaded)
    else:
        files = row.files()
    with atomic_dir(out_dir) as tmp:
        try:
            volume, info = load_series(files, series_key, options)
        except SeriesError as err:
            return _record("convert", tmp, err)
        except Exception as exc:  # noqa: BLE001 - recorded, see _unexpected
            return _unexpected("convert", tmp, series_key, exc)
        write_converted(volume, info, tmp)
    log.info("series %s: converted %s voxels", series_key, "x".join(map(str, volume.array.shape)))
    return None


def segment(jobs, options: SegmentConfig, done=None, threads: int | None = None) -> dict:
    """Volumes -> vertebra label maps, body maps and QC records, or ``failure.json`` each.

    ``jobs`` are :class:`.segment_runner.SeriesJob` (series key, converted folder, output
    folder); the model is loaded once for all of them, and only if one needs it.  A failed
    conversion is passed on unchanged, so this stage's folder alone tells the workflow
    whether the series goes further.  Returns each series' failure, or ``None``.
    """
    from .segment_runner import run

    return run(list(jobs), options, done, threads=threads)


def _qc(segmented: Path) -> dict:
    return json.loads((segmented / layout.QC).read_text())


def measure(converted: Path, segmented: Path, options: MeasureConfig, out: Path) -> None:
    """Per-vertebra measurements (and the QC flags that go with them) as JSON."""
    from ..measure import measure_vertebrae
    from ..volume import SeriesInfo, read_nifti

    _require_success(converted, "convert")
    _require_success(segmented, "segment")
    info = SeriesInfo.read(converted / layout.SERIES_INFO)
    qc = _qc(segmented)
    axes = {int(k): tuple(v) for k, v in qc.get("axis_lps", {}).items()}
    results = measure_vertebrae(
        read_nifti(converted / layout.VOLUME),
        read_nifti(segmented / layout.LABELS),
        read_nifti(segmented / layout.BODIES),
        axis_lps=axes or None,
        erosion_mm=options.erosion_mm,
    )
    Measured(
        series_key=info.series_key, series_instance_uid=info.series_instance_uid,
        study_instance_uid=info.study_instance_uid, patient_id=info.patient_id,
        measurements=tuple(results), measure_options=dataclasses.asdict(options), qc=qc,
    ).write(out)


def finish_series(converted: Path, segmented: Path, measure_options: MeasureConfig,
                  series_key: str) -> Failure | None:
    """Measure, write the SEG, write the SR; record ``work/finish/<key>.json`` either way.

    A series that cannot be finished (bad input found late, or an unexpected error) is recorded
    with the step that failed, so the cohort lists it instead of waiting for it.  A fault of the
    machine (a full disk while writing the SEG, say) is raised, and nothing is recorded.
    """
    steps = (
        ("measure", lambda: measure(converted, segmented, measure_options, layout.path("measure", series_key))),
        ("seg", lambda: write_seg(converted, segmented, layout.path("seg", series_key))),
        ("sr", lambda: write_sr(converted, layout.path("measure", series_key),
                                layout.path("seg", series_key), layout.path("sr", series_key))),
    )
    failure = None
    for step, run in steps:
        try:
            run()
        except SeriesError as err:
            raise_if_machine_fault(err, series_key, step)
            log.error("%s failed: %s", step, err)
            failure = Failure.from_error(step, err)
        except Exception as exc:  # noqa: BLE001 - recorded, see _unexpected
            raise_if_machine_fault(exc, series_key, step)
            log.exception("%s of series %s raised an unexpected error", step, series_key)
            failure = Failure.from_error(step, SeriesError(
                series_key, f"{step}-error", f"unexpected {type(exc).__name__}: {exc}",
                hint="see the job log for the traceback; please report it"))
        if failure is not None:
            break
    Finished(series_key, failure).write(layout.path("finish", series_key))
    return failure


def series_failure(series_key: str, root: Path | str = ".") -> Failure | None:
    """Why a series ended without products, whichever stage it failed in, or ``None``."""
    failure = read_failure(layout.path("segment", series_key, root))
    if failure is not None:
        return failure
    record = layout.path("finish", series_key, root)
    return Finished.read(record).failure if record.exists() else None


def _algorithm(qc: dict, measure_options: dict | None = None):
    from ..dicom import AlgorithmInfo

    algo = qc["algorithm"]
    params = {k: str(v) for k, v in algo.get("parameters", {}).items()}
    params.update({f"measure.{k}": str(v) for k, v in (measure_options or {}).items()})
    return AlgorithmInfo(name=f"spine-idc {algo['name']}", version=algo["version"], parameters=params)


def write_seg(converted: Path, segmented: Path, out: Path) -> None:
    from ..dicom import write_seg as _write_seg
    from ..volume import SeriesInfo, read_nifti

    _require_success(segmented, "segment")
    info = SeriesInfo.read(converted / layout.SERIES_INFO)
    labels = read_nifti(segmented / layout.LABELS)
    _write_seg(labels, info, _algorithm(_qc(segmented)), out)


def write_sr(converted: Path, measurements: Path, seg: Path, out: Path) -> None:
    import pydicom

    from ..dicom import write_sr as _write_sr
    from ..volume import SeriesInfo

    info = SeriesInfo.read(converted / layout.SERIES_INFO)
    record = Measured.read(measurements)
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True)
    _write_sr(list(record.measurements), seg_ds, info,
              _algorithm(record.qc, record.measure_options), out, qc=series_qc(record.qc))


def series_qc(qc: dict) -> dict[str, bool]:
    """Series-level QC answers for the SR from the segmenter's QC record."""
    from ..coding import LEVEL_BY_NAME

    # Vertebrae in cranio-caudal order; S1 and the cord (index -1) are not part of the run.
    named = [LEVEL_BY_NAME[n].index for n in qc.get("levels", []) if n in LEVEL_BY_NAME]
    named = [i for i in named if i >= 0]
    contiguous = bool(named) and named == list(range(named[0], named[0] + len(named)))
    return {"spine_found": bool(qc.get("levels")), "labels_contiguous": contiguous}


def publish(converted: Path, seg: Path, sr: Path, series_key: str, options, out: Path,
            attempt: int = 1) -> Failure | None:
    """STOW-RS the series' SEG and SR (and, if asked, its source CT) to ``options.url``.

    Writes ``out`` (JSON): the store, the viewer URL and each instance's status, or the failure.
    A refusal by the store (4xx) is recorded at once; a network fault raises while Snakemake
    attempts remain (``publish.retries``) and is recorded as ``publish-failed`` on the last one.
    """
    from ..errors import TransientError
    from ..publish import publish_series
    from ..volume import SeriesInfo

    if not options.url:
        raise ConfigError("publish.to is dicomweb but publish.url is empty",
                          hint="--config publish={'to': 'dicomweb', 'url': 'http://host:8042/dicom-web'}")
    sources = SeriesInfo.read(converted / layout.SERIES_INFO).files if options.include_source else ()
    record = Published(series_key, store=options.url, attempt=attempt)
    failure = None
    try:
        result = publish_series(seg, sr, url=options.url, auth=options.auth, replace=options.replace,
                                retries=options.tool_retries, backoff_s=options.backoff_s,
                                timeout_s=options.timeout_s, template=options.viewer_template,
                                source_files=sources, series_key=series_key)
        record = dataclasses.replace(
            record, store=result.store, viewer_url=result.viewer_url,
            seconds=round(result.seconds, 3),
            instances=tuple({**dataclasses.asdict(i), "status": str(i.status)}
                            for i in result.instances))
    except SeriesError as err:
        raise_if_machine_fault(err, series_key, "publish")
        log.error("publish failed: %s", err)
        failure = Failure.from_error("publish", err)
    except TransientError as err:
        if attempt <= options.retries:
            log.error("attempt %d of %d failed: %s", attempt, options.retries + 1, err)
            raise
        failure = Failure.from_error("publish", SeriesError(
            series_key, "publish-failed", f"{err.message} (after {attempt} attempts)",
            hint=err.hint or "check the store, then delete this record (without a shared filesystem: "
                             "the shard's work/packs/publish/<shard>.tar in the bucket) and run again"))
        log.error("%s", failure.message)
    dataclasses.replace(record, failure=failure).write(out)
    return failure
