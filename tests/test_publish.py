"""Tests of spine_idc.publish against a real Orthanc on loopback, with real network faults.

Faults that count connections run against an Orthanc with ``KeepAlive`` off, so that every
request is one connection and "the k-th connection" is "the k-th request": for one instance,
look-up, POST, then the look-up that checks the store holds it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from spine_idc.dicom import AlgorithmInfo, write_seg
from spine_idc.dicom import write_sr
from spine_idc.dicomweb import PASSWORD_ENV, TOKEN_ENV, USER_ENV, Instance, StowAnswer, make_client
from spine_idc.errors import ConfigError, SeriesError, TransientError
from spine_idc.measure import measure_vertebrae
from spine_idc.publish import (
    IDC_VIEWER,
    PublishStatus,
    publish_files,
    publish_series,
    viewer_url,
)
from spine_idc.volume import Volume

from support.dciodvfy import dciodvfy_errors
from support.dicom_series import load_series, write_synthetic_series
from support.faultproxy import FaultProxy
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc

needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason=UNAVAILABLE_REASON)
ALGORITHM = AlgorithmInfo(version="0.1.0", parameters={"erosion_mm": "3.0"})
NO_KEEPALIVE = {"KeepAlive": False}
PASS = 10**9  # a byte budget no response here reaches: the connection passes untouched
FAST = {"retries": 3, "backoff_s": 0.1}


class Case:
    """A CT series with its SEG (about 1.5 MB) and SR, all valid per dciodvfy."""

    def __init__(self, root: Path):
        self.ct = write_synthetic_series(root / "ct", n_slices=48, rows=512, columns=512,
                                         pixel_spacing=(0.8, 0.6), slice_step=1.5)
        ct, info = load_series(root / "ct")
        hu = np.full(ct.array.shape, -100.0, dtype=np.float32)
        labels = np.zeros(ct.array.shape, dtype=np.uint8)
        bodies = np.zeros_like(labels)
        ni, nj, nk = ct.array.shape
        for value, ks in ((20, slice(1, nk // 2 - 1)), (19, slice(nk // 2 + 1, nk - 1))):
            bi, bj = slice(ni // 5, ni * 4 // 5), slice(nj * 3 // 8, nj * 3 // 4)
            labels[bi, bj, ks] = bodies[bi, bj, ks] = value
            labels[ni * 3 // 8 : ni * 5 // 8, nj // 16 : nj * 3 // 8, ks] = value  # posterior
            hu[bi, bj, ks] = 1000.0
            core = (slice(bi.start + 2, bi.stop - 2), slice(bj.start + 2, bj.stop - 2),
                    slice(ks.start + 1, ks.stop - 1))
            hu[core] = 150.0
        measurements = measure_vertebrae(Volume(hu, ct.affine), Volume(labels, ct.affine),
                                         Volume(bodies, ct.affine))
        self.seg = write_seg(Volume(labels, ct.affine), info, ALGORITHM, root / "seg.dcm")
        self.sr = write_sr(measurements, pydicom.dcmread(self.seg), info, ALGORITHM,
                           root / "sr.dcm", qc={"labels_contiguous": True, "spine_found": True})
        self.info = info
        self.key = info.series_instance_uid
        self.seg_ds = pydicom.dcmread(self.seg)
        self.sr_ds = pydicom.dcmread(self.sr)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    made = Case(tmp_path_factory.mktemp("publish-case"))
    for path in (made.seg, made.sr):
        assert dciodvfy_errors(path) == [], path
    assert made.seg.stat().st_size > 1_000_000
    return made


@pytest.fixture(scope="module")
def _orthanc_server(tmp_path_factory):
    if not orthanc_available():
        pytest.skip(UNAVAILABLE_REASON)
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def _plain_server(tmp_path_factory):
    if not orthanc_available():
        pytest.skip(UNAVAILABLE_REASON)
    root = tmp_path_factory.mktemp("orthanc-plain")
    with start_orthanc(root, extra_config=NO_KEEPALIVE) as server:
        yield server


def emptied(server):
    """The module's server, running and holding nothing (stopping Orthanc takes seconds)."""
    if server.process is None:
        server.start()
    for patient in requests.get(f"{server.rest}/patients", timeout=10).json():
        requests.delete(f"{server.rest}/patients/{patient}", timeout=10).raise_for_status()
    return server


@pytest.fixture
def orthanc(_orthanc_server):
    return emptied(_orthanc_server)


