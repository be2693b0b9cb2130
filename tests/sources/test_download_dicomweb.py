"""DICOMweb search and retrieval against a real Orthanc (with its DICOMweb plugin) on loopback."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import RLELossless, generate_uid

from support.dicom_faults import write_ct_series
from support.faultproxy import FaultProxy
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc, upload
from spine_idc import dicomweb
from spine_idc.dicomweb import make_client, multipart
from spine_idc.dicomweb.search import N_SERIES_INSTANCES
from spine_idc.sources.dicomweb.series import _series_record, fetch_dicomweb_series, search_series
from spine_idc.errors import ConfigError, SeriesError, TransientError
from spine_idc.phantom import write_phantom


def _orthanc(tmp_dir: Path, **kwargs):
    """A running Orthanc (see ``orthanc.py``); the test skips where it is not installed."""
    if not orthanc_available():
        pytest.skip(UNAVAILABLE_REASON)
    return start_orthanc(tmp_dir, **kwargs)


RECORD_KEYS = {
    "series_key", "series_instance_uid", "study_instance_uid", "patient_id", "modality",
    "series_description", "n_instances", "collection_id", "body_part", "license", "size_mb",
    "location", "index_version", "study_description",
}
AUTH_ENV = (dicomweb.TOKEN_ENV, dicomweb.USER_ENV, dicomweb.PASSWORD_ENV)


class Series:
    """A series written for the tests: its files, UIDs and the bytes of each instance."""

    def __init__(self, files: list[Path]):
        self.files = files
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        self.study_uid, self.series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.by_sop = {}
        for f in files:
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            self.by_sop[uid] = f.read_bytes()


def _digests(folder: Path) -> dict[str, str]:
    return {f.stem: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}


def _expected_digests(series: Series) -> dict[str, str]:
    return {uid: hashlib.sha256(data).hexdigest() for uid, data in series.by_sop.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Series]:
    root = tmp_path_factory.mktemp("dicomweb-data")
    phantom, _labels = write_phantom(0, root / "phantom", size="test")
    out = {"phantom": Series(phantom)}
    for i in range(3):
        out[f"small{i}"] = Series(write_ct_series(root / f"small{i}", n_slices=3, seed=i))
    out["mr"] = Series(write_ct_series(root / "mr", n_slices=2, modality="MR"))
    # Compressed as stored: retrieval with transfer-syntax=* must hand back these very bytes.
    rle = write_ct_series(root / "rle", n_slices=4)
    for f in rle:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    out["rle"] = Series(rle)
    with warnings.catch_warnings():  # pydicom warns about the invalid UIDs we mean to write
        warnings.simplefilter("ignore", UserWarning)
        bad_series = write_ct_series(root / "bad_series", n_slices=2, series_uid="1.2.03.4")
        out["bad_series_uid"] = Series(bad_series)
        bad_sop = write_ct_series(root / "bad_sop", n_slices=2)
        ds = pydicom.dcmread(bad_sop[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.04"
        ds.save_as(bad_sop[0])
        out["bad_sop_uid"] = Series(bad_sop)
    return out


VALID_CT = ("phantom", "small0", "small1", "small2", "rle", "bad_sop_uid")


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    with _orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        for series in data.values():
            upload(orthanc, series.files)
        yield orthanc


@pytest.fixture
def client(server, monkeypatch):
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    return make_client(server.url, auth="env", timeout_s=10, retries=2, backoff_s=0.1)


def _fetch(client, series: Series, dest: Path):
    dest.mkdir()
    return fetch_dicomweb_series(client, series.study_uid, series.series_uid, dest,
                                 series_key=series.series_uid)


# -- search -----------------------------------------------------------------------------------


def test_search_finds_the_ct_series_with_their_counts(client, data, server, caplog):
    with caplog.at_level(logging.WARNING, logger="spine_idc.sources.dicomweb.series"):
        records = search_series(client)
    assert [r["series_key"] for r in records] == sorted(data[k].series_uid for k in VALID_CT)
    assert "1.2.03.4" in caplog.text  # the series with an invalid UID is dropped, with a warning
    by_uid = {r["series_instance_uid"]: r for r in records}
    for name in VALID_CT:
        record = by_uid[data[name].series_uid]
        assert set(record) == RECORD_KEYS
        assert record["n_instances"] == len(data[name].files)
        assert record["study_instance_uid"] == data[name].study_uid
        assert record["modality"] == "CT"
        study, uid = data[name].study_uid, data[name].series_uid
        assert record["location"] == f"{server.url}/studies/{study}/series/{uid}"
        assert (record["collection_id"], record["license"], record["index_version"]) == ("", "", "")
        assert record["size_mb"] == 0.0
    phantom = by_uid[data["phantom"].series_uid]
    ds = pydicom.dcmread(data["phantom"].files[0], stop_before_pixels=True)
    assert phantom["patient_id"] == ds.PatientID
    assert phantom["series_description"] == ds.SeriesDescription
    assert phantom["body_part"] == ds.get("BodyPartExamined", "")
    assert by_uid[data["small0"].series_uid]["body_part"] == ""


def test_search_by_another_modality(client, data):
    assert [r["series_key"] for r in search_series(client, modality="MR")] == [data["mr"].series_uid]


def test_search_pages_through_results(client, monkeypatch):
    asked = []
    search = client.search_for_series

    def spy(**kwargs):
        asked.append((kwargs["limit"], kwargs["offset"]))
        return search(**kwargs)

    whole = search_series(client)
    monkeypatch.setattr(client, "search_for_series", spy)
    assert search_series(client, page_size=2) == whole
    # 7 CT series (one with a bad UID): pages at 0, 2, 4, 6, then an empty one ends the search.
    assert asked == [(2, 0), (2, 2), (2, 4), (2, 6), (2, 7)]


def test_instances_are_counted_when_the_server_omits_the_count(client, data):
    (item,) = client.search_for_series(search_filters={"SeriesInstanceUID": data["phantom"].series_uid})
    item.pop(N_SERIES_INSTANCES, None)
    record = _series_record(client, item, page_size=50)  # three pages of instances
    assert record["n_instances"] == len(data["phantom"].files)


# -- retrieval --------------------------------------------------------------------------------


def test_fetch_writes_each_instance_as_uploaded(client, data, tmp_path):
    series = data["phantom"]
    stats = _fetch(client, series, tmp_path / "dicom")
    assert _digests(tmp_path / "dicom") == _expected_digests(series)
    assert stats.files == len(series.files)
    assert stats.bytes == sum(len(b) for b in series.by_sop.values())
    assert stats.seconds > 0
    some = next(iter(series.by_sop))
    got = pydicom.dcmread(tmp_path / "dicom" / f"{some}.dcm")
    sent = pydicom.dcmread(BytesIO(series.by_sop[some]))
    assert got.SOPInstanceUID == some
    assert (got.pixel_array == sent.pixel_array).all()


def test_fetch_keeps_the_stored_transfer_syntax(client, data, tmp_path):
    _fetch(client, data["rle"], tmp_path / "dicom")
    assert _digests(tmp_path / "dicom") == _expected_digests(data["rle"])
    for f in (tmp_path / "dicom").iterdir():
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless


def test_unknown_series_is_not_found(client, data, tmp_path):
    for study in (data["phantom"].study_uid, generate_uid()):
        dest = tmp_path / study
        dest.mkdir()
        with pytest.raises(SeriesError) as info:
            fetch_dicomweb_series(client, study, generate_uid(), dest, series_key="k1")
        assert info.value.reason == "not-found" and info.value.series == "k1"
        assert list(dest.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, reading the bad UID
def test_invalid_uids_never_become_file_names(client, data, tmp_path):
    with pytest.raises(SeriesError) as info:
        _fetch(client, data["bad_sop_uid"], tmp_path / "dicom")
    assert info.value.reason == "bad-uid" and "1.2.3.04" in str(info.value)
    assert not (tmp_path / "dicom" / "1.2.3.04.dcm").exists()
    dest = tmp_path / "other"
    dest.mkdir()
    with pytest.raises(SeriesError) as info:
        fetch_dicomweb_series(client, data["phantom"].study_uid, "../../etc", dest, series_key="k2")
    assert info.value.reason == "bad-uid"


# -- authentication ---------------------------------------------------------------------------

USER, PASSWORD, TOKEN = "alice", "s3cret-pw-4242", "tok-1234-abcd"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, data):
    with _orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={USER: PASSWORD}) as orthanc:
        upload(orthanc, data["small0"].files)
        yield orthanc


@pytest.fixture
def no_auth_env(monkeypatch):
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_basic_auth_from_the_environment(secured, data, no_auth_env, tmp_path, caplog):
    no_auth_env.setenv(dicomweb.USER_ENV, USER)
    no_auth_env.setenv(dicomweb.PASSWORD_ENV, PASSWORD)
    with caplog.at_level(logging.DEBUG):
        client = make_client(secured.url)
        assert [r["series_key"] for r in search_series(client)] == [data["small0"].series_uid]
        _fetch(client, data["small0"], tmp_path / "dicom")
    assert _digests(tmp_path / "dicom") == _expected_digests(data["small0"])
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    "env",
    [{}, {"USER": USER, "PASSWORD": "wrong"}, {"TOKEN": TOKEN, "USER": USER, "PASSWORD": PASSWORD}],
    ids=["anonymous", "wrong-password", "token-first"],
)
def test_refused_credentials_are_unauthorized(secured, data, no_auth_env, tmp_path, caplog, env):
    for name, value in env.items():
        no_auth_env.setenv(getattr(dicomweb, f"{name}_ENV"), value)
    with caplog.at_level(logging.DEBUG):
        client = make_client(secured.url, retries=0)
        with pytest.raises(SeriesError) as info:
            _fetch(client, data["small0"], tmp_path / "dicom")
        assert info.value.reason == "unauthorized"
        assert dicomweb.USER_ENV in str(info.value) and dicomweb.TOKEN_ENV in str(info.value)
        with pytest.raises(ConfigError, match="credentials refused"):
            search_series(client)
    for secret in (PASSWORD, TOKEN, "wrong"):
        assert secret not in caplog.text and secret not in str(info.value)


def test_auth_none_ignores_the_environment(secured, no_auth_env):
    no_auth_env.setenv(dicomweb.USER_ENV, USER)
    no_auth_env.setenv(dicomweb.PASSWORD_ENV, PASSWORD)
    with pytest.raises(ConfigError, match="credentials refused"):
        search_series(make_client(secured.url, auth="none"))


def test_half_a_login_is_a_config_error(no_auth_env):
    no_auth_env.setenv(dicomweb.USER_ENV, USER)
    with pytest.raises(ConfigError, match=dicomweb.PASSWORD_ENV):
        make_client("http://127.0.0.1:9/dicom-web")
    with pytest.raises(ConfigError, match="unknown DICOMweb authentication"):
        make_client("http://127.0.0.1:9/dicom-web", auth="kerberos")


# -- a server that is down, silent, or restarted ---------------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_is_transient_within_seconds(data, tmp_path, no_auth_env):
    url = f"http://127.0.0.1:{_unused_port()}/dicom-web"
    client = make_client(url, retries=3, backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        _fetch(client, data["small0"], tmp_path / "dicom")
    assert time.monotonic() - started < 5
    assert data["small0"].series_uid in str(info.value) and url in str(info.value)
    assert "refused" in str(info.value).lower()
    with pytest.raises(TransientError, match="QIDO-RS search"):
        search_series(client)


def test_a_restarted_server_keeps_serving(tmp_path, data, no_auth_env):
    with _orthanc(tmp_path / "orthanc") as orthanc:
        upload(orthanc, data["small1"].files)
        client = make_client(orthanc.url, retries=3, backoff_s=0.1)
        _fetch(client, data["small1"], tmp_path / "before")
        orthanc.restart()
        _fetch(client, data["small1"], tmp_path / "after")
    expected = _expected_digests(data["small1"])
    assert _digests(tmp_path / "before") == _digests(tmp_path / "after") == expected


# -- faults between client and server (the fault proxy) ----------------------------------------

CUT_BYTES = 1_500_000  # well into the phantom series (about 10 MB), after the response head


def _eventually(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def proxy(server):
    with FaultProxy("127.0.0.1", server.port) as p:
        yield p


@pytest.fixture
def proxied(proxy, no_auth_env):
    """A client that reaches the server through the proxy; three retries, short waits."""
    return make_client(f"{proxy.url}/dicom-web", retries=3, timeout_s=5, backoff_s=0.05)


def test_a_series_cut_mid_stream_is_asked_for_again(proxy, proxied, data, tmp_path):
    proxy.cut_after(CUT_BYTES, connections=2)
    stats = _fetch(proxied, data["phantom"], tmp_path / "dicom")
    assert proxy.stats.cut == 2
    assert _digests(tmp_path / "dicom") == _expected_digests(data["phantom"])
    assert stats.files == len(data["phantom"].files)


def test_a_series_cut_every_time_is_transient(proxy, proxied, data, tmp_path):
    proxy.cut_after(CUT_BYTES, connections=100)
    with pytest.raises(TransientError) as info:
        _fetch(proxied, data["phantom"], tmp_path / "dicom")
    assert proxy.stats.cut == 3  # the first response and the two asked for again
    assert data["phantom"].series_uid in str(info.value) and proxy.url in str(info.value)
    assert "broke after" in str(info.value)


def test_connections_reset_before_an_answer_are_retried_by_the_session(proxy, proxied, data, tmp_path):
    proxy.cut_after(0, connections=3)
    assert [r["series_key"] for r in search_series(proxied, modality="MR")] == [data["mr"].series_uid]
    proxy.cut_after(0, connections=3)
    # A new client: the first one keeps its connection alive, and a fault strikes new ones.
    fresh = make_client(f"{proxy.url}/dicom-web", retries=3, timeout_s=5, backoff_s=0.05)
    _fetch(fresh, data["small0"], tmp_path / "dicom")
    assert proxy.stats.cut == 6
    assert _digests(tmp_path / "dicom") == _expected_digests(data["small0"])


def test_more_resets_than_retries_is_transient(proxy, proxied, data, tmp_path):
    proxy.cut_after(0, connections=100)
    with pytest.raises(TransientError, match="WADO-RS retrieval"):
        _fetch(proxied, data["small0"], tmp_path / "dicom")
    assert proxy.stats.cut == 4  # the request and the session's three retries
    with pytest.raises(TransientError, match="QIDO-RS search"):
        search_series(proxied)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_then_transient(proxy, proxied, data, tmp_path, status):
    proxy.http_error(status, connections=3)
    _fetch(proxied, data["small0"], tmp_path / "first")
    assert _digests(tmp_path / "first") == _expected_digests(data["small0"])
    proxy.http_error(status, connections=100)
    with pytest.raises(TransientError, match=f"HTTP {status}"):
        _fetch(proxied, data["small0"], tmp_path / "second")
    # The proxy counts an error after sending it, so the client may see it first.
    assert _eventually(lambda: proxy.stats.http_errors == 3 + 4)


def test_a_stalled_server_times_out_as_transient(proxy, data, tmp_path, no_auth_env):
    proxy.stall(connections=100)
    client = make_client(f"{proxy.url}/dicom-web", timeout_s=0.5, retries=1, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(TransientError, match="(?i)timed out"):
        _fetch(client, data["small0"], tmp_path / "dicom")
    assert time.monotonic() - started < 5


def test_a_server_that_goes_down_and_comes_back(proxy, proxied, data, tmp_path):
    proxy.down()
    started = time.monotonic()
    with pytest.raises(TransientError, match="(?i)refused"):
        _fetch(proxied, data["small0"], tmp_path / "down")
    assert time.monotonic() - started < 5
    proxy.up()
    _fetch(proxied, data["small0"], tmp_path / "up")
    assert _digests(tmp_path / "up") == _expected_digests(data["small0"])


# -- the multipart reader on its own ------------------------------------------------------------


def _response(body: bytes, content_type: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = content_type
    response.raw = BytesIO(body)
    return response


def _multipart(
    parts: list[bytes], *, lengths: bool, preamble: bytes = b"", closed: bool = True
) -> bytes:
    out = preamble
    for part in parts:
        headers = b"Content-Type: application/dicom\r\n"
        if lengths:
            headers += b"Content-Length: %d\r\n" % len(part)
        out += b"--BND\r\n" + headers + b"\r\n" + part + b"\r\n"
    return out + (b"--BND--\r\n" if closed else b"")


PARTS = [b"first\r\n--BN not a boundary", b"", b"x" * 50, b"\r\n--BND" + b"y" * 3]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("lengths", [True, False])
def test_multipart_parts_across_chunk_borders(monkeypatch, chunk, lengths):
    monkeypatch.setattr(multipart, "CHUNK_BYTES", chunk)
    parts = PARTS if lengths else PARTS[:3]  # without lengths a part cannot hold the delimiter
    body = _multipart(parts, lengths=lengths, preamble=b"preamble\r\n")
    ctype = 'multipart/related; type="application/dicom"; boundary=BND'
    assert list(multipart.read_parts(_response(body, ctype))) == parts


@pytest.mark.parametrize("cut", [-9, -30, 20, 5])
def test_a_body_cut_anywhere_is_truncated(monkeypatch, cut):
    monkeypatch.setattr(multipart, "CHUNK_BYTES", 16)
    body = _multipart(PARTS, lengths=True)
    with pytest.raises(multipart.Truncated):
        list(multipart.read_parts(_response(body[:cut], "multipart/related; boundary=BND")))
    body = _multipart(PARTS[:3], lengths=False, closed=False)  # every part whole, no closing
    with pytest.raises(multipart.Truncated):
        list(multipart.read_parts(_response(body, "multipart/related; boundary=BND")))


def test_a_body_that_is_not_multipart_is_refused():
    with pytest.raises(multipart.BadMultipart):
        list(multipart.read_parts(_response(b"{}", "application/json")))


# -- Google application default credentials (no network: nothing is refreshed) -----------------


def test_google_auth_without_credentials_is_a_config_error(monkeypatch, tmp_path):
    pytest.importorskip("google.auth")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="application default credentials"):
        make_client("https://healthcare.example/dicomWeb", auth="google")


def test_google_auth_uses_an_authorized_session(monkeypatch, tmp_path):
    pytest.importorskip("google.auth")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization
    from google.auth.transport.requests import AuthorizedSession

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    account = {
        "type": "service_account", "project_id": "p", "private_key_id": "1",
        "private_key": key.decode(), "client_email": "sa@p.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    client = make_client("https://healthcare.example/dicomWeb", auth="google")
    assert isinstance(client._session, AuthorizedSession)
    assert client._session.credentials.scopes == list(dicomweb.GOOGLE_SCOPES)
