"""Running a :class:`~.query.CohortQuery` on one of its two backends.

* :func:`run_duckdb` reads the series table bundled with idc-index-data (and, when a filter needs
  them, the ``ct_index`` / ``seg_index`` tables, see :mod:`.indices`) with DuckDB:
  offline, no account, well under a second.  The release is the bundled one (``v25`` for
  idc-index-data 25.x).
* :func:`run_bigquery` aggregates ``dicom_all`` in IDC's public BigQuery dataset per series, with
  the expressions idc-index uses to build its tables: any release, billed to your project (a
  query reads a few columns of every instance in IDC, tens of GB).

Both return a :class:`~.query.CohortResult` whose records are the same for the same release.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ConfigError, NetworkUnreachable, SpineIdcError
from . import indices
from .query import DEFAULT_BIGQUERY_DATASET, CohortQuery, CohortResult, cohort_result
from .sql import bigquery_sql, bigquery_version_sql, duckdb_sql


def run_duckdb(
    q: CohortQuery,
    index_path: str | os.PathLike | None = None,
    indices_dir: str | os.PathLike | None = None,
    *,
    url_base: str | None = None,
) -> CohortResult:
    """Run ``q`` on idc-index's parquet tables with DuckDB.

    Parameters
    ----------
    q:
        The query.
    index_path:
        The series table (default: the one bundled with idc-index-data).
    indices_dir:
        Searched first for ``ct_index.parquet`` / ``seg_index.parquet`` when ``q`` needs them
        (see :func:`spine_idc.sources.idc.indices.locate_index`, which may download them).
    url_base:
        Replaces the download URL base of those tables.

    The records' ``index_version`` is the release of the installed idc-index-data.
    """
    import duckdb

    if index_path is None:
        tables = {"idc_index": indices.bundled_index_path()}
    else:
        tables = {"idc_index": indices.check_index_file(Path(index_path), "idc_index")}
    for name in q.needed_indices:
        tables[name] = indices.locate_index(name, indices_dir, url_base=url_base)
    sql, params = duckdb_sql(q, tables)
    with duckdb.connect() as con:
        try:
            cursor = con.execute(sql, params)
        except duckdb.InvalidInputException as e:
            raise ConfigError(f"query failed in DuckDB: {e}", hint="description patterns use RE2 "
                              "syntax (no look-around or back-references)") from e
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values)) for values in cursor.fetchall()]
    return cohort_result(q, rows, indices.idc_release())


def run_bigquery(
    q: CohortQuery,
    project: str | None = None,
    dataset: str = DEFAULT_BIGQUERY_DATASET,
    *,
    client: Any = None,
) -> CohortResult:
    """Run ``q`` on IDC's public BigQuery tables.

    Parameters
    ----------
    q:
        The query.
    project:
        The Google Cloud project billed for the query (default: ``$GOOGLE_CLOUD_PROJECT``).
        Credentials are the application default credentials (``gcloud auth
        application-default login``); they are never read from the config.
    dataset:
        ``project.dataset`` of the IDC release to query: ``bigquery-public-data.idc_current``
        (the latest) or a pinned one such as ``bigquery-public-data.idc_v25``.
    client:
        A ready ``google.cloud.bigquery.Client`` to use instead of making one.

    Raises
    ------
    ConfigError
        google-cloud-bigquery is not installed, or no project or credentials are found.
    NetworkUnreachable
        BigQuery cannot be reached.
    """
    import requests

    try:
        import google.auth.exceptions
        from google.api_core import exceptions as api_exceptions
        from google.cloud import bigquery
    except ImportError as e:
        raise ConfigError("the BigQuery backend needs google-cloud-bigquery",
                          hint="pip install 'spine-idc[bigquery]'") from e
    sql, params = bigquery_sql(q, dataset)
    if client is None:
        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if not project:
            raise ConfigError("no Google Cloud project to bill the BigQuery query to",
                              hint="set GOOGLE_CLOUD_PROJECT, or use the duckdb backend (offline, free)")
        try:
            client = bigquery.Client(project=project)
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise ConfigError("no Google Cloud credentials found",
                              hint="run `gcloud auth application-default login`") from e
    job_config = bigquery.QueryJobConfig(query_parameters=[p.to_bigquery() for p in params])
    try:
        (version_row,) = list(client.query(bigquery_version_sql(dataset)).result())
        rows = [dict(row.items()) for row in client.query(sql, job_config=job_config).result()]
    except google.auth.exceptions.RefreshError as e:
        raise ConfigError(f"Google Cloud credentials were refused: {e}",
                          hint="run `gcloud auth application-default login` again") from e
    except (google.auth.exceptions.TransportError, api_exceptions.RetryError,
            api_exceptions.ServiceUnavailable, requests.exceptions.ConnectionError) as e:
        raise NetworkUnreachable(f"BigQuery cannot be reached: {e}",
                                 hint="connect, or use the duckdb backend (offline)") from e
    except api_exceptions.GoogleAPICallError as e:
        raise SpineIdcError(f"BigQuery query on {dataset} failed: {e}",
                            hint=f"check that project {client.project} may run BigQuery jobs") from e
    return cohort_result(q, rows, f"v{int(version_row['idc_version'])}")
