"""The IDC cohort query: filters on the real bundled index, sampling, optional tables, BigQuery SQL.

Everything runs on idc-index-data's bundled series table.  ``ct_index`` and ``seg_index`` are not
bundled, so their tests write small stand-ins (the real column names, rows pointing at real
series) and pass them through ``indices_dir``; the download path is tested against a local HTTP
server and a closed port.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import http.server
import logging
import os
import re
import socket
import threading
import time

import duckdb
import idc_index_data
import platformdirs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spine_idc.config import load_schema
from spine_idc.errors import ConfigError, NetworkUnreachable, SpineIdcError
from spine_idc.sources.idc import indices
from spine_idc.sources.idc.backends import run_bigquery, run_duckdb
from spine_idc.sources.idc.query import (
    CT_IMAGE_STORAGE,
    RECORD_KEYS,
    ROW_COLUMNS,
    SECONDARY_CAPTURE,
    CohortQuery,
    records_from_rows,
)
from spine_idc.sources.idc.sql import bigquery_sql, bigquery_version_sql, duckdb_sql

SPINE_PARTS = ["LSPINE", "SPINE", "TSPINE"]
SPINE_COLLECTIONS = {"spinal_multiple_myeloma_seg", "spine_mets_ct_seg", "cmb_mel", "cmb_mml", "eay131"}
V25_SPINE_COUNTS = {"spinal_multiple_myeloma_seg": 576, "spine_mets_ct_seg": 51, "cmb_mel": 19,
                    "cmb_mml": 9, "eay131": 1}
IS_V25 = indices.idc_release() == "v25"
MAX_QUERY_S = 1.0  # the issue asks for interactive queries; measured ~0.2-0.4 s here
ABSENT_UID = "1.2.3.4.5.6.7.8.9"  # valid syntax, in no IDC release


def query(**section) -> CohortQuery:
    """A query with no instance bound unless one is given, so counts are the index's own."""
    return CohortQuery.from_config({"min_instances": 1, **section})


