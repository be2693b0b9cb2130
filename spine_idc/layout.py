"""Where every stage reads and writes, relative to the workflow's working directory.

The Snakefile takes its path patterns from here and the ``cohort`` verb finds per-series outcomes
through the same functions, so the two can never disagree.  ``results/series/<key>/seg.dcm`` and
``sr.dcm`` are a stable contract that other tooling reads.
"""

from __future__ import annotations

from pathlib import Path

PATTERNS: dict[str, str] = {
    "phantoms": "resources/phantoms",
    "manifest": "results/manifest.tsv",
    "file_lists": "work/manifest",
    "shards": "work/shards",
    "shard": "work/shards/{shard}.tsv",
    "shard_done": "work/done/{stage}/{shard}.json",
    "pack": "work/packs/{stage}/{shard}.tar",  # only without a shared filesystem (spine_idc.pipeline.packs)
    "download": "work/download/{series}",
    "convert": "work/convert/{series}",
    "segment": "work/segment/{series}",
    "measure": "work/measure/{series}.json",
    "finish": "work/finish/{series}.json",
    "seg": "results/series/{series}/seg.dcm",
    "sr": "results/series/{series}/sr.dcm",
    "publish": "work/publish/{series}.json",
    "cohort_parquet": "results/cohort/measurements.parquet",
    "cohort_csv": "results/cohort/measurements.csv",
    "failures": "results/cohort/failures.csv",
    # fail_on_series_errors: written when no series failed (the run fails otherwise)
    "no_series_errors": "work/done/no-series-errors.json",
    "logs": "logs",
}

# File names inside the per-series stage folders.
VOLUME = "volume.nii.gz"
SERIES_INFO = "series.json"
LABELS = "labels.nii.gz"
BODIES = "bodies.nii.gz"
QC = "qc.json"
FAILURE = "failure.json"


def path(kind: str, series: str | None = None, root: str | Path = ".") -> Path:
    """The path of ``kind`` (a key of :data:`PATTERNS`) for one series under ``root``."""
    pattern = PATTERNS[kind]
    if "{series}" in pattern:
        if series is None:
            raise ValueError(f"{kind} is per series: give a series key")
        from .uids import safe_series_key

        pattern = pattern.format(series=safe_series_key(series))
    return Path(root) / pattern
