"""The per-series records between stages: their JSON is what it always was, and reads back."""

from __future__ import annotations

import json

from spine_idc.measure import VertebraMeasurement
from spine_idc.outcome import Failure
from spine_idc.pipeline.records import Finished, Measured, Published

L1 = VertebraMeasurement(
    level="L1", label_value=20, voxel_count=1000, volume_ml=40.5, trabecular_mean_hu=181.2,
    trabecular_median_hu=180.0, trabecular_voxels=300, centroid_lps_mm=(1.0, -2.5, 30.0),
    body_height_anterior_mm=24.0, body_height_middle_mm=22.5, body_height_posterior_mm=25.0,
    height_ratio=0.9, touches_border=False,
)
FAIL = Failure("s1", "publish", "publish-refused", "the store said 409", hint="replace it")


def test_measured_round_trip_and_the_json_written_before(tmp_path):
    rec = Measured("s1", "1.2.3", "1.2", "P1", (L1,), {"erosion_mm": 3.0},
                   {"levels": ["L1"], "confidence": 0.7})
    path = tmp_path / "m.json"
    rec.write(path)
    data = json.loads(path.read_text())
    # the keys and shapes the cohort and the SR writer have always read
    assert list(data) == ["series_key", "series_instance_uid", "study_instance_uid",
                          "patient_id", "measurements", "measure_options", "qc"]
    assert data["measurements"][0]["centroid_lps_mm"] == [1.0, -2.5, 30.0]
    assert Measured.read(path) == rec


def test_finished_and_published_records(tmp_path):
    assert Finished("s1").to_dict() == {"series_key": "s1", "status": "ok"}
    failed = Finished("s1", FAIL)
    assert failed.to_dict()["status"] == "failed"
    failed.write(tmp_path / "f.json")
    assert Finished.read(tmp_path / "f.json") == failed

    refused = Published("s1", "http://store", attempt=2, failure=FAIL)
    assert refused.to_dict() == {"series_key": "s1", "store": "http://store", "attempt": 2,
                                 "failure": json.loads(json.dumps(FAIL.__dict__))}
    stored = Published("s1", "http://store", 1, "http://viewer/x", 0.25,
                       ({"sop_instance_uid": "1.2.3.4", "status": "stored"},))
    assert list(stored.to_dict()) == ["series_key", "store", "attempt", "viewer_url", "seconds",
                                      "instances"]
    stored.write(tmp_path / "p.json")
    assert Published.read(tmp_path / "p.json") == stored