def run(q: CohortQuery, **kwargs):
    """run_duckdb, asserting that the query answers well under a second.

    On a machine that other processes keep busy (load above the core count) the wall time says
    more about them than about the query, so the query's own CPU time is checked instead, and a
    slow answer is timed again (up to three tries) before it counts as slow.
    """
    times = []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_duckdb(q, **kwargs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
        times.append(f"{wall:.2f} s ({cpu:.2f} s CPU)")
        if (cpu if busy else wall) < MAX_QUERY_S:
            return result
    pytest.fail(f"query took {', '.join(times)}")


def uids(result) -> list[str]:
    return [r["series_key"] for r in result.records]


def index_sql(sql: str, *params) -> list[tuple]:
    """Ask the bundled index directly (the reference the filters are checked against)."""
    path = str(indices.bundled_index_path())
    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW idx AS SELECT * FROM read_parquet('{path}')")
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture(scope="module", autouse=True)
def warm():
    """One query first, so the timed ones do not pay for importing DuckDB."""
    run_duckdb(query(collections=["eay131"]))


@pytest.fixture(scope="module")
def spine():
    return run(query(body_parts=SPINE_PARTS))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty idc-index cache and a download URL on a closed loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/release"
    monkeypatch.setenv(indices.URL_BASE_ENV, url)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return url


# ------------------------------------------------------------------------- the spine cohort ---


def test_spine_tagged_cohort(spine):
    counts = collections.Counter(r["collection_id"] for r in spine.records)
    assert set(counts) == SPINE_COLLECTIONS
    assert len(spine.records) > 500
    if IS_V25:
        assert counts == V25_SPINE_COUNTS
    assert spine.index_version == indices.idc_release()
    assert uids(spine) == sorted(uids(spine))
    for record in spine.records:
        assert tuple(record) == RECORD_KEYS
        assert record["series_key"] == record["series_instance_uid"]
        assert record["modality"] == "CT"
        assert record["body_part"] in SPINE_PARTS
        assert isinstance(record["n_instances"], int) and record["n_instances"] >= 1
        assert isinstance(record["size_mb"], float) and record["size_mb"] > 0
        assert re.fullmatch(r"s3://idc-open-data/[0-9a-f-]{36}/", record["location"])
        assert record["index_version"] == spine.index_version
        assert isinstance(record["series_description"], str)


def test_location_is_the_series_aws_url_prefix(spine):
    urls = dict(index_sql("SELECT SeriesInstanceUID, series_aws_url FROM idx WHERE collection_id = 'eay131'"))
    records = [r for r in spine.records if r["collection_id"] == "eay131"]
    assert records and all(urls[r["series_key"]] == r["location"] + "*" for r in records)


def test_same_config_same_records(spine):
    assert run(query(body_parts=SPINE_PARTS)).records == spine.records


def test_body_parts_are_case_insensitive_and_or_combined(spine):
    lower = run(query(body_parts=["lspine"]))
    assert lower.records and {r["body_part"] for r in lower.records} == {"LSPINE"}
    assert set(uids(lower)) < set(uids(spine))


def test_collections_narrow_case_insensitively(spine):
    mets = run(query(body_parts=SPINE_PARTS, collections=["SPINE_METS_CT_SEG"]))
    assert {r["collection_id"] for r in mets.records} == {"spine_mets_ct_seg"}
    expected = {r["series_key"] for r in spine.records if r["collection_id"] == "spine_mets_ct_seg"}
    assert set(uids(mets)) == expected
    alone = run(query(collections=["spine_mets_ct_seg", "eay131"]))
    assert {r["collection_id"] for r in alone.records} == {"spine_mets_ct_seg", "eay131"}
    assert all(r["modality"] == "CT" for r in alone.records)


# ------------------------------------------------------------------------------ text filters ---


def test_series_description_regex_matches_like_python(spine):
    patterns = ["^calcium suppression", "monoe 40"]
    got = run(query(body_parts=SPINE_PARTS, series_description=patterns))
    expected = {r["series_key"] for r in spine.records
                if any(re.search(p, r["series_description"], re.I) for p in patterns)}
    assert expected and set(uids(got)) == expected
    assert len(got.records) < len(spine.records)


def test_exclude_series_description_drops_matches(spine):
    got = run(query(body_parts=SPINE_PARTS, exclude_series_description=["scout|topogram|localizer"]))
    dropped = {r["series_key"] for r in spine.records if re.search("scout", r["series_description"], re.I)}
    assert dropped
    assert set(uids(got)) == set(uids(spine)) - dropped


def test_missing_description_matches_as_empty_text():
    everything = run(query(collections=["cmb_mel"], exclude_sop_classes=[]))
    blank = {r["series_key"] for r in everything.records if r["series_description"] == ""}
    assert blank
    only_blank = run(query(collections=["cmb_mel"], exclude_sop_classes=[], series_description=["^$"]))
    assert set(uids(only_blank)) == blank
    kept = run(query(collections=["cmb_mel"], exclude_sop_classes=[], exclude_series_description=["^$"]))
    assert set(uids(kept)) == set(uids(everything)) - blank


def test_study_description_narrows(spine):
    rows = index_sql(
        "SELECT SeriesInstanceUID FROM idx WHERE Modality = 'CT' AND SOPClassUID = ?"
        " AND BodyPartExamined IN ('LSPINE', 'SPINE', 'TSPINE')"
        " AND regexp_matches(StudyDescription, '(?i)spine\\^')", CT_IMAGE_STORAGE)
    got = run(query(body_parts=SPINE_PARTS, study_description=[r"SPINE\^"]))
    assert rows and set(uids(got)) == {uid for (uid,) in rows}
    assert len(got.records) < len(spine.records)


def test_study_description_alone_selects():
    got = run(query(study_description=["^CT_LSpine$"]))
    assert got.records and len(got.records) < 100


# --------------------------------------------------------------------------- number filters ---


def test_instance_bounds(spine):
    got = run(query(body_parts=SPINE_PARTS, min_instances=200, max_instances=600))
    expected = {r["series_key"] for r in spine.records if 200 <= r["n_instances"] <= 600}
    assert expected and set(uids(got)) == expected and len(expected) < len(spine.records)


def test_max_size_mb(spine):
    got = run(query(body_parts=SPINE_PARTS, max_size_mb=100))
    expected = {r["series_key"] for r in spine.records if r["size_mb"] <= 100}
    assert expected and set(uids(got)) == expected and len(expected) < len(spine.records)
    assert all(r["size_mb"] <= 100 for r in got.records)


def test_licenses():
    both = run(query(collections=["eay131", "nsclc_radiomics_interobserver1"]))
    assert {r["license"] for r in both.records} == {"CC BY 4.0", "CC BY-NC 3.0"}
    by = run(query(collections=["eay131", "nsclc_radiomics_interobserver1"], licenses=["cc by 4.0"]))
    assert set(uids(by)) == {r["series_key"] for r in both.records if r["license"] == "CC BY 4.0"}


def test_exclude_sop_classes():
    every = run(query(collections=["cmb_mel"], exclude_sop_classes=[]))
    rows = index_sql("SELECT SeriesInstanceUID FROM idx WHERE collection_id = 'cmb_mel' AND SOPClassUID = ?",
                     SECONDARY_CAPTURE)
    captures = {uid for (uid,) in rows}
    assert captures  # rendered views and screenshots filed under Modality CT
    by_default = run(query(collections=["cmb_mel"]))  # the default leaves captures out too
    assert set(uids(by_default)) == set(uids(every)) - captures
    no_sc = run(query(collections=["cmb_mel"], exclude_sop_classes=[SECONDARY_CAPTURE]))
    assert set(uids(no_sc)) == set(uids(every)) - captures
    no_ct = run(query(collections=["cmb_mel"], exclude_sop_classes=[CT_IMAGE_STORAGE]))
    assert set(uids(no_ct)) == captures


# ------------------------------------------------------------------- include, exclude, sample ---


def test_include_and_exclude_series(spine):
    (nlst_uid,) = index_sql("SELECT min(SeriesInstanceUID) FROM idx WHERE collection_id = 'nlst'")[0]
    dropped = spine.records[3]["series_key"]
    got = run(query(body_parts=SPINE_PARTS, include_series=[nlst_uid, ABSENT_UID], exclude_series=[dropped]))
    assert set(uids(got)) == set(uids(spine)) - {dropped} | {nlst_uid}
    assert uids(got) == sorted(uids(got))


def test_include_series_alone_and_whatever_the_filters(caplog):
    seg_uid = index_sql("SELECT min(SeriesInstanceUID) FROM idx WHERE Modality = 'SEG'")[0][0]
    with caplog.at_level(logging.WARNING, logger="spine_idc.sources.idc.query"):
        got = run(query(include_series=[seg_uid, ABSENT_UID], body_parts=[]))
    assert uids(got) == [seg_uid] and got.records[0]["modality"] == "SEG"
    assert ABSENT_UID in caplog.text


def test_sample_is_the_smallest_seeded_md5(spine):
    sample = run(query(body_parts=SPINE_PARTS, max_series=50, seed=1))
    ranked = sorted(uids(spine), key=lambda uid: hashlib.md5(f"1:{uid}".encode()).hexdigest())
    assert set(uids(sample)) == set(ranked[:50])
    assert run(query(body_parts=SPINE_PARTS, max_series=50, seed=1)).records == sample.records
    other = run(query(body_parts=SPINE_PARTS, max_series=50, seed=2))
    assert len(other.records) == 50 and set(uids(other)) != set(uids(sample))
    smaller = run(query(body_parts=SPINE_PARTS, max_series=20, seed=1))
    assert set(uids(smaller)) < set(uids(sample))  # nested: a larger sample keeps the smaller one


def test_included_series_are_not_sampled(spine):
    sample = run(query(body_parts=SPINE_PARTS, max_series=10))
    extra = next(uid for uid in uids(spine) if uid not in uids(sample))
    with_extra = run(query(body_parts=SPINE_PARTS, max_series=10, include_series=[extra]))
    assert set(uids(with_extra)) == set(uids(sample)) | {extra}  # the same 10 drawn, plus one


def test_nlst_sample_of_1000():
    got = run(query(collections=["nlst"], max_series=1000, seed=7))
    assert len(got.records) == 1000
    assert {r["collection_id"] for r in got.records} == {"nlst"}


# ----------------------------------------------------------------------------- configuration ---


def test_safety_refuses_all_of_idc():
    with pytest.raises(ConfigError, match="all of IDC's CT") as info:
        query(licenses=["CC BY 4.0"], max_series=10)
    assert "body_parts" in str(info.value)
    with pytest.raises(ConfigError, match="all of IDC's CT"):
        CohortQuery.from_config({})


@pytest.mark.parametrize("section, match", [
    ({"body_parts": ["SPINE"], "include_series": ["1.2.03"]}, "1.2.03"),
    ({"body_parts": ["SPINE"], "exclude_series": ["../x"]}, r"\.\./x"),
    ({"include_series": ["1.2.3"], "exclude_series": ["1.2.3"]}, "both"),
    ({"body_parts": ["SPINE"], "modality": "MR"}, "modality"),
    ({"body_parts": ["SPINE"], "collection": ["x"]}, "unknown key"),
    ({"body_parts": ["SPINE"], "series_description": ["(unclosed"]}, "regular expression"),
    ({"body_parts": ["SPINE"], "min_instances": 50, "max_instances": 10}, "exceeds"),
    ({"body_parts": ["SPINE"], "max_series": 0}, "max_series"),
    ({"body_parts": ["SPINE"], "max_size_mb": "big"}, "max_size_mb"),
    ({"body_parts": "SPINE", "collections": [3]}, "collections"),
])
def test_bad_sections_are_config_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        CohortQuery.from_config(section)


def test_re2_only_syntax_is_a_config_error():
    q = query(body_parts=SPINE_PARTS, series_description=[r"(?<=a)b"])  # look-behind: not RE2
    with pytest.raises(ConfigError, match="RE2"):
        run_duckdb(q)


def test_defaults_are_the_config_schema_defaults():
    schema = load_schema("config")["properties"]["query"]["properties"]
    defaults = {f.name: f.default for f in dataclasses.fields(CohortQuery)}
    assert set(schema) - {"backend"} == set(defaults)
    for name, default in defaults.items():
        expected = schema[name]["default"]
        assert (list(default) if isinstance(default, tuple) else default) == expected, name


def test_from_config_takes_the_whole_section():
    section = {"backend": "duckdb", "body_parts": ["SPINE"]}
    assert CohortQuery.from_config(section) == CohortQuery(body_parts=["SPINE"])
    assert CohortQuery.from_config(section).min_instances == 20


def test_lists_are_normalised():
    q = query(body_parts="SPINE", collections=None, exclude_series_description=["  ", "scout"])
    assert q.body_parts == ("SPINE",) and q.collections == () and q.exclude_series_description == ("scout",)
    assert q.needed_indices == ()


# ------------------------------------------------------------- ct_index and seg_index stand-ins ---


def write_stand_in(path, name: str, rows: list[dict]) -> None:
    """A parquet file with the real table's columns (from idc-index-data's schema), few rows."""
    types = {"STRING": pa.string(), "FLOAT": pa.float64(), "INTEGER": pa.int64(), "BOOLEAN": pa.bool_()}
    fields = []
    for column in idc_index_data.INDEX_METADATA[name]["schema"]["columns"]:
        kind = types[column["type"]]
        fields.append(pa.field(column["name"], pa.list_(kind) if column["mode"] == "REPEATED" else kind))
    schema = pa.schema(fields)
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)
    pq.write_table(table, path)


