"""Shards: the manifest cut into fixed groups, and shard jobs that record every series."""

from __future__ import annotations

import json

import pytest

from spine_idc import layout
from spine_idc.config import MeasureConfig
from spine_idc.manifest import ManifestRow, read_manifest
from spine_idc.pipeline import shards


def rows(n: int) -> list[ManifestRow]:
    return [ManifestRow(series_key=f"1.2.3.{i}", series_instance_uid=f"1.2.3.{i}", study_instance_uid="1.2",
                        patient_id="P", modality="CT", series_description="", n_instances=10,
                        source="idc", location=f"s3://idc-open-data/{i:08d}-0000-0000-0000-000000000000/")
            for i in range(n)]


@pytest.mark.parametrize("n, size, expected", [(45, 20, [20, 20, 5]), (40, 20, [20, 20]), (3, 20, [3]),
                                               (0, 20, [])])
def test_the_manifest_is_cut_into_shards_in_key_order(tmp_path, n, size, expected):
    ids = shards.write_shards(list(reversed(rows(n))), tmp_path, size)
    assert ids == [f"s{i:05d}" for i in range(len(expected))] == shards.read_shard_ids(tmp_path)
    got = [read_manifest(tmp_path / f"{i}.tsv") for i in ids]
    assert [len(g) for g in got] == expected
    keys = [r.series_key for g in got for r in g]
    assert keys == sorted(r.series_key for r in rows(n))


def test_a_series_that_cannot_be_finished_is_recorded_and_the_shard_goes_on(tmp_path, monkeypatch):
    """A failure while measuring or writing the SEG/SR is a result (work/finish/<key>.json)."""
    from spine_idc.pipeline import stages
    from spine_idc.outcome import Failure, write_failure

    monkeypatch.chdir(tmp_path)
    table = tmp_path / "s.tsv"
    from spine_idc.manifest import write_manifest

    write_manifest(rows(2), table)
    # series 0: segmentation failed upstream; series 1: segmented, but its volume is missing
    seg0 = layout.path("segment", "1.2.3.0")
    seg0.mkdir(parents=True)
    write_failure(seg0, Failure("1.2.3.0", "segment", "no-spine", "no vertebra was found"))
    layout.path("segment", "1.2.3.1").mkdir(parents=True)
    layout.path("convert", "1.2.3.1").mkdir(parents=True)
    marker = tmp_path / "done.json"
    shards.finish(table, MeasureConfig(erosion_mm=3.0), marker)
    outcome = json.loads(marker.read_text())["series"]
    assert outcome["1.2.3.0"] == "failed:no-spine"
    assert outcome["1.2.3.1"] == "failed:measure-error"
    failure = stages.series_failure("1.2.3.1")
    assert failure.stage == "measure" and "unexpected" in failure.message
