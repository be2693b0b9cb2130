"""Time cohort queries on the bundled IDC index: spine-idc's DuckDB backend beside idc-index.

Each query is run end to end through :func:`spine_idc.sources.idc.backends.run_duckdb` (SQL on the
parquet file, then the mapping to records) and its median over ``--repeat`` runs is printed.  The
spine-tagged query is also run through ``idc_index.IDCClient().sql_query`` on the same index,
with the client's construction (which loads the whole table into pandas) timed on its own.
Usage::

    python bench/query.py [--repeat 5] [--no-idc-index]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from spine_idc.sources.idc import indices
from spine_idc.sources.idc.backends import run_duckdb
from spine_idc.sources.idc.query import DEFAULT_EXCLUDE_SOP_CLASSES, CohortQuery

SPINE = {"body_parts": ["LSPINE", "SPINE", "TSPINE"]}

# The spine-tagged query as idc-index users write it, on its in-memory ``index`` table.
IDC_INDEX_SPINE_SQL = f"""
SELECT SeriesInstanceUID, StudyInstanceUID, PatientID, Modality, SeriesDescription, instanceCount,
       collection_id, BodyPartExamined, license_short_name, series_size_MB, aws_bucket, crdc_series_uuid
FROM index
WHERE Modality = 'CT' AND upper(BodyPartExamined) IN ('LSPINE', 'SPINE', 'TSPINE')
  AND SOPClassUID NOT IN ({", ".join(f"'{c}'" for c in DEFAULT_EXCLUDE_SOP_CLASSES)})
  AND instanceCount >= {CohortQuery.min_instances}
ORDER BY SeriesInstanceUID
"""


def median_s(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-idc-index", action="store_true", help="skip IDCClient (5 s, ~2 GB)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    first = run_duckdb(CohortQuery.from_config(SPINE))
    cold = time.perf_counter() - t0
    nlst_uids = [r["series_key"] for r in run_duckdb(
        CohortQuery.from_config({"collections": ["nlst"], "max_series": 100, "seed": 99})).records]
    queries = {
        "spine-tagged CT (body_parts)": SPINE,
        "NLST, seeded sample of 1000": {"collections": ["nlst"], "max_series": 1000},
        "spine-tagged + 100 included + 1 excluded": {
            **SPINE, "include_series": nlst_uids, "exclude_series": [first.records[0]["series_key"]]},
        "spine-tagged, regex + instances + size": {
            **SPINE, "exclude_series_description": ["scout|topogram|localizer"], "min_instances": 50,
            "max_size_mb": 400},
    }
    print(f"IDC index {indices.idc_release()} (idc-index-data {indices.data_version()}), "
          f"median of {args.repeat} runs; first query in this process: {cold * 1000:.0f} ms "
          f"(imports included)\n")
    rows = []
    for label, section in queries.items():
        q = CohortQuery.from_config(section)
        seconds, result = median_s(lambda q=q: run_duckdb(q), args.repeat)
        rows.append([label, len(result.records), seconds, None])

    if not args.no_idc_index:
        from idc_index import IDCClient

        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        client = IDCClient()
        construct = time.perf_counter() - t0
        seconds, frame = median_s(lambda: client.sql_query(IDC_INDEX_SPINE_SQL), args.repeat)
        same = sorted(frame["SeriesInstanceUID"]) == [r["series_key"] for r in first.records]
        rows[0][3] = seconds
        print(f"IDCClient() construction: {construct:.2f} s, peak RSS {rss_before:.0f} -> {peak_rss_mb():.0f} MB; "
              f"same spine series as spine-idc: {same}\n")

    print(f"{'query':44s} {'series':>7s} {'spine-idc':>10s} {'idc-index':>10s} {'ratio':>7s}")
    for label, n, ours, theirs in rows:
        other = f"{theirs * 1000:8.0f}ms" if theirs else f"{'-':>10s}"
        ratio = f"{theirs / ours:6.1f}x" if theirs else ""
        print(f"{label:44s} {n:7d} {ours * 1000:8.0f}ms {other} {ratio:>7s}")
    if rows[0][3]:
        print("\nratio = idc-index time / spine-idc time for the same query (idc-index's construction "
              "not included)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