def test_slice_thickness_uses_ct_index(tmp_path, offline, spine):
    chosen = uids(spine)[:5]
    thickness = [0.6, 1.0, 2.5, 5.0, None]
    write_stand_in(tmp_path / "ct_index.parquet", "ct_index", [
        {"SeriesInstanceUID": uid, "SliceThickness": t, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}
        for uid, t in zip(chosen, thickness)])
    thin = run(query(body_parts=SPINE_PARTS, max_slice_thickness_mm=2.5), indices_dir=tmp_path)
    assert set(uids(thin)) == set(chosen[:3])  # the unknown thickness and absent series are dropped
    band = run(query(body_parts=SPINE_PARTS, min_slice_thickness_mm=1, max_slice_thickness_mm=2.5),
               indices_dir=tmp_path)
    assert set(uids(band)) == set(chosen[1:3])


def test_analysis_results_use_seg_index(tmp_path, offline, spine):
    def seg_series(analysis_result_id, n):
        rows = index_sql("SELECT SeriesInstanceUID FROM idx WHERE analysis_result_id = ? "
                         "AND Modality = 'SEG' ORDER BY SeriesInstanceUID LIMIT ?", analysis_result_id, n)
        return [uid for (uid,) in rows]

    targets = uids(spine)[:3]
    total = seg_series("totalsegmentator_ct_segmentations", 2)
    (bamf,) = seg_series("bamf_aimi_annotations", 1)
    write_stand_in(tmp_path / "seg_index.parquet", "seg_index", [
        {"SeriesInstanceUID": seg, "segmented_SeriesInstanceUID": target, "AlgorithmName": name}
        for seg, target, name in [(total[0], targets[0], "TotalSegmentator"),
                                  (total[1], targets[1], "TotalSegmentator"),
                                  (bamf, targets[2], "BAMF"),
                                  ("1.2.3.4", None, None)]])
    # Only seg_index is needed: ct_index is absent and its download would fail, so it is not touched.
    got = run(query(analysis_results=["TotalSegmentator_CT_Segmentations"]), indices_dir=tmp_path)
    assert uids(got) == sorted(targets[:2])
    either = run(query(analysis_results=["totalsegmentator_ct_segmentations", "bamf_aimi_annotations"]),
                 indices_dir=tmp_path)
    assert uids(either) == sorted(targets)
    not_bamf = run(query(analysis_results=["bamf_aimi_annotations"], exclude_series=[targets[2]]),
                   indices_dir=tmp_path)
    assert not_bamf.records == []


