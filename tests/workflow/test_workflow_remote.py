"""The whole workflow on remote sources: phantoms served by Orthanc (DICOMweb) and by a local S3
server in IDC's bucket layout (s5cmd), with faults; and an offline `make run` that stops at once.

The servers are real (Orthanc with its DICOMweb plugin, moto's S3 server) and run on loopback,
started by the tests.  Marked ``slow``: each runs Snakemake end to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from support.local_process import free_port
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc, upload
from spine_idc.phantom import write_phantom
from support.workflow_run import _keys, check_outputs, snakemake

pytestmark = pytest.mark.slow


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.skipif(not orthanc_available(), reason=UNAVAILABLE_REASON)
def test_dicomweb_source_end_to_end(tmp_path):
    """`snakemake --config source=dicomweb dicomweb_url=<Orthanc>` on phantoms, with an MR
    series the CT search must leave out."""
    series = {}
    for seed in (3, 4):
        files, _ = write_phantom(seed, tmp_path / "phantoms" / str(seed))
        series[_uid(files)] = files
    mr, _ = write_phantom(5, tmp_path / "phantoms" / "mr")
    for f in mr[:12]:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    with start_orthanc(tmp_path / "orthanc") as server:
        for files in series.values():
            upload(server, files)
        upload(server, mr[:12])
        work = tmp_path / "run"
        snakemake(work, "source=dicomweb", f"dicomweb_url={server.url}")  # the command
    keys = _keys(work)
    assert sorted(keys) == sorted(series)
    manifest = pd.read_csv(work / "results" / "manifest.tsv", sep="\t", dtype=str)
    assert set(manifest["source"]) == {"dicomweb"}
    assert all(loc.startswith(server.url) for loc in manifest["location"])
    check_outputs(work, keys)
    for key, files in series.items():  # the SEG references exactly the served instances
        seg = pydicom.dcmread(work / "results" / "series" / key / "seg.dcm", stop_before_pixels=True)
        referenced = {i.ReferencedSOPInstanceUID
                      for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
        assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert pd.read_csv(work / "results" / "cohort" / "failures.csv").empty


@pytest.mark.skipif(not orthanc_available(), reason=UNAVAILABLE_REASON)
def test_results_are_published_once_with_a_viewer_url(tmp_path):
    """publish.to=dicomweb: SEG, SR and (include_source) the CT land in Orthanc; the cohort table
    has the viewer URL; publishing again stores nothing twice."""
    import requests

    with start_orthanc(tmp_path / "orthanc") as server:
        config = ("source=phantom", "phantom={'count': 1, 'first_seed': 0, 'size': 'test'}",
                  f"publish={{'to': 'dicomweb', 'url': '{server.url}', 'include_source': True}}")
        work = tmp_path / "run"
        snakemake(work, *config)
        (key,) = _keys(work)
        table = check_outputs(work, [key])
        assert set(table["viewer_url"]) == {table["viewer_url"].iloc[0]}
        assert table["viewer_url"].iloc[0].startswith(f"{server.rest}/app/explorer.html#study?uuid=")
        seg = pydicom.dcmread(work / "results" / "series" / key / "seg.dcm", stop_before_pixels=True)
        sr = pydicom.dcmread(work / "results" / "series" / key / "sr.dcm", stop_before_pixels=True)
        found = requests.get(f"{server.url}/studies/{seg.StudyInstanceUID}/series", timeout=30).json()
        series = {item["0020000E"]["Value"][0]: item["00080060"]["Value"][0] for item in found}
        assert series == {key: "CT", seg.SeriesInstanceUID: "SEG", sr.SeriesInstanceUID: "SR"}
        before = requests.get(f"{server.rest}/statistics", timeout=30).json()["CountInstances"]
        for done in (work / "work" / "publish" / f"{key}.json", *(work / "work" / "done" / "publish").iterdir(),
                     *(work / "results" / "cohort").iterdir()):
            done.unlink()  # publish again, as a fresh run against the same store would
        snakemake(work, *config)
        after = requests.get(f"{server.rest}/statistics", timeout=30).json()
        assert after["CountInstances"] == before
        record = json.loads((work / "work" / "publish" / f"{key}.json").read_text())
        assert {i["status"] for i in record["instances"]} == {"already-present"}


def write_standin_index(path: Path, series: list[tuple[list[Path], str, int]]) -> Path:
    """An idc_index parquet with the bundled one's exact schema, listing our own series.

    ``series``: (files, location ``s3://bucket/<uuid>/``, instanceCount as indexed).
    """
    import duckdb
    import idc_index_data

    con = duckdb.connect()
    con.execute("CREATE TABLE idx AS SELECT * FROM read_parquet(?) LIMIT 0",
                [str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)])
    for files, location, count in series:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        bucket, prefix = location[len("s3://"):].strip("/").split("/")
        con.execute(
            "INSERT INTO idx (collection_id, PatientID, SeriesInstanceUID, StudyInstanceUID,"
            " StudyDescription, BodyPartExamined, Modality, SOPClassUID, SeriesDescription,"
            " instanceCount, license_short_name, aws_bucket, crdc_series_uuid, series_aws_url,"
            " series_size_MB) VALUES ('spine_phantoms', ?, ?, ?, ?, 'SPINE', 'CT', ?, ?, ?,"
            " 'CC BY 4.0', ?, ?, ?, ?)",
            [str(ds.PatientID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
             str(ds.StudyDescription), str(ds.SOPClassUID), str(ds.SeriesDescription), count,
             bucket, prefix, f"s3://{bucket}/{prefix}/*", sum(f.stat().st_size for f in files) / 1e6])
    con.execute(f"COPY idx TO '{path}' (FORMAT parquet)")
    return path


def test_idc_source_end_to_end_on_a_local_s3(tmp_path):
    """source=idc with the real query, s5cmd and verification against a local S3 server in IDC's
    layout: two good series finish; one with an instance missing from the bucket and one with an
    object cut short are recorded as download failures; a scout is left out by the query."""
    from support.s3_server import IDC_BUCKET, start_moto, upload_series

    made = {name: write_phantom(seed, tmp_path / "phantoms" / name)[0]
            for name, seed in (("good-a", 0), ("good-b", 4), ("missing", 2), ("cut", 3), ("scout", 9))}
    for f in made["scout"]:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "SCOUT"
        ds.save_as(f)
    with start_moto(tmp_path) as server:
        listed = []
        for name, files in made.items():
            if name == "missing":
                uploaded = upload_series(server.url, IDC_BUCKET, files[:-1])
            elif name == "cut":
                uploaded = upload_series(server.url, IDC_BUCKET, files, truncate={5: 0.5})
            else:
                uploaded = upload_series(server.url, IDC_BUCKET, files)
            listed.append((files, uploaded.location, len(files)))
        index = write_standin_index(tmp_path / "idc_index.parquet", listed)
        work = tmp_path / "run"
        snakemake(work, "source=idc", f"idc={{'index': '{index}'}}",
                  "query={'collections': ['spine_phantoms'], 'max_series': 'null'}",
                  f"download={{'endpoint_url': '{server.url}', 'retries': 0}}")
    uid = {name: _uid(files) for name, files in made.items()}
    manifest = pd.read_csv(work / "results" / "manifest.tsv", sep="\t", dtype=str)
    assert sorted(manifest["series_key"]) == sorted(uid[n] for n in ("good-a", "good-b", "missing", "cut"))
    assert set(manifest["index_version"]) == {f"v{idc_release()}"}
    assert set(manifest["collection_id"]) == {"spine_phantoms"} and set(manifest["license"]) == {"CC BY 4.0"}
    table = check_outputs(work, [uid["good-a"], uid["good-b"]])
    assert set(table["collection_id"]) == {"spine_phantoms"} and set(table["license"]) == {"CC BY 4.0"}
    failures = pd.read_csv(work / "results" / "cohort" / "failures.csv", dtype=str)
    got = dict(zip(failures["series_key"], zip(failures["stage"], failures["reason"])))
    assert got == {uid["missing"]: ("download", "incomplete-download"),
                   uid["cut"]: ("download", "corrupt-instance")}
    for key in (uid["missing"], uid["cut"]):
        assert not (work / "work" / "download" / key / "dicom").exists()
        assert not (work / "work" / "convert" / key / "volume.nii.gz").exists()


def idc_release() -> int:
    import idc_index_data

    return int(idc_index_data.__version__.split(".")[0])


@pytest.mark.parametrize("endpoint", ["closed-port", "http://no-such-host.invalid"])
def test_offline_idc_run_stops_within_seconds(tmp_path, endpoint):
    """What `make run` does without a network: one clear message, pointing at `make demo`."""
    if endpoint == "closed-port":
        endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = snakemake(tmp_path, "source=idc", f"download={{'endpoint_url': '{endpoint}'}}", check=False)
    elapsed = time.monotonic() - started
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "make demo" in text and "network" in text, text[-3000:]
    assert not (tmp_path / "work" / "download").exists()
    assert elapsed < 60, f"took {elapsed:.0f} s"  # snakemake start-up included; the probe is ~instant


@pytest.mark.network
def test_make_run_on_idc(tmp_path):
    """The shipped config.yaml on the real IDC (the internet needed): a few spine CTs, every stage."""
    snakemake(tmp_path)
    keys = _keys(tmp_path)
    assert 1 <= len(keys) <= 3
    manifest = pd.read_csv(tmp_path / "results" / "manifest.tsv", sep="\t", dtype=str)
    assert set(manifest["source"]) == {"idc"} and manifest["index_version"].str.match(r"v\d+").all()
    failures = pd.read_csv(tmp_path / "results" / "cohort" / "failures.csv", dtype=str)
    assert not (failures["stage"] == "download").any()
    done = [k for k in keys if k not in set(failures["series_key"])]
    check_outputs(tmp_path, done)
