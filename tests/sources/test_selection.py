"""The `query` filters applied in Python (DICOMweb search results) mean what they mean in SQL."""

from __future__ import annotations

import duckdb
import pytest

from spine_idc.config import validate_config
from spine_idc.errors import ConfigError
from spine_idc.sources.selection import sample_key, select_records


def record(i: int, **changes) -> dict:
    uid = f"1.2.826.0.1.3680043.8.498.{i}"
    rec = {"series_instance_uid": uid, "series_key": uid, "modality": "CT", "body_part": "LSPINE",
           "series_description": "AXIAL BONE", "study_description": "CT L-SPINE",
           "n_instances": 120, "size_mb": 60.0}
    rec.update(changes)
    return rec


def query(**changes) -> dict:
    return validate_config({"query": changes})["query"]


def uids(records):
    return [r["series_instance_uid"] for r in records]


RECORDS = [
    record(1), record(2, series_description="SCOUT"), record(3, body_part="CHEST"),
    record(4, n_instances=3), record(5, size_mb=900.0), record(6, modality="MR"),
    record(7, study_description="CT abdomen"), record(8, series_description="Sag bone recon"),
]


@pytest.mark.parametrize("changes, kept", [
    ({}, [1, 2, 3, 5, 7, 8]),
    ({"body_parts": ["lspine"]}, [1, 2, 5, 7, 8]),
    ({"exclude_series_description": ["scout", "^sag"]}, [1, 3, 5, 7]),
    ({"series_description": ["bone"]}, [1, 3, 5, 7, 8]),
    ({"study_description": ["spine"]}, [1, 2, 3, 5, 8]),
    ({"min_instances": 2, "max_instances": 100}, [4]),
    ({"max_size_mb": 200}, [1, 2, 3, 7, 8]),
    ({"exclude_series": [record(1)["series_instance_uid"]]}, [2, 3, 5, 7, 8]),
    ({"body_parts": ["CHEST"], "include_series": [record(4)["series_instance_uid"]]}, [3, 4]),
])
def test_each_filter(changes, kept):
    got = select_records(RECORDS, query(**changes), source="dicomweb")
    assert uids(got) == [record(i)["series_instance_uid"] for i in kept]


def test_the_sample_is_seeded_and_the_same_as_in_sql():
    many = [record(i) for i in range(100, 160)]
    a = select_records(many, query(max_series=10, seed=3), source="dicomweb")
    assert uids(a) == uids(select_records(many, query(max_series=10, seed=3), source="dicomweb"))
    assert uids(a) != uids(select_records(many, query(max_series=10, seed=4), source="dicomweb"))
    # The SQL backends order by md5('<seed>:' || uid): the same ten.
    rows = duckdb.sql("SELECT u FROM (SELECT unnest(?) AS u) ORDER BY md5('3:' || u) LIMIT 10",
                      params=[uids(many)]).fetchall()
    assert sorted(r[0] for r in rows) == uids(a)
    assert sample_key(3, "1.2") == duckdb.sql("SELECT md5('3:1.2')").fetchone()[0]


def test_idc_only_keys_are_refused_for_a_dicomweb_source():
    with pytest.raises(ConfigError, match="collections"):
        select_records(RECORDS, query(collections=["nlst"]), source="dicomweb")


def test_a_bad_regular_expression_names_the_key():
    with pytest.raises(ConfigError, match="exclude_series_description"):
        select_records(RECORDS, query(exclude_series_description=["(unclosed"]), source="dicomweb")