def test_missing_index_offline_is_network_unreachable(offline):
    t0 = time.perf_counter()
    with pytest.raises(NetworkUnreachable) as info:
        run_duckdb(query(body_parts=SPINE_PARTS, min_slice_thickness_mm=1.0))
    assert time.perf_counter() - t0 < 5
    message = str(info.value)
    assert "ct_index" in message and f"{offline}/ct_index.parquet" in message and "indices_dir" in message


def test_filters_without_optional_tables_stay_offline(offline):
    assert run(query(body_parts=SPINE_PARTS, max_size_mb=50)).records


def test_idc_index_cache_is_shared(tmp_path, offline):
    cache = indices.cache_dir()
    assert cache == tmp_path / "xdg" / "idc_index_data" / idc_index_data.__version__
    # the folder idc-index itself uses for fetched tables
    assert str(cache) == platformdirs.user_data_dir("idc_index_data", "IDC",
                                                    version=idc_index_data.__version__)
    cache.mkdir(parents=True)
    write_stand_in(cache / "ct_index.parquet", "ct_index",
                   [{"SeriesInstanceUID": "1.2.3", "SliceThickness": 1.0}])
    assert indices.locate_index("ct_index") == cache / "ct_index.parquet"
    other = tmp_path / "mine"
    other.mkdir()
    write_stand_in(other / "ct_index.parquet", "ct_index", [])
    assert indices.locate_index("ct_index", other) == other / "ct_index.parquet"  # indices_dir first


