"""The cohort table: one row per series and labelled structure (vertebra, disc, canal), plus one
row per failed series.

Driven by the manifest: every series in it ends either in measurements (and its SEG and SR) or
in a recorded failure, and both tables say which.  Nothing is found by globbing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import coding, layout
from ..atomic import atomic_path
from ..errors import SpineIdcError
from ..manifest import read_manifest
from ..measure import table_columns, table_row
from .records import Measured, Published
from .stages import series_failure

log = logging.getLogger(__name__)

# Who the series is and where it came from (licence included: it travels with derived data).
ID_COLUMNS = [
    "series_key", "series_instance_uid", "study_instance_uid", "patient_id", "source",
    "collection_id", "license",
]
FAILURE_FIELDS = ["stage", "reason", "message", "hint", "path"]
FAILURE_COLUMNS = ID_COLUMNS + FAILURE_FIELDS


#: The identity columns, the measurements' (from :mod:`spine_idc.measure`'s registry), then
#: QC and where the results are.
MEASUREMENT_COLUMNS = ID_COLUMNS + table_columns() + [
    "identified", "qc_flags", "name_confidence", "qc_pass", "seg_path", "sr_path", "viewer_url",
]


def _vertebra_flags(qc: dict, label_value: int) -> list[str]:
    return list(qc.get("flags", {}).get(str(label_value), []))


#: A vertebra passes QC only when its name is at least this sure.  Measured on the classical
#: segmenter with ``bench/calibration.py`` (9 hard phantom scenarios x seeds 1-6, the cervical
#: spine from the skull's base included, 6 anchored phantoms, the real cases in
#: ``../shared/data/real``: 63 cases, 562 vertebrae, 2026-12-06): 352 names right, 210
#: withheld (0.3 or less), none wrong at any confidence.  (Before transitional counts were
#: checked for split bodies, one lumbar body split under metal streaks gave 4 wrong names at
#: 0.92; before single levels were checked against their typical length, a cervical spine on
#: 3 mm slices named from the dens alone, a disc missed under C2, gave 3 wrong names at
#: 0.70-0.73.)  Right names range from 0.40 (counted 17 levels from a single anchor) to 0.92
#: (between two agreeing anchors); 344 of 352 pass.  The cut-off keeps names counted from one
#: anchor up to about 16 levels away, or nearer when the vertebra is cut by the view;
#: transitional names (0.45) do not pass until right ones are measured.
QC_PASS_CONFIDENCE = 0.5


def _name_confidence(qc: dict, label_value: int) -> float:
    """The backend's confidence in this vertebra's (or disc's) name: its own, else the
    record's."""
    for v in qc.get("vertebrae", []) + qc.get("structures", []):
        if int(v.get("label", -1)) == label_value and v.get("confidence"):
            return float(v["confidence"])
    return float(qc.get("confidence", 0.0) or 0.0)


def _published(key: str, root) -> Published | None:
    """The publish record of a series (``None`` when results are not published)."""
    record = layout.path("publish", key, root)
    return Published.read(record) if record.exists() else None


def _one_line(value) -> str:
    """A failure's text as one line of ``failures.csv`` (tracebacks belong in the job's log)."""
    return " ".join(str(value or "").split())


def gather(manifest: str | Path, root: str | Path = ".") -> tuple[list[dict], list[dict]]:
    """Collect measurement rows and failure rows for every series in ``manifest``."""
    rows: list[dict] = []
    failures: list[dict] = []
    for entry in read_manifest(manifest):
        key = entry.series_key
        ids = {
            "series_key": key,
            "series_instance_uid": entry.series_instance_uid,
            "study_instance_uid": entry.study_instance_uid,
            "patient_id": entry.patient_id,
            "source": entry.source,
            "collection_id": entry.collection_id,
            "license": entry.license,
        }
        failure = series_failure(key, root)
        if failure is not None:
            failures.append({**ids, **{k: _one_line(getattr(failure, k)) for k in FAILURE_FIELDS}})
            continue
        published = _published(key, root)
        if published is not None and published.failure is not None:
            # measured, but the store refused or stayed unreachable
            failures.append({**ids, **{k: _one_line(getattr(published.failure, k))
                                       for k in FAILURE_FIELDS}})
        measured = layout.path("measure", key, root)
        if not measured.exists():
            raise SpineIdcError(f"series {key} has neither measurements nor a failure record ({measured})")
        record = Measured.read(measured)
        qc = record.qc
        ids["series_instance_uid"] = record.series_instance_uid or ids["series_instance_uid"]
        ids["study_instance_uid"] = record.study_instance_uid or ids["study_instance_uid"]
        for m in record.measurements:
            flags = _vertebra_flags(qc, m.label_value)
            confidence = _name_confidence(qc, m.label_value)
            rows.append(
                {
                    **ids,
                    **table_row(m),
                    "identified": not coding.is_unidentified(m.label_value),
                    "qc_flags": ";".join(flags),
                    "name_confidence": round(confidence, 3),
                    "qc_pass": (not flags and not m.touches_border
                                and confidence >= QC_PASS_CONFIDENCE),
                    "seg_path": str(layout.path("seg", key)),
                    "sr_path": str(layout.path("sr", key)),
                    "viewer_url": published.viewer_url if published is not None else "",
                }
            )
    return rows, failures


#: A spreadsheet reads a cell starting with one of these as a formula (OWASP's "CSV
#: injection" list): a PatientID of ``=HYPERLINK(...)`` from a DICOM header would run as one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(table):
    """A copy of ``table`` whose text cells cannot be read as spreadsheet formulas: those that
    start with a formula character get a leading apostrophe (the parquet keeps the values as
    they are).  Numbers are left alone."""
    import pandas as pd

    out = table.copy()
    for name in out.columns:
        if pd.api.types.is_object_dtype(out[name]) or pd.api.types.is_string_dtype(out[name]):
            out[name] = out[name].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def write_cohort(
    manifest: str | Path,
    parquet: str | Path,
    csv: str | Path,
    failures_csv: str | Path,
    root: str | Path = ".",
) -> tuple[int, int]:
    """Write the cohort tables; returns (vertebra rows, failed series)."""
    import pandas as pd

    rows, failures = gather(manifest, root)
    table = pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)
    fails = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    with atomic_path(parquet, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(csv, suffix=".csv") as tmp:
        csv_safe(table).to_csv(tmp, index=False)
    with atomic_path(failures_csv, suffix=".csv") as tmp:
        csv_safe(fails).to_csv(tmp, index=False)
    log.info("cohort: %d vertebrae from %d series; %d series failed",
             len(table), table["series_key"].nunique() if len(table) else 0, len(fails))
    return len(table), len(fails)


def summary(manifest: str | Path, parquet: str | Path, csv: str | Path, failures_csv: str | Path) -> str:
    """What a run ends with on the console: series done, series failed by reason, the tables."""
    import pandas as pd

    n_series = len(read_manifest(manifest))
    fails = pd.read_csv(failures_csv, dtype=str, keep_default_na=False)
    table = pd.read_parquet(parquet, columns=["series_key"])
    measured = table["series_key"].nunique()
    lines = [f"cohort: {n_series} series: {measured} measured, {fails['series_key'].nunique()} failed; "
             f"measurements in {csv}"]
    if len(fails):
        counts = fails.groupby(["stage", "reason"]).size().sort_values(ascending=False)
        shown = ", ".join(f"{reason} ({stage}) x{n}" for (stage, reason), n in counts.items())
        lines.append(f"failed series by reason: {shown}; see {failures_csv}")
    return "\n".join(lines)


def check_no_series_errors(manifest: str | Path, failures_csv: str | Path, out: str | Path) -> None:
    """``fail_on_series_errors: true``: raise :class:`SpineIdcError` (one line: how many series
    failed, and why the run fails) when ``failures_csv`` has a row, else write the marker ``out``.

    A step of its own after the cohort's: the tables are written (atomically, and kept) before
    the run is failed, where a failing cohort job would have its tables removed by Snakemake.
    """
    import pandas as pd

    fails = pd.read_csv(failures_csv, dtype=str, keep_default_na=False)
    failed, total = fails["series_key"].nunique(), len(read_manifest(manifest))
    if failed:
        raise SpineIdcError(
            f"{failed} of {total} series failed and fail_on_series_errors is set: the run fails "
            f"(the cohort tables are written; reasons in {failures_csv})")
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps({"series": total, "failed": 0}) + "\n")
