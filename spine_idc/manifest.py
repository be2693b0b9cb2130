"""The series manifest: the table that drives every per-series job.

Written once by the ``manifest`` checkpoint, validated row by row against
``schemas/manifest.schema.yaml``, and read by the workflow to fan out over series (never by
globbing).  Each series' file list is stored beside it, one path per line, so a series whose
files are scattered over several folders is still one unit of work.
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
    file_list: str

    def files(self) -> list[Path]:
        """The series' files, as listed when the manifest was written."""
        text = Path(self.file_list).read_text()
        return [Path(line) for line in text.splitlines() if line.strip()]


FIELDS = [f.name for f in dataclasses.fields(ManifestRow)]


def _validator():
    import jsonschema

    from .config import load_schema

    return jsonschema.Draft202012Validator(load_schema("manifest"))


def validate_rows(rows: list[ManifestRow]) -> None:
    """Raise :class:`ManifestError` naming the first bad rows; keys must also be unique."""
    validator = _validator()
    problems = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        for err in validator.iter_errors(dataclasses.asdict(row)):
            where = ".".join(str(p) for p in err.absolute_path) or "row"
            problems.append(f"row {i} ({row.series_key!r}) {where}: {err.message}")
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
        writer.writerow(dataclasses.asdict(row))
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
        try:
            rec["n_instances"] = int(rec["n_instances"])
        except ValueError as e:
            raise ManifestError(f"manifest {path} row {i}: n_instances is not a number") from e
        rows.append(ManifestRow(**rec))
    validate_rows(rows)
    return rows


def manifest_from_folder(root: str | Path, file_lists: str | Path, source: str) -> list[ManifestRow]:
    """Scan ``root`` for DICOM series and write one file list per series into ``file_lists``."""
    from .scan import scan_folder

    root = Path(root)
    if not root.is_dir():
        raise ManifestError(
            f"input folder {root} does not exist",
            hint="set input_dir in config.yaml (or --config input_dir=...) to a folder of DICOM files",
        )
    rows = []
    for found in scan_folder(root):
        files = [Path(f) if Path(f).is_absolute() else root / f for f in found.files]
        listing = Path(file_lists) / f"{found.key}.files"
        write_text(listing, "".join(f"{f}\n" for f in files))
        rows.append(
            ManifestRow(
                series_key=found.key,
                series_instance_uid=found.series_instance_uid,
                study_instance_uid=found.study_instance_uid,
                patient_id=found.patient_id,
                modality=found.modality,
                series_description=found.series_description,
                n_instances=found.n_files,
                source=source,
                file_list=str(listing),
            )
        )
    log.info("found %d series under %s", len(rows), root)
    if not rows:
        log.warning("no DICOM series found under %s", root)
    return rows