def test_wrong_stand_in_is_rejected(tmp_path, offline):
    pq.write_table(pa.table({"SeriesInstanceUID": ["1.2.3"]}), tmp_path / "ct_index.parquet")
    with pytest.raises(SpineIdcError, match="SliceThickness"):
        indices.locate_index("ct_index", tmp_path)


@pytest.fixture
def release_server(tmp_path):
    """A local HTTP server standing in for the GitHub release, serving tmp_path/release."""
    folder = tmp_path / "release"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_into_the_cache(release_server, monkeypatch, tmp_path):
    folder, url = release_server
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    write_stand_in(folder / "seg_index.parquet", "seg_index", [{"SeriesInstanceUID": "1.2.3"}])
    path = indices.locate_index("seg_index", url_base=url)
    assert path == indices.cache_dir() / "seg_index.parquet"
    assert path.read_bytes() == (folder / "seg_index.parquet").read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["seg_index.parquet"]  # no temporary left
    (folder / "seg_index.parquet").unlink()
    assert indices.locate_index("seg_index", url_base=url) == path  # cached: the server is not asked


def test_bad_download_leaves_nothing(release_server, monkeypatch, tmp_path):
    folder, url = release_server
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (folder / "ct_index.parquet").write_text("<html>rate limited</html>")
    with pytest.raises(SpineIdcError, match="not a readable parquet"):
        indices.locate_index("ct_index", url_base=url)
    with pytest.raises(SpineIdcError, match="HTTP 404") as info:
        indices.locate_index("seg_index", url_base=url)
    assert not isinstance(info.value, NetworkUnreachable)
    assert not any(indices.cache_dir().glob("*"))


