"""The ``local`` source: every DICOM series found under ``input_dir``, read where it lies.

Nothing is fetched: each series' files are listed, one path per line, beside the manifest
(``file_list``), so a series whose files are scattered over several folders is still one unit of
work, and conversion reads them in place.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..atomic import write_text
from ..errors import ManifestError
from ..manifest import ManifestRow

log = logging.getLogger(__name__)


def rows_from_folder(root: str | Path, file_lists: str | Path, source: str) -> list[ManifestRow]:
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
        size = sum(f.stat().st_size for f in files if f.exists())
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
                size_mb=round(size / 1e6, 3),
                location=str(root),
            )
        )
    log.info("found %d series under %s", len(rows), root)
    if not rows:
        log.warning("no DICOM series found under %s", root)
    return rows


@dataclasses.dataclass(frozen=True)
class LocalSource:
    """Series in a folder on this machine (:func:`rows_from_folder`)."""

    name: str = "local"
    remote: bool = False

    def input_folder(self, config: dict) -> str | None:
        return str(config["input_dir"])

    def probe(self, remote) -> None:
        """Nothing to reach."""

    def list_series(self, cfg, file_lists: Path, input_dir: Path | None) -> list[ManifestRow]:
        return rows_from_folder(input_dir or cfg.input_dir, file_lists, self.name)

    def fetch(self, row, dest: Path, remote, timeout_s: float):
        raise ValueError(f"series {row.series_key}: source {row.source!r} is not downloaded")


SOURCE = LocalSource()