@pytest.fixture
def plain_orthanc(_plain_server):
    """An Orthanc that closes every connection after one request (see the module docstring)."""
    return emptied(_plain_server)


@pytest.fixture
def proxied(plain_orthanc):
    with FaultProxy("127.0.0.1", plain_orthanc.port) as proxy:
        yield plain_orthanc, proxy


def copies(server, uid: str) -> int:
    """How many instances with this SOPInstanceUID the Orthanc holds."""
    answer = requests.post(f"{server.rest}/tools/find", auth=server.auth, timeout=10,
                           json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}})
    answer.raise_for_status()
    return len(answer.json())


def n_instances(server) -> int:
    return len(requests.get(f"{server.rest}/instances", auth=server.auth, timeout=10).json())


def methods_seen(client) -> list[str]:
    """Record the method of every response the client's session receives."""
    seen: list[str] = []
    client._session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request.method))
    return seen


# --- publishing, finding, retrieving --------------------------------------------------------


@needs_orthanc
def test_published_seg_and_sr_are_found_and_retrieved_unchanged(case, orthanc):
    result = publish_series(case.seg, case.sr, url=orthanc.url, auth="none", series_key=case.key,
                            source_files=case.ct)
    assert [p.status for p in result.instances] == [PublishStatus.STORED] * (len(case.ct) + 2)
    assert result.store == orthanc.url and result.seconds > 0
    seg, sr = result.instances[-2:]
    assert (seg.sop_instance_uid, seg.sop_class_uid) == (case.seg_ds.SOPInstanceUID,
                                                         case.seg_ds.SOPClassUID)
    assert sr.path == str(case.sr) and sr.status == "stored"

    client = make_client(orthanc.url, auth="none")
    study = case.info.study_instance_uid
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [study]
    modalities = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0]
                  for s in client.search_for_series(study_instance_uid=study)}
    assert modalities == {case.key: "CT", seg.series_instance_uid: "SEG",
                          sr.series_instance_uid: "SR"}
    for published, original in ((seg, case.seg_ds), (sr, case.sr_ds)):
        (found,) = client.search_for_instances(study, published.series_instance_uid)
        assert found["00080018"]["Value"] == [published.sop_instance_uid]
        retrieved = client.retrieve_instance(study, published.series_instance_uid,
                                             published.sop_instance_uid)
        assert retrieved == original  # every element, pixel data included
        assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert np.array_equal(
        client.retrieve_instance(study, seg.series_instance_uid, seg.sop_instance_uid).pixel_array,
        case.seg_ds.pixel_array)

    (study_id,) = [s["ID"] for s in requests.post(f"{orthanc.rest}/tools/lookup", data=study,
                                                  timeout=10).json()]
    assert result.viewer_url == f"{orthanc.rest}/app/explorer.html#study?uuid={study_id}"
    assert requests.get(result.viewer_url.partition("#")[0], timeout=10).status_code == 200


@needs_orthanc
def test_publishing_twice_keeps_one_copy_and_replace_replaces(case, orthanc):
    first = publish_series(case.seg, case.sr, url=orthanc.url, auth="none", series_key=case.key)
    assert [p.status for p in first.instances] == ["stored", "stored"]

    client = make_client(orthanc.url, auth="none")
    seen = methods_seen(client)
    again = publish_files([case.seg, case.sr], client, series_key=case.key)
    assert [p.status for p in again] == [PublishStatus.ALREADY_PRESENT] * 2
    assert seen == ["GET", "GET"]  # a look-up each, nothing sent
    assert [copies(orthanc, p.sop_instance_uid) for p in again] == [1, 1]

    replaced = publish_files([case.seg, case.sr], client, series_key=case.key, replace=True)
    assert [p.status for p in replaced] == [PublishStatus.REPLACED] * 2
    assert [copies(orthanc, p.sop_instance_uid) for p in replaced] == [1, 1]
    assert n_instances(orthanc) == 2
    assert first.viewer_url == publish_series(case.seg, case.sr, url=orthanc.url, auth="none",
                                              series_key=case.key).viewer_url


