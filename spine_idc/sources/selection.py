"""The cohort filters of the ``query`` config section, applied in Python to search results.

The IDC backends translate ``query`` into SQL (:mod:`.idc.sql`); a DICOMweb server can
only be searched by a few attributes, so its QIDO-RS results are filtered here with the same
meaning: descriptions by case-insensitive regular expression, BodyPartExamined case-insensitively,
instance count and size bounds, explicit includes and excludes, and the same seeded sample
(the first ``max_series`` by ``md5("<seed>:<SeriesInstanceUID>")``), so one ``query`` section
means one thing whatever the source.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import ConfigError

# Keys that only the IDC index can answer.
IDC_ONLY = ("collections", "analysis_results", "licenses", "min_slice_thickness_mm",
            "max_slice_thickness_mm")


def sample_key(seed: int, series_uid: str) -> str:
    """The sort key of the seeded sample (identical to the SQL backends' ``md5`` ordering)."""
    return hashlib.md5(f"{seed}:{series_uid}".encode()).hexdigest()


def _patterns(query: dict, key: str) -> list[re.Pattern]:
    try:
        return [re.compile(p, re.IGNORECASE) for p in query.get(key) or []]
    except re.error as e:
        raise ConfigError(f"query.{key}: invalid regular expression: {e}") from e


def select_records(records: list[dict], query: dict, *, source: str) -> list[dict]:
    """The records (manifest-shaped dicts) that the ``query`` section selects."""
    used = [k for k in IDC_ONLY if query.get(k)]
    if used:
        raise ConfigError(f"query keys {used} need the IDC index; source {source} cannot apply them",
                          hint="leave them empty, or use source: idc")
    series_re = _patterns(query, "series_description")
    study_re = _patterns(query, "study_description")
    exclude_re = _patterns(query, "exclude_series_description")
    body_parts = {b.upper() for b in query.get("body_parts") or []}
    include = set(query.get("include_series") or [])
    exclude = set(query.get("exclude_series") or [])
    lo, hi = query.get("min_instances") or 1, query.get("max_instances")
    max_mb = query.get("max_size_mb")

    def passes(rec: dict) -> bool:
        if rec.get("modality", "").upper() != query.get("modality", "CT"):
            return False
        if body_parts and rec.get("body_part", "").upper() not in body_parts:
            return False
        desc = rec.get("series_description", "")
        if series_re and not any(p.search(desc) for p in series_re):
            return False
        if study_re and not any(p.search(rec.get("study_description", "")) for p in study_re):
            return False
        if any(p.search(desc) for p in exclude_re):
            return False
        n = int(rec.get("n_instances", 0))
        if n < lo or (hi is not None and n > hi):
            return False
        if max_mb is not None and float(rec.get("size_mb") or 0.0) > max_mb:
            return False
        return True

    uid = "series_instance_uid"
    chosen = [r for r in records if r[uid] not in exclude and r[uid] not in include and passes(r)]
    if query.get("max_series") is not None:
        seed = int(query.get("seed", 0))
        chosen = sorted(chosen, key=lambda r: sample_key(seed, r[uid]))[: query["max_series"]]
    chosen += [r for r in records if r[uid] in include and r[uid] not in exclude]
    return sorted(chosen, key=lambda r: r[uid])
