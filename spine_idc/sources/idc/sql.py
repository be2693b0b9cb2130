"""The SQL of a :class:`~.query.CohortQuery`, in the two dialects its backends speak.

One statement (:func:`_cohort_sql`) serves DuckDB over idc-index's parquet tables
(:func:`duckdb_sql`) and IDC's BigQuery dataset (:func:`bigquery_sql`), so that both backends
select the same series; only how parameters, lists, regular expressions and md5 are written
differs (:class:`_Dialect`).  Every value from the configuration is bound as a parameter; the
BigQuery dataset, which cannot be, is checked against a pattern first.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...errors import ConfigError
from .query import (
    CT_IMAGE_STORAGE,
    DEFAULT_BIGQUERY_DATASET,
    ROW_COLUMNS,
    SEG_SOP_CLASSES,
    SELECTORS,
    CohortQuery,
)


@dataclasses.dataclass(frozen=True)
class BigQueryParameter:
    """A named BigQuery query parameter, kept free of the client library until it is sent."""

    name: str
    type: str  # STRING, INT64 or FLOAT64
    value: Any  # a scalar, or a tuple of scalars when ``array``
    array: bool = False

    def to_bigquery(self):
        """The ``google.cloud.bigquery`` parameter object."""
        from google.cloud import bigquery

        if self.array:
            return bigquery.ArrayQueryParameter(self.name, self.type, list(self.value))
        return bigquery.ScalarQueryParameter(self.name, self.type, self.value)


@dataclasses.dataclass(frozen=True)
class _Dialect:
    prefix: str  # how a named parameter is written: $name or @name
    in_list: Callable[[str, str], str]  # (expression, short list parameter: config values)
    in_uids: Callable[[str, str], str]  # (expression, list parameter that may be long: UIDs)
    regex: Callable[[str, str], str]  # (expression, pattern parameter)
    md5_hex: Callable[[str], str]  # (text expression)
    limit_parameter: bool  # whether LIMIT takes a bound parameter (a top-N beats a full ranking)


_DUCKDB = _Dialect(
    prefix="$",
    # A filter the parquet scan evaluates; a semi-join where the list may hold thousands of UIDs.
    in_list=lambda expr, p: f"list_contains({p}, {expr})",
    in_uids=lambda expr, p: f"{expr} IN (SELECT unnest({p}))",
    regex=lambda expr, p: f"regexp_matches(coalesce({expr}, ''), {p})",
    md5_hex=lambda text: f"md5({text})",
    limit_parameter=True,
)
_BIGQUERY = _Dialect(
    prefix="@",
    in_list=lambda expr, p: f"{expr} IN UNNEST({p})",
    in_uids=lambda expr, p: f"{expr} IN UNNEST({p})",
    regex=lambda expr, p: f"REGEXP_CONTAINS(COALESCE({expr}, ''), {p})",
    md5_hex=lambda text: f"TO_HEX(MD5({text}))",
    limit_parameter=False,
)


def _any_of(patterns: Sequence[str]) -> str:
    """One case-insensitive RE2 pattern matching where any of ``patterns`` matches."""
    return "(?i)" + "|".join(f"(?:{p})" for p in patterns)


def _filters(q: CohortQuery, dialect: _Dialect, bind: Callable[[str, Any], str]) -> list[str]:
    """The conditions a candidate series meets, on the columns of the ``series`` relation."""
    where = [f"Modality = {bind('modality', q.modality)}"]
    if q.exclude_series:
        uids = bind("exclude_series", list(q.exclude_series))
        where.append(f"NOT ({dialect.in_uids('SeriesInstanceUID', uids)})")
    if q.collections:
        names = bind("collections", [c.lower() for c in q.collections])
        where.append(dialect.in_list("lower(collection_id)", names))
    if q.analysis_results:
        where.append("SeriesInstanceUID IN (SELECT segmented_SeriesInstanceUID FROM seg_targets)")
    if q.body_parts:
        names = bind("body_parts", [b.upper() for b in q.body_parts])
        where.append(dialect.in_list("upper(BodyPartExamined)", names))
    if q.series_description:
        pattern = bind("series_description", _any_of(q.series_description))
        where.append(dialect.regex("SeriesDescription", pattern))
    if q.study_description:
        pattern = bind("study_description", _any_of(q.study_description))
        where.append(dialect.regex("StudyDescription", pattern))
    if q.exclude_series_description:
        pattern = bind("exclude_series_description", _any_of(q.exclude_series_description))
        where.append(f"NOT {dialect.regex('SeriesDescription', pattern)}")
    if q.min_slice_thickness_mm is not None:
        where.append(f"SliceThickness >= {bind('min_slice_thickness_mm', float(q.min_slice_thickness_mm))}")
    if q.max_slice_thickness_mm is not None:
        where.append(f"SliceThickness <= {bind('max_slice_thickness_mm', float(q.max_slice_thickness_mm))}")
    if q.min_instances > 1:
        where.append(f"instanceCount >= {bind('min_instances', q.min_instances)}")
    if q.max_instances is not None:
        where.append(f"instanceCount <= {bind('max_instances', q.max_instances)}")
    if q.max_size_mb is not None:
        where.append(f"series_size_MB <= {bind('max_size_mb', float(q.max_size_mb))}")
    if q.exclude_sop_classes:
        sop_classes = bind("exclude_sop_classes", list(q.exclude_sop_classes))
        where.append("NOT (" + dialect.in_list("coalesce(SOPClassUID, '')", sop_classes) + ")")
    if q.licenses:
        names = bind("licenses", [v.lower() for v in q.licenses])
        where.append(dialect.in_list("lower(license_short_name)", names))
    return where


def _cohort_sql(q: CohortQuery, dialect: _Dialect, series_cte: str, seg_cte: str | None,
                params: dict[str, Any]) -> str:
    """The dialect-independent part: filters, includes and sample over a ``series`` relation.

    ``series`` is read once (a second reference would make DuckDB materialise all of it and
    BigQuery scan ``dicom_all`` twice): one pass keeps the included series and the candidates,
    flagged, and the sample ranks the candidates only.
    """

    def bind(name: str, value: Any) -> str:
        params[name] = value
        return f"{dialect.prefix}{name}"

    ctes = [f"series AS ({series_cte})"]
    if seg_cte:
        ctes.append(f"seg_targets AS ({seg_cte})")
    included = (dialect.in_uids("SeriesInstanceUID", bind("include_series", list(q.include_series)))
                if q.include_series else "FALSE")
    filtered = any(getattr(q, name) for name in SELECTORS if name != "include_series")
    kept = [included] if q.include_series else []
    if filtered:
        kept.append("(" + "\n      AND ".join(_filters(q, dialect, bind)) + ")")
    ctes.append(f"selected AS (SELECT *, {included} AS is_included FROM series\n"
                f"  WHERE " + "\n     OR ".join(kept) + ")")
    columns = ", ".join(ROW_COLUMNS)
    if q.max_series is None or not filtered:
        body = f"SELECT {columns} FROM selected"
    elif not q.include_series and dialect.limit_parameter:
        key = dialect.md5_hex(f"CONCAT({bind('seed_prefix', f'{q.seed}:')}, SeriesInstanceUID)")
        body = (f"SELECT {columns} FROM (\n"
                f"  SELECT * FROM selected ORDER BY {key} LIMIT {bind('max_series', q.max_series)}"
                ") AS sample")
    else:
        key = dialect.md5_hex(f"CONCAT({bind('seed_prefix', f'{q.seed}:')}, SeriesInstanceUID)")
        body = (f"SELECT {columns} FROM (\n"
                f"  SELECT *, ROW_NUMBER() OVER (PARTITION BY is_included ORDER BY {key}) AS sample_rank\n"
                f"  FROM selected) AS ranked\n"
                f"WHERE is_included OR sample_rank <= {bind('max_series', q.max_series)}")
    return "WITH " + ",\n".join(ctes) + "\n" + body + "\nORDER BY SeriesInstanceUID"


def duckdb_sql(q: CohortQuery, tables: Mapping[str, str | os.PathLike]) -> tuple[str, dict[str, Any]]:
    """DuckDB SQL and its named parameters for ``q``.

    Parameters
    ----------
    q:
        The query.
    tables:
        Parquet paths by table name: ``idc_index`` always, ``ct_index`` and ``seg_index`` when
        ``q.needed_indices`` lists them.  Paths are bound as parameters too.
    """
    params: dict[str, Any] = {}
    missing = [n for n in ("idc_index", *q.needed_indices) if n not in tables]
    if missing:
        raise ValueError(f"duckdb_sql: no path given for table(s) {', '.join(missing)}")
    params["idc_index"] = str(tables["idc_index"])
    columns = ", ".join(f"i.{c}" for c in ROW_COLUMNS + ("StudyDescription", "SOPClassUID"))
    series = f"SELECT {columns}"
    if "ct_index" in q.needed_indices:
        params["ct_index"] = str(tables["ct_index"])
        series += (", ct.SliceThickness FROM read_parquet($idc_index) AS i "
                   "LEFT JOIN read_parquet($ct_index) AS ct ON ct.SeriesInstanceUID = i.SeriesInstanceUID")
    else:
        series += " FROM read_parquet($idc_index) AS i"
    seg = None
    if q.analysis_results:
        params["seg_index"] = str(tables["seg_index"])
        params["analysis_results"] = [a.lower() for a in q.analysis_results]
        seg = ("SELECT seg.segmented_SeriesInstanceUID FROM read_parquet($seg_index) AS seg\n"
               "  JOIN read_parquet($idc_index) AS seg_series\n"
               "    ON seg_series.SeriesInstanceUID = seg.SeriesInstanceUID\n"
               f"  WHERE {_DUCKDB.in_list('lower(seg_series.analysis_result_id)', '$analysis_results')}")
    return _cohort_sql(q, _DUCKDB, series, seg, params), params


# project.dataset; a domain-scoped project is written example.com:project.
_DATASET_RE = re.compile(r"(?:[a-z0-9.-]+:)?[A-Za-z0-9_-]+\.[A-Za-z0-9_]+")


def _checked_dataset(dataset: str) -> str:
    # A table name cannot be a bound parameter, so it is checked before it is written into SQL.
    if not isinstance(dataset, str) or not _DATASET_RE.fullmatch(dataset):
        raise ConfigError(f"BigQuery dataset {dataset!r} is not of the form project.dataset",
                          hint=f"e.g. {DEFAULT_BIGQUERY_DATASET} or bigquery-public-data.idc_v25")
    return dataset


def bigquery_sql(q: CohortQuery, dataset: str = DEFAULT_BIGQUERY_DATASET
                 ) -> tuple[str, list[BigQueryParameter]]:
    """BigQuery Standard SQL and its named parameters for ``q``, over ``dataset``'s tables.

    The per-series columns are aggregated from ``dicom_all`` (``BodyPartExamined`` from
    ``dicom_metadata_curated``) exactly as idc-index builds its series table; SliceThickness as
    ``ct_index`` does; the series an analysis result segments from its SEG instances' first
    reference, as ``seg_index`` does.
    """
    ds = _checked_dataset(dataset)
    params: dict[str, Any] = {}
    # ct_index takes any CT Image Storage instance's value; MAX also skips other instances' NULLs.
    slice_thickness = (
        f",\n    MAX(IF(dicom_all.SOPClassUID = '{CT_IMAGE_STORAGE}', "
        "SAFE_CAST(dicom_all.SliceThickness AS FLOAT64), NULL)) AS SliceThickness"
        if "ct_index" in q.needed_indices else "")
    scope = "dicom_all.Modality = @modality"
    params["modality"] = q.modality
    if q.include_series:
        scope += " OR dicom_all.SeriesInstanceUID IN UNNEST(@include_series)"
    series = f"""
  SELECT
    dicom_all.SeriesInstanceUID,
    ANY_VALUE(dicom_all.StudyInstanceUID) AS StudyInstanceUID,
    ANY_VALUE(dicom_all.PatientID) AS PatientID,
    ANY_VALUE(dicom_all.Modality) AS Modality,
    ANY_VALUE(NULLIF(dicom_all.SeriesDescription, '')) AS SeriesDescription,
    ANY_VALUE(dicom_all.StudyDescription) AS StudyDescription,
    COUNT(dicom_all.SOPInstanceUID) AS instanceCount,
    ANY_VALUE(dicom_all.collection_id) AS collection_id,
    ANY_VALUE(dicom_curated.BodyPartExamined) AS BodyPartExamined,
    ANY_VALUE(dicom_all.license_short_name) AS license_short_name,
    SUM(SAFE_CAST(dicom_all.instance_size AS FLOAT64)) / 1000000. AS series_size_MB,
    ANY_VALUE(dicom_all.aws_bucket) AS aws_bucket,
    ANY_VALUE(dicom_all.crdc_series_uuid) AS crdc_series_uuid,
    ANY_VALUE(dicom_all.SOPClassUID) AS SOPClassUID{slice_thickness}
  FROM `{ds}.dicom_all` AS dicom_all
  LEFT JOIN `{ds}.dicom_metadata_curated` AS dicom_curated
    ON dicom_all.SOPInstanceUID = dicom_curated.SOPInstanceUID
  WHERE {scope}
  GROUP BY dicom_all.SeriesInstanceUID
