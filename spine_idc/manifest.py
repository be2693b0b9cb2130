"""The series manifest: the table that drives every per-series job.

Written once by the ``manifest`` checkpoint, validated row by row against
``schemas/manifest.schema.yaml``, and read by the workflow to fan out over series (never by
globbing).  Each series' file list is stored beside it, one path per line, so a series whose
files are scattered over several folders is still one unit of work.  Which rows a source lists,
and whether its series are downloaded, is the source's to say (:mod:`spine_idc.sources`); this
module knows only the table and its schema.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

from .atomic import write_text
from .errors import ManifestError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    series_key: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    series_description: str
    n_instances: int
    source: str
    file_list: str = ""
    collection_id: str = ""
    body_part: str = ""
    license: str = ""
    size_mb: float = 0.0
    location: str = ""
    index_version: str = ""

    def files(self) -> list[Path]:
        """The series' files, as listed when the manifest was written (local sources only)."""
        if not self.file_list:
            raise ManifestError(f"series {self.series_key} ({self.source}) has no local file list")
        text = Path(self.file_list).read_text()
        return [Path(line) for line in text.splitlines() if line.strip()]


FIELDS = [f.name for f in dataclasses.fields(ManifestRow)]


def _validator():
    import jsonschema

    from .config import load_schema

    return jsonschema.Draft202012Validator(load_schema("manifest"))


def _row_problems(validator, row: ManifestRow) -> list[str]:
    """What is wrong with one row, against the manifest's schema (empty if nothing)."""
    return [f"{'.'.join(str(p) for p in err.absolute_path) or 'row'}: {err.message}"
            for err in validator.iter_errors(dataclasses.asdict(row))]


def validate_rows(rows: list[ManifestRow]) -> None:
    """Raise :class:`ManifestError` naming the first bad rows; keys must also be unique."""
    validator = _validator()
    problems = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        problems += [f"row {i} ({row.series_key!r}) {p}" for p in _row_problems(validator, row)]
        if row.series_key in seen:
            problems.append(f"row {i}: series_key {row.series_key!r} appears twice")
        seen.add(row.series_key)
    if problems:
        raise ManifestError("invalid manifest:\n  " + "\n  ".join(problems[:20]))


def write_manifest(rows: list[ManifestRow], path: str | Path) -> None:
    """Validate and write the manifest as TSV, atomically, sorted by series key."""
    rows = sorted(rows, key=lambda r: r.series_key)
    validate_rows(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = dataclasses.asdict(row)
        record["size_mb"] = f"{row.size_mb:.3f}"
        writer.writerow(record)
    write_text(path, buf.getvalue())


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest written by :func:`write_manifest`."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
    except FileNotFoundError as e:
        raise ManifestError(f"manifest {path} not found") from e
    rows = []
    for i, rec in enumerate(records, start=1):
        if set(rec) != set(FIELDS):
            raise ManifestError(
                f"manifest {path} row {i}: columns {sorted(rec)} differ from {FIELDS}"
            )
        for name, kind in (("n_instances", int), ("size_mb", float)):
            try:
                rec[name] = kind(rec[name])
            except ValueError as e:
                raise ManifestError(f"manifest {path} row {i}: {name} is not a number") from e
        rows.append(ManifestRow(**rec))
    validate_rows(rows)
    return rows


def rows_from_records(records: list[dict], source: str) -> list[ManifestRow]:
    """Manifest rows from query records (IDC index, BigQuery or QIDO-RS search results).

    Records carry every manifest column except ``source`` and ``file_list``; remote series are
    downloaded by the workflow, so they have no local file list.  A record that cannot be a
    manifest row (a column missing, a count that is not a number, a key that is not a UID) is
    left out with a one-line warning naming it: one bad record must not stop the cohort.
    """
    names = set(FIELDS) - {"source", "file_list"}
    validator = _validator()
    rows = []
    for rec in records:
        key = rec.get("series_key") if isinstance(rec, dict) else None
        try:
            missing = names - set(rec)
            if missing:
                raise ValueError(f"lacks {sorted(missing)}")
            values = {k: rec[k] for k in names}
            values["n_instances"] = int(values["n_instances"])
            values["size_mb"] = round(float(values["size_mb"] or 0.0), 3)
            row = ManifestRow(source=source, file_list="", **values)
            problems = _row_problems(validator, row)
            if problems:
                raise ValueError("; ".join(problems))
        except (ValueError, TypeError) as e:
            log.warning("skipping %s series %r: malformed record: %s", source, key,
                        " ".join(str(e).split())[:300])
            continue
        rows.append(row)
    return rows
