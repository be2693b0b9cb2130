"""Cohort queries: which IDC CT series a run processes.

A :class:`CohortQuery` is the config's ``query`` section, checked once when it is built.  It is
written as SQL by :mod:`.sql` and run by :mod:`.backends`: idc-index's bundled tables through
DuckDB (offline, no account, well under a second) or IDC's BigQuery dataset (any release, billed
to your project), which return the same records (:func:`records_from_rows`) for the same IDC
release.

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
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ConfigError
from ...uids import is_valid_uid

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
SELECTORS = ("collections", "analysis_results", "body_parts", "series_description",
              "study_description", "include_series")
_PATTERNS = ("series_description", "study_description", "exclude_series_description")
_TEXT_LISTS = SELECTORS + ("exclude_series_description", "exclude_sop_classes", "licenses",
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

        ``backend`` chooses the run function (:func:`.backends.run_duckdb` or
        :func:`.backends.run_bigquery`), not the cohort, and is ignored here.
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
        if not any(getattr(self, name) for name in SELECTORS):
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


def cohort_result(q: CohortQuery, rows: list[dict], index_version: str) -> CohortResult:
    records = records_from_rows(rows, index_version)
    found = {r["series_key"] for r in records}
    absent = [uid for uid in q.include_series if uid not in found]
    if absent:
        log.warning("%d include_series UID(s) are not in IDC %s: %s", len(absent), index_version,
                    ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
    log.info("cohort: %d series from IDC %s", len(records), index_version)
    return CohortResult(records=records, index_version=index_version)