"""
    seg = None
    if q.analysis_results:
        params["analysis_results"] = [a.lower() for a in q.analysis_results]
        seg_classes = ", ".join(f"'{c}'" for c in SEG_SOP_CLASSES)
        seg = f"""
  SELECT referenced.SeriesInstanceUID AS segmented_SeriesInstanceUID
  FROM (
    SELECT COALESCE(
      ReferencedSeriesSequence[SAFE_OFFSET(0)].ReferencedInstanceSequence[SAFE_OFFSET(0)].ReferencedSOPInstanceUID,
      ReferencedImageSequence[SAFE_OFFSET(0)].ReferencedSOPInstanceUID,
      SourceImageSequence[SAFE_OFFSET(0)].ReferencedSOPInstanceUID) AS referenced_sop
    FROM `{ds}.dicom_all`
    WHERE Modality = 'SEG' AND SOPClassUID IN ({seg_classes})
      AND LOWER(analysis_result_id) IN UNNEST(@analysis_results)
  ) AS segs
  JOIN `{ds}.dicom_all` AS referenced ON referenced.SOPInstanceUID = segs.referenced_sop
"""
    sql = _cohort_sql(q, _BIGQUERY, series, seg, params)
    return sql, [_bigquery_parameter(name, value) for name, value in params.items()]


def bigquery_version_sql(dataset: str = DEFAULT_BIGQUERY_DATASET) -> str:
    """SQL for the IDC release a BigQuery dataset holds (one row, column ``idc_version``)."""
    return f"SELECT MAX(idc_version) AS idc_version FROM `{_checked_dataset(dataset)}.version_metadata`"


def _bigquery_parameter(name: str, value: Any) -> BigQueryParameter:
    def kind(v: Any) -> str:
        return "INT64" if isinstance(v, int) else "FLOAT64" if isinstance(v, float) else "STRING"

    if isinstance(value, list):
        return BigQueryParameter(name, "STRING", tuple(value), array=True)
    return BigQueryParameter(name, kind(value), value)

