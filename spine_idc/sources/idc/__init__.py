"""The ``idc`` source: series of the NCI Imaging Data Commons, selected from its index and
copied from its public buckets.

:mod:`.query` is the config's ``query`` section and the records it yields (one per CT series,
ready to become manifest rows), :mod:`.sql` its SQL, :mod:`.backends` runs it on idc-index's
bundled series table with DuckDB or on IDC's BigQuery tables; :mod:`.indices` finds the
optional idc-index tables some filters need; :mod:`.s3` copies one series' prefix with s5cmd.
This module only wires them to the :class:`~spine_idc.sources.base.Source` protocol, importing
each when it is used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..base import Remote

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IdcSource:
    """IDC: the index (or BigQuery) selects, s5cmd fetches."""

    name: str = "idc"
    remote: bool = True

    def input_folder(self, config: dict) -> str | None:
        return None

    def probe(self, remote: Remote) -> None:
        from ..net import probe

        probe(remote.download.endpoint_url, timeout_s=remote.download.probe_timeout_s,
              what="IDC's storage endpoint (download.endpoint_url)")

    def list_series(self, cfg, file_lists: Path, input_dir: Path | None) -> list:
        from ...manifest import rows_from_records
        from .backends import run_bigquery, run_duckdb
        from .query import CohortQuery

        self.probe(Remote(cfg.download))
        query = CohortQuery.from_config({k: v for k, v in cfg.query.items() if k != "backend"})
        if cfg.query["backend"] == "bigquery":
            result = run_bigquery(query, project=cfg.idc.bigquery_project or None,
                                  dataset=cfg.idc.bigquery_dataset)
        else:
            result = run_duckdb(query, index_path=cfg.idc.index or None,
                                indices_dir=cfg.idc.indices_dir or None)
        rows = rows_from_records(result.records, self.name)
        log.info("IDC %s: %d series selected", result.index_version, len(rows))
        return rows

    def fetch(self, row, dest: Path, remote: Remote, timeout_s: float):
        from .s3 import fetch_s3_series

        opts = remote.download
        return fetch_s3_series(row.location, dest, series_key=row.series_key,
                               endpoint_url=opts.endpoint_url, retries=opts.tool_retries,
                               timeout_s=timeout_s, stall_s=opts.stall_s)


SOURCE = IdcSource()