@needs_orthanc
def test_replace_on_a_store_that_cannot_delete_is_a_config_error(case, tmp_path):
    # DICOMweb under /pacs/dicom-web: Orthanc's REST API is not next to it, so the store looks
    # like any DICOMweb server, and Orthanc's plugin has no DICOMweb DELETE (405).
    config = {"DicomWeb": {"Enable": True, "Root": "/pacs/dicom-web/"}}
    with start_orthanc(tmp_path / "orthanc", extra_config=config) as server:
        client = make_client(f"{server.rest}/pacs/dicom-web", auth="none")
        publish_files([case.sr], client, series_key=case.key)
        with pytest.raises(ConfigError, match="cannot delete instances.*HTTP 405"):
            publish_files([case.sr], client, series_key=case.key, replace=True)
        assert copies(server, case.sr_ds.SOPInstanceUID) == 1


# --- faults ---------------------------------------------------------------------------------


@needs_orthanc
def test_post_whose_answer_is_lost_is_not_sent_again(case, proxied):
    server, proxy = proxied
    proxy.cut_after(PASS)  # look-up
    proxy.cut_after(5)  # the POST: stored, then its answer is cut after "HTTP/"
    client = make_client(f"{proxy.url}/dicom-web", auth="none", **FAST)
    (published,) = publish_files([case.seg], client, series_key=case.key, **FAST)
    assert published.status == PublishStatus.STORED
    assert proxy.stats.cut == 1
    assert proxy.stats.connections == 3  # look-up, POST (cut), look-up that found it: no 2nd POST
    assert copies(server, case.seg_ds.SOPInstanceUID) == 1


@needs_orthanc
def test_post_that_hangs_past_the_timeout_is_not_sent_again(case, proxied):
    server, proxy = proxied
    proxy.cut_after(PASS)
    proxy.cut_after(0, how="hang")  # the request goes through, no answer ever comes back
    client = make_client(f"{proxy.url}/dicom-web", auth="none", timeout_s=2, **FAST)
    (published,) = publish_files([case.seg], client, series_key=case.key, **FAST)
    assert published.status == PublishStatus.STORED
    assert proxy.stats.connections == 3
    assert copies(server, case.seg_ds.SOPInstanceUID) == 1


@needs_orthanc
def test_connection_cut_during_the_upload_is_retried(case, proxied):
    server, proxy = proxied
    proxy.cut_after(PASS)
    proxy.cut_after(0)  # reset as the multi-MB body starts to flow
    client = make_client(f"{proxy.url}/dicom-web", auth="none", **FAST)
    seg, sr = publish_files([case.seg, case.sr], client, series_key=case.key, **FAST)
    assert (seg.status, sr.status) == (PublishStatus.STORED, PublishStatus.STORED)
    assert proxy.stats.cut == 1
    assert copies(server, seg.sop_instance_uid) == copies(server, sr.sop_instance_uid) == 1
    assert n_instances(server) == 2


@needs_orthanc
def test_server_stopped_mid_publish_comes_back(case, orthanc):
    client = make_client(orthanc.url, auth="none", retries=4, backoff_s=0.5)
    restarted = threading.Event()

    def stop_after_first_post(response, *args, **kwargs):
        if response.request.method == "POST" and not restarted.is_set():
            restarted.set()
            orthanc.stop()  # the SEG is stored; what follows meets a dead port ...
            threading.Timer(1.0, orthanc.start).start()  # ... until the server is back

    client._session.hooks["response"].append(stop_after_first_post)
    seg, sr = publish_files([case.seg, case.sr], client, series_key=case.key, retries=4,
                            backoff_s=0.5)
    assert restarted.is_set() and orthanc.process is not None
    assert (seg.status, sr.status) == (PublishStatus.STORED, PublishStatus.STORED)
    assert copies(orthanc, seg.sop_instance_uid) == copies(orthanc, sr.sop_instance_uid) == 1


@needs_orthanc
def test_proxy_down_then_up_during_backoff(case, proxied):
    server, proxy = proxied
    proxy.cut_after(PASS)  # look-up
    proxy.http_error(503)  # the POST fails, and then the server is gone for a second
    client = make_client(f"{proxy.url}/dicom-web", auth="none", retries=4, backoff_s=0.3)
    post, went_down = client._session.post, threading.Event()

    def post_then_go_down(*args, **kwargs):
        try:
            return post(*args, **kwargs)
        finally:
            if not went_down.is_set():
                went_down.set()
                proxy.down()
                threading.Timer(1.0, proxy.up).start()

    client._session.post = post_then_go_down
    (published,) = publish_files([case.seg], client, series_key=case.key, retries=4, backoff_s=0.3)
    assert went_down.is_set() and proxy.is_up
    assert published.status == PublishStatus.STORED
    assert proxy.stats.http_errors == 1
    assert copies(server, published.sop_instance_uid) == 1


