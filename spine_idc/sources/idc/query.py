"""Cohort queries: which IDC CT series a run processes.

A :class:`CohortQuery` is the config's ``query`` section, checked once when it is built.  It runs
on either of two backends, which return the same records for the same IDC release:

* :func:`run_duckdb` reads the series table bundled with idc-index-data (and, when a filter needs
  them, the ``ct_index`` / ``seg_index`` tables, see :mod:`.indices`) with DuckDB:
  offline, no account, well under a second.  The release is the bundled one (``v25`` for
  idc-index-data 25.x).
* :func:`run_bigquery` aggregates ``dicom_all`` in IDC's public BigQuery dataset per series, with
  the expressions idc-index uses to build its tables: any release, billed to your project (a
  query reads a few columns of every instance in IDC, tens of GB).

Filters
-------
Filters combine with AND, the values inside one list with OR; an empty list or ``None`` turns a
filter off.  Names (collections, body parts, licences, analysis results) match
case-insensitively, UIDs exactly.

``collections``
    ``collection_id`` is one of these.
``analysis_results``
    A SEG series of one of these ``analysis_result_id`` values segments the series (its
    ``segmented_SeriesInstanceUID`` in ``seg_index``), e.g. ``totalsegmentator_ct_segmentations``.
``body_parts``
    ``BodyPartExamined`` equals one of these (``LSPINE``, ``SPINE``, ``TSPINE``, ...).
``series_description``, ``study_description``
    Regular expressions (RE2 syntax, searched anywhere in the text: anchor with ``^...$``); a
    series matches when any pattern matches.  A missing description is matched as ``""``.
``exclude_series_description``
    Series whose description matches any of these patterns are dropped (``scout|topogram``).
``modality``
    ``Modality`` (only ``"CT"`` is supported).
``min_slice_thickness_mm``, ``max_slice_thickness_mm``
    ``ct_index.SliceThickness`` within the bounds (inclusive); when a bound is set, series without
    a SliceThickness (or not in ``ct_index``, which lists CT Image Storage series) are dropped.
``min_instances``, ``max_instances``
    ``instanceCount`` within the bounds (inclusive; ``min_instances`` defaults to 20, which
    leaves out localizers and scouts).
``max_size_mb``
    ``series_size_MB`` at most this (keeps a laptop-sized cohort).
``exclude_sop_classes``
    ``SOPClassUID`` is none of these (default: Enhanced CT and Legacy Converted Enhanced CT,
    multi-frame objects that the converter, which reads single-frame CT Image Storage, cannot).
``licenses``
    ``license_short_name`` is one of these (``CC BY 4.0``, ...).

Selecting and sampling
----------------------
At least one of ``collections``, ``analysis_results``, ``body_parts``, ``series_description``,
``study_description`` or ``include_series`` must be given (otherwise the query would select all
of IDC's CT: :class:`~spine_idc.errors.ConfigError`).  The cohort is then:

1. the *candidates*: series passing every filter (none when only ``include_series`` is given),
   less ``exclude_series`` and ``include_series``;
2. if ``max_series`` is set, only the ``max_series`` candidates with the smallest
   ``md5("<seed>:<SeriesInstanceUID>")`` hex digests: a seeded sample that is the same on both
   backends and nested (raising ``max_series`` keeps the series already drawn);
3. plus every ``include_series`` UID found in the index, whatever the filters and on top of
   ``max_series``, unless it is also in ``exclude_series`` (which is a configuration error).

Records come sorted by SeriesInstanceUID; rows whose SeriesInstanceUID is not a valid UID are
dropped with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError, NetworkUnreachable, SpineIdcError
from ...uids import is_valid_uid
from . import indices

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
#: Other SOP classes IDC files under Modality CT (v25: 584 Secondary Capture series, screenshots
#: and rendered views of up to 195 frames; 399 Raw Data; 2 PET), none of which the converter reads.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
DEFAULT_EXCLUDE_SOP_CLASSES = (ENHANCED_CT, LEGACY_CONVERTED_ENHANCED_CT, SECONDARY_CAPTURE,
                               RAW_DATA, PET_IMAGE)
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
DEFAULT_BIGQUERY_DATASET = "bigquery-public-data.idc_current"

#: The columns both backends return, named as in idc-index's series table.
ROW_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality", "SeriesDescription",
    "instanceCount", "collection_id", "BodyPartExamined", "license_short_name", "series_size_MB",
    "aws_bucket", "crdc_series_uuid",
)
#: The keys of each record (they become manifest columns).
RECORD_KEYS = (
    "series_key", "series_instance_uid", "study_instance_uid", "patient_id", "modality",
    "series_description", "n_instances", "collection_id", "body_part", "license", "size_mb",
    "location", "index_version",
)
_SELECTORS = ("collections", "analysis_results", "body_parts", "series_description",
              "study_description", "include_series")
_PATTERNS = ("series_description", "study_description", "exclude_series_description")
_TEXT_LISTS = _SELECTORS + ("exclude_series_description", "exclude_sop_classes", "licenses",
                            "exclude_series")


@dataclasses.dataclass(frozen=True)
class CohortQuery:
    """Which IDC series form the cohort (see the module docstring for the semantics).

    List fields accept any sequence of strings (a lone string is one value) and are stored as
    tuples.  The defaults are those of the config schema's ``query`` section (a test keeps them
    equal).  The constructor checks everything and raises :class:`ConfigError`.
    """

    collections: tuple[str, ...] = ()
    analysis_results: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series_description: tuple[str, ...] = ()
    study_description: tuple[str, ...] = ()
    exclude_series_description: tuple[str, ...] = ()
    modality: str = "CT"
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_instances: int = 20
    max_instances: int | None = None
    max_size_mb: float | None = None
    exclude_sop_classes: tuple[str, ...] = DEFAULT_EXCLUDE_SOP_CLASSES
    licenses: tuple[str, ...] = ()
    include_series: tuple[str, ...] = ()
    exclude_series: tuple[str, ...] = ()
    max_series: int | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> CohortQuery:
        """Build from the config's ``query`` section; unknown keys are a :class:`ConfigError`.

        ``backend`` chooses the run function (:func:`run_duckdb` or :func:`run_bigquery`), not
        the cohort, and is ignored here.
        """
        section = {k: v for k, v in (section or {}).items() if k != "backend"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"query: unknown key(s) {', '.join(unknown)}",
                              hint=f"known keys: {', '.join(sorted(known))}")
        return cls(**section)

    def __post_init__(self) -> None:
        for name in _TEXT_LISTS:
            value = _text_tuple(name, getattr(self, name), strip=name not in _PATTERNS)
            object.__setattr__(self, name, value)
        if not isinstance(self.modality, str) or self.modality.upper() != "CT":
            raise ConfigError(f"query.modality: {self.modality!r} is not supported",
                              hint='only "CT" series can be converted and segmented')
        object.__setattr__(self, "modality", "CT")
        for name in _PATTERNS:
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"query.{name}: {pattern!r} is not a regular expression ({e})") from e
        for name in ("include_series", "exclude_series"):
            for uid in getattr(self, name):
                if not is_valid_uid(uid):
                    raise ConfigError(f"query.{name}: {uid!r} is not a valid DICOM UID")
        both = sorted(set(self.include_series) & set(self.exclude_series))
        if both:
            raise ConfigError(f"query: {both[0]} is in both include_series and exclude_series")
        self._check_numbers()
        if not any(getattr(self, name) for name in _SELECTORS):
            raise ConfigError(
                "query: no selecting filter is set, so the query would select all of IDC's CT "
                "(hundreds of thousands of series)",
                hint="set at least one of query.collections, analysis_results, body_parts, "
                "series_description, study_description or include_series "
                "(e.g. body_parts: [LSPINE, SPINE, TSPINE])",
            )

    def _check_numbers(self) -> None:
        def number(name: str, *, integer: bool, minimum: float, optional: bool = True) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
                what = "an integer" if integer else "a number"
                raise ConfigError(f"query.{name}: {value!r} is not {what} >= {minimum}")

        number("min_slice_thickness_mm", integer=False, minimum=0)
        number("max_slice_thickness_mm", integer=False, minimum=0)
        number("min_instances", integer=True, minimum=1, optional=False)
        number("max_instances", integer=True, minimum=1)
        number("max_size_mb", integer=False, minimum=0)
        number("max_series", integer=True, minimum=1)
        number("seed", integer=True, minimum=-(2**63), optional=False)
        for low, high in (("min_slice_thickness_mm", "max_slice_thickness_mm"),
                          ("min_instances", "max_instances")):
            bounds = getattr(self, low), getattr(self, high)
            if None not in bounds and bounds[0] > bounds[1]:
                raise ConfigError(f"query: {low} ({bounds[0]}) exceeds {high} ({bounds[1]})")

    @property
    def needed_indices(self) -> tuple[str, ...]:
        """The optional idc-index tables this query reads (``ct_index``, ``seg_index``)."""
        needed = []
        if self.min_slice_thickness_mm is not None or self.max_slice_thickness_mm is not None:
            needed.append("ct_index")
        if self.analysis_results:
            needed.append("seg_index")
        return tuple(needed)


def _text_tuple(name: str, value: Any, *, strip: bool) -> tuple[str, ...]:
    # Blank entries are dropped: an empty pattern would match every series.
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"query.{name}: expected a list of strings, got {value!r}")
    return tuple(v.strip() if strip else v for v in value if v.strip())


@dataclasses.dataclass(frozen=True)
class CohortResult:
    """What a backend returned: one record per series (keys :data:`RECORD_KEYS`), sorted by UID."""

    records: list[dict]
    index_version: str


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


# ----------------------------------------------------------------------------------- SQL ---


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
    filtered = any(getattr(q, name) for name in _SELECTORS if name != "include_series")
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


# ------------------------------------------------------------------------------- records ---


def records_from_rows(rows: Sequence[Mapping[str, Any]], index_version: str) -> list[dict]:
    """Map backend rows (columns :data:`ROW_COLUMNS`) to cohort records (keys :data:`RECORD_KEYS`).

    Null text becomes ``""``, a null size ``0.0``; ``location`` is the bucket prefix holding the
    series' instances (``s3://<aws_bucket>/<crdc_series_uuid>/``).  Rows whose SeriesInstanceUID
    is not a valid UID are dropped with a warning.  The result is sorted by SeriesInstanceUID.
    """

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    records = []
    for row in rows:
        uid = text(row["SeriesInstanceUID"])
        if not is_valid_uid(uid):
            log.warning("dropping series %r (collection %s): not a valid DICOM UID",
                        uid, text(row.get("collection_id")))
            continue
        bucket, uuid = text(row.get("aws_bucket")), text(row.get("crdc_series_uuid"))
        size = row.get("series_size_MB")
        records.append({
            "series_key": uid,
            "series_instance_uid": uid,
            "study_instance_uid": text(row.get("StudyInstanceUID")),
            "patient_id": text(row.get("PatientID")),
            "modality": text(row.get("Modality")),
            "series_description": text(row.get("SeriesDescription")),
            "n_instances": int(row.get("instanceCount") or 0),
            "collection_id": text(row.get("collection_id")),
            "body_part": text(row.get("BodyPartExamined")),
            "license": text(row.get("license_short_name")),
            "size_mb": float(size) if size is not None else 0.0,
            "location": f"s3://{bucket}/{uuid}/" if bucket and uuid else "",
            "index_version": index_version,
        })
    records.sort(key=lambda r: r["series_key"])
    return records


def _result(q: CohortQuery, rows: list[dict], index_version: str) -> CohortResult:
    records = records_from_rows(rows, index_version)
    found = {r["series_key"] for r in records}
    absent = [uid for uid in q.include_series if uid not in found]
    if absent:
        log.warning("%d include_series UID(s) are not in IDC %s: %s", len(absent), index_version,
                    ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
    log.info("cohort: %d series from IDC %s", len(records), index_version)
    return CohortResult(records=records, index_version=index_version)


# ------------------------------------------------------------------------------ backends ---


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
    return _result(q, rows, indices.idc_release())


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
    return _result(q, rows, f"v{int(version_row['idc_version'])}")