# ---------------------------------------------------------------------------------- BigQuery ---


def full_query() -> CohortQuery:
    return query(
        collections=["Evil'); DROP TABLE x; --"], analysis_results=["totalsegmentator_ct_segmentations"],
        body_parts=["lspine"], series_description=["bone"], study_description=["spine"],
        exclude_series_description=["scout"], min_slice_thickness_mm=0.5, max_slice_thickness_mm=3,
        min_instances=30, max_instances=2000, max_size_mb=500.0, licenses=["CC BY 4.0"],
        include_series=["1.2.3.4"], exclude_series=["1.2.3.5"], max_series=25, seed=11,
    )


def test_bigquery_sql_binds_every_value_and_reads_the_right_tables():
    q = full_query()
    sql, params = bigquery_sql(q, "bigquery-public-data.idc_v25")
    for table in ("dicom_all", "dicom_metadata_curated"):
        assert f"`bigquery-public-data.idc_v25.{table}`" in sql
    for value in ("Evil", "lspine", "LSPINE", "bone", "scout", "1.2.3.4", "1.2.3.5", "CC BY", "11:",
                  "500", "2000"):
        assert value not in sql
    assert "idc_current" not in sql and "$" not in sql
    by_name = {p.name: p for p in params}
    assert by_name["collections"].array and by_name["collections"].value == ("evil'); drop table x; --",)
    assert by_name["body_parts"].value == ("LSPINE",)
    assert by_name["max_series"].type == "INT64" and by_name["max_series"].value == 25
    thickness = by_name["max_slice_thickness_mm"]
    assert (thickness.type, thickness.value) == ("FLOAT64", 3.0)
    assert by_name["seed_prefix"].value == "11:"
    assert "TO_HEX(MD5(CONCAT(@seed_prefix, SeriesInstanceUID)))" in sql
    assert by_name["series_description"].value == "(?i)(?:bone)"
    for name in by_name:
        assert f"@{name}" in sql
    assert "SAFE_CAST(dicom_all.SliceThickness AS FLOAT64)" in sql  # as ct_index computes it
    assert "SUM(SAFE_CAST(dicom_all.instance_size AS FLOAT64)) / 1000000." in sql  # as idc_index does
    assert "LOWER(analysis_result_id) IN UNNEST(@analysis_results)" in sql


def test_both_backends_bind_the_same_filters():
    q = full_query()
    tables = {"idc_index": "a.parquet", "ct_index": "b.parquet", "seg_index": "c.parquet"}
    duck_sql, duck = duckdb_sql(q, tables)
    _, bq = bigquery_sql(q)
    duck_filters = {k: (tuple(v) if isinstance(v, list) else v) for k, v in duck.items() if k not in tables}
    assert duck_filters == {p.name: p.value for p in bq}
    assert "Evil" not in duck_sql and "a.parquet" not in duck_sql