@needs_orthanc
def test_503s_are_retried_to_success(case, proxied):
    server, proxy = proxied
    proxy.cut_after(PASS)  # look-up
    proxy.http_error(503, connections=2)  # the POST, then the look-up after it (session retry)
    client = make_client(f"{proxy.url}/dicom-web", auth="none", **FAST)
    (published,) = publish_files([case.sr], client, series_key=case.key, **FAST)
    assert published.status == PublishStatus.STORED
    assert proxy.stats.http_errors == 2
    assert copies(server, published.sop_instance_uid) == 1


@needs_orthanc
def test_persistent_503_on_post_gives_up_naming_the_instance(case, proxied):
    server, proxy = proxied
    for _ in range(3):  # every look-up passes, every POST fails
        proxy.cut_after(PASS)
        proxy.http_error(503)
    client = make_client(f"{proxy.url}/dicom-web", auth="none", retries=2, backoff_s=0.05)
    with pytest.raises(TransientError) as caught:
        publish_files([case.sr], client, series_key=case.key, retries=2, backoff_s=0.05)
    message = str(caught.value)
    assert case.sr_ds.SOPInstanceUID in message and case.key in message
    assert f"{proxy.url}/dicom-web" in message and "after 3 tries" in message
    assert proxy.stats.http_errors == 3
    assert copies(server, case.sr_ds.SOPInstanceUID) == 0


@needs_orthanc
def test_persistent_503_everywhere_is_transient(case, proxied):
    _server, proxy = proxied
    proxy.http_error(503, connections=1000)
    client = make_client(f"{proxy.url}/dicom-web", auth="none", retries=2, backoff_s=0.05)
    with pytest.raises(TransientError, match=case.seg_ds.SOPInstanceUID):
        publish_files([case.seg], client, series_key=case.key, retries=2, backoff_s=0.05)
    assert proxy.stats.http_errors == 3  # the session's look-up and its two retries


# --- refusals -------------------------------------------------------------------------------


@needs_orthanc
def test_wrong_dicomweb_root_is_rejected_with_the_servers_reason(case, orthanc):
    client = make_client(f"{orthanc.rest}/dicomweb", auth="none")  # typo: Orthanc's is dicom-web
    with pytest.raises(SeriesError) as caught:
        publish_files([case.sr], client, series_key=case.key)
    error = caught.value
    assert error.reason == "publish-rejected" and error.series == case.key
    assert error.path == str(case.sr)
    assert "HTTP 404" in str(error) and "Unknown resource" in str(error)
    assert case.sr_ds.SOPInstanceUID in str(error)


@needs_orthanc
def test_file_the_server_cannot_parse_is_rejected(case, orthanc, tmp_path):
    cut = tmp_path / "cut.dcm"  # header intact, pixel data cut short
    data = case.seg.read_bytes()
    cut.write_bytes(data[: len(data) * 8 // 10])
    client = make_client(orthanc.url, auth="none")
    with pytest.raises(SeriesError, match="HTTP 400.*no reason given") as caught:
        publish_files([cut], client, series_key=case.key)
    assert caught.value.reason == "publish-rejected" and caught.value.path == str(cut)
    assert n_instances(orthanc) == 0


@needs_orthanc
def test_instance_the_server_drops_after_a_200_is_reported(case, tmp_path):
    # Orthanc 1.10 answers 200 and lists the instance as stored when a Lua filter drops it.
    script = tmp_path / "no-sr.lua"
    script.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n"
                      "  return dicom.Modality ~= 'SR'\nend\n")
    with start_orthanc(tmp_path / "orthanc", extra_config={"LuaScripts": [str(script)]}) as server:
        client = make_client(server.url, auth="none")
        with pytest.raises(SeriesError, match="HTTP 200 and listed it as stored") as caught:
            publish_files([case.seg, case.sr], client, series_key=case.key)
        assert caught.value.reason == "publish-not-stored"
        assert case.sr_ds.SOPInstanceUID in str(caught.value)
        assert copies(server, case.seg_ds.SOPInstanceUID) == 1


@needs_orthanc
def test_failure_reason_is_read_from_orthancs_json_and_xml_answers(case, orthanc):
    # STOW-RS to another study's URL: Orthanc answers 409 with a Failed SOP Sequence.
    inst = Instance(case.sr, case.sr_ds.SOPInstanceUID, case.sr_ds.SeriesInstanceUID,
                     case.sr_ds.StudyInstanceUID, case.sr_ds.SOPClassUID)
    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + case.sr.read_bytes()
            + b"\r\n--b--\r\n")
    for accept in ("application/dicom+json", "application/dicom+xml"):
        answer = requests.post(f"{orthanc.url}/studies/1.2.3.4", data=body, timeout=10, headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            "Accept": accept})
        assert answer.status_code == 409
        parsed = StowAnswer.parse(answer)
        assert parsed.failed == {inst.sop_instance_uid: 0x0110}, accept
        assert parsed.describe(inst) == ": failure reason 0x0110 (processing failure)"


