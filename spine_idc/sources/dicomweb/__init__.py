"""The ``dicomweb`` source: CT series on a DICOMweb server, found by QIDO-RS and filtered by the
config's ``query`` (:mod:`spine_idc.sources.selection`), retrieved by WADO-RS.

:mod:`.series` does the searching and retrieving through the shared client
(:mod:`spine_idc.dicomweb`); this module only wires it to the
:class:`~spine_idc.sources.base.Source` protocol, importing it when it is used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ...errors import ConfigError
from ..base import Remote

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DicomwebSource:
    """A DICOMweb server at ``dicomweb_url``."""

    name: str = "dicomweb"
    remote: bool = True

    def input_folder(self, config: dict) -> str | None:
        return None

    def probe(self, remote: Remote) -> None:
        from ..net import probe

        probe(remote.dicomweb_url, timeout_s=remote.download.probe_timeout_s,
              what="the DICOMweb server (dicomweb_url)")

    def list_series(self, cfg, file_lists: Path, input_dir: Path | None) -> list:
        from ...manifest import rows_from_records
        from ..selection import select_records
        from .series import make_client, search_series

        if not cfg.dicomweb_url:
            raise ConfigError("source is dicomweb but dicomweb_url is empty",
                              hint="--config dicomweb_url=http://host:port/dicom-web")
        self.probe(Remote(cfg.download, cfg.dicomweb_url, cfg.dicomweb.auth))
        client = make_client(cfg.dicomweb_url, auth=cfg.dicomweb.auth,
                             retries=cfg.download.tool_retries)
        found = search_series(client, modality=cfg.query["modality"])
        rows = rows_from_records(select_records(found, cfg.query, source=self.name), self.name)
        log.info("%s: %d of %d CT series selected", cfg.dicomweb_url, len(rows), len(found))
        return rows

    def fetch(self, row, dest: Path, remote: Remote, timeout_s: float):
        from .series import AttemptLimit, fetch_dicomweb_series, make_client

        opts = remote.download
        with AttemptLimit(timeout_s) as limit:
            limit.timeout_s = opts.timeout_s  # as the attempt's messages should say it
            client = make_client(remote.dicomweb_url, auth=remote.dicomweb_auth,
                                 timeout_s=min(120.0, opts.timeout_s), retries=opts.tool_retries,
                                 limit=limit)
            return fetch_dicomweb_series(client, row.study_instance_uid, row.series_instance_uid,
                                         dest, series_key=row.series_key, limit=limit)


SOURCE = DicomwebSource()