def test_bigquery_sql_leaves_out_unused_tables():
    sql, params = bigquery_sql(query(body_parts=SPINE_PARTS))
    assert "SliceThickness" not in sql and "ReferencedSeriesSequence" not in sql
    assert {p.name for p in params} == {"modality", "body_parts", "exclude_sop_classes"}


@pytest.mark.parametrize("dataset", ["x", "a.b`; DROP", "proj.ds.table", "proj.ds name"])
def test_bigquery_dataset_is_checked(dataset):
    with pytest.raises(ConfigError, match="project.dataset"):
        bigquery_sql(query(body_parts=SPINE_PARTS), dataset)


def test_bigquery_version_sql():
    assert bigquery_version_sql("bigquery-public-data.idc_v25") == \
        "SELECT MAX(idc_version) AS idc_version FROM `bigquery-public-data.idc_v25.version_metadata`"
    table_sql = idc_index_data.INDEX_METADATA["version_metadata_index"]["sql"]
    assert ".version_metadata`" in table_sql


def test_records_from_bigquery_shaped_rows(caplog):
    from google.cloud.bigquery.table import Row

    fields = {name: i for i, name in enumerate(ROW_COLUMNS)}
    rows = [
        Row(("1.2.3.20", "1.2.3", "P2", "CT", None, 120, "c", None, "CC BY 4.0", 61.5,
             "idc-open-data", "0a1b"), fields),
        Row(("1.2.3.10", None, None, "CT", "bone", 3, "c", "LSPINE", None, None, None, None), fields),
        Row(("1.2.03", "1.2.3", "P3", "CT", "x", 5, "c", "SPINE", "CC BY 4.0", 1.0, "b", "u"), fields),
    ]
    with caplog.at_level(logging.WARNING, logger="spine_idc.sources.idc.query"):
        records = records_from_rows([dict(row.items()) for row in rows], "v26")
    assert "1.2.03" in caplog.text
    assert [r["series_key"] for r in records] == ["1.2.3.10", "1.2.3.20"]
    first, second = records
    assert tuple(first) == RECORD_KEYS
    assert first == {"series_key": "1.2.3.10", "series_instance_uid": "1.2.3.10", "study_instance_uid": "",
                     "patient_id": "", "modality": "CT", "series_description": "bone", "n_instances": 3,
                     "collection_id": "c", "body_part": "LSPINE", "license": "", "size_mb": 0.0,
                     "location": "", "index_version": "v26"}
    assert second["location"] == "s3://idc-open-data/0a1b/" and second["series_description"] == ""
    assert second["size_mb"] == 61.5 and second["body_part"] == ""


def test_bigquery_needs_a_project(monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(ConfigError, match="project"):
        run_bigquery(query(body_parts=SPINE_PARTS))


def test_bigquery_parameters_convert_to_the_client_types():
    _, params = bigquery_sql(full_query())
    api = {p.name: p.to_bigquery().to_api_repr() for p in params}
    assert api["collections"]["parameterType"] == {"type": "ARRAY", "arrayType": {"type": "STRING"}}
    assert api["max_series"]["parameterType"] == {"type": "INT64"}
    assert api["max_size_mb"]["parameterType"] == {"type": "FLOAT64"}


@pytest.mark.network
@pytest.mark.skipif(not os.environ.get("GOOGLE_CLOUD_PROJECT"),
                    reason="needs GOOGLE_CLOUD_PROJECT and application default credentials")
def test_bigquery_matches_duckdb_on_the_same_release():
    q = query(collections=["spine_mets_ct_seg"], min_instances=100, max_series=20, seed=3)
    local = run_duckdb(q)
    remote = run_bigquery(q, dataset=f"bigquery-public-data.idc_{local.index_version}")
    assert remote.index_version == local.index_version
    assert uids(remote) == uids(local)
    for a, b in zip(remote.records, local.records):
        assert a == {**b, "size_mb": pytest.approx(b["size_mb"])}