@needs_orthanc
def test_wrong_credentials_are_unauthorized(case, tmp_path, monkeypatch):
    with start_orthanc(tmp_path / "orthanc", users={"alice": "s3cret"}) as server:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        monkeypatch.setenv(USER_ENV, "alice")
        monkeypatch.setenv(PASSWORD_ENV, "wrong")
        with pytest.raises(SeriesError) as caught:
            publish_series(case.seg, case.sr, url=server.url, series_key=case.key)
        assert caught.value.reason == "unauthorized" and "HTTP 401" in str(caught.value)
        assert USER_ENV in str(caught.value)

        monkeypatch.setenv(PASSWORD_ENV, "s3cret")
        result = publish_series(case.seg, case.sr, url=server.url, series_key=case.key)
        assert [p.status for p in result.instances] == ["stored", "stored"]
        assert "s3cret" not in result.viewer_url and "alice" not in result.viewer_url
        assert result.viewer_url.startswith(f"{server.rest}/app/explorer.html#study?uuid=")


def test_unreadable_file_is_a_series_error(tmp_path, case):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all")
    client = make_client("http://127.0.0.1:9/dicom-web", auth="none")  # never reached
    with pytest.raises(SeriesError) as caught:
        publish_files([case.seg, junk], client, series_key="K")
    assert caught.value.reason == "publish-unreadable" and caught.value.path == str(junk)
    with pytest.raises(SeriesError, match="one instance"):
        publish_files([case.sr, case.sr], client, series_key="K")


# --- viewer URLs ----------------------------------------------------------------------------


def test_viewer_url_for_idc_stores_follows_idc_index():
    proxy = ("https://proxy.imaging.datacommons.cancer.gov/current/"
             "viewer-only-no-downloads-see-tinyurl-dot-com-slash-3j3d9jyp/dicomWeb")
    google = ("https://healthcare.googleapis.com/v1/projects/nci-idc-data/locations/us-central1/"
              "datasets/idc/dicomStores/idc-store-v21/dicomWeb")
    for store in (proxy, google):
        assert viewer_url(store, "1.2.3", ["1.2.3.4", "1.2.3.5"]) == (
            f"{IDC_VIEWER}?StudyInstanceUIDs=1.2.3&initialSeriesInstanceUID=1.2.3.4")
        assert viewer_url(store, "1.2.3", []) == f"{IDC_VIEWER}?StudyInstanceUIDs=1.2.3"
    assert IDC_VIEWER == "https://viewer.imaging.datacommons.cancer.gov/v3/viewer/"
    other_project = google.replace("nci-idc-data", "my-lab")
    assert viewer_url(other_project, "1.2.3", ["1.2.3.4"]) == ""


def test_viewer_url_for_orthanc_templates_and_others():
    assert viewer_url("http://alice:pw@pacs:8042/dicom-web", "1.2", ["1.3"],
                      orthanc_study_id="ab-cd") == (
        "http://pacs:8042/app/explorer.html#study?uuid=ab-cd")
    assert viewer_url("https://host/orthanc/dicom-web/", "1.2", ["1.3"], orthanc_study_id="x") == (
        "https://host/orthanc/app/explorer.html#study?uuid=x")
    assert viewer_url("http://pacs:8042/dicom-web", "1.2", ["1.3"]) == ""
    template = "https://ohif.example/viewer?StudyInstanceUIDs={study}&SeriesInstanceUIDs={series}"
    assert viewer_url("http://pacs:8042/dicom-web", "1.2", ["1.3", "1.4"], template=template) == (
        "https://ohif.example/viewer?StudyInstanceUIDs=1.2&SeriesInstanceUIDs=1.3,1.4")
    with pytest.raises(ConfigError, match="unknown placeholders"):
        viewer_url("http://pacs/dicom-web", "1.2", ["1.3"], template="https://v/{study}/{patient}")
