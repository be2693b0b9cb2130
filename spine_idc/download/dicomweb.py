"""DICOMweb source: QIDO-RS search for CT series, WADO-RS retrieval of a series into a folder.

Works with any DICOMweb store (Orthanc, dcm4chee, Google Cloud Healthcare).  Credentials come
from the environment, never from the configuration file (see :func:`make_client`).

Retrieval does not go through ``DICOMwebClient.iter_series``: its multipart decoder ignores the
closing boundary and the parts' ``Content-Length``, and Orthanc ends a WADO-RS series response
by closing the connection (no ``Content-Length``, no chunked encoding), so a server dying
mid-series would look like a complete, shorter series whose last file is cut.
:func:`fetch_dicomweb_series` therefore sends the WADO-RS request through the client's session
and reads the multipart body itself, streaming, one instance in memory at a time, and treats a
body without its closing boundary as a transient fault.

Retries come in two layers that never multiply: the session's (urllib3) for faults before a
response begins (connection refused or reset, 429/5xx), and :func:`fetch_dicomweb_series`'s
own for a response that breaks once it has begun, which asks for the series again and keeps
the instances already written.  dicomweb-client's own retry loop is switched off.

A socket timeout bounds each read, not a transfer: a server that sends a byte a second never
trips it.  One download attempt is therefore bounded as a whole by an :class:`AttemptLimit`
(``download.timeout_s``): when it passes, every connection the attempt opened is shut down
(whatever it was waiting for: a connection, headers, the body), no further retry starts, and
the attempt ends with a :class:`~spine_idc.errors.TransientError` that says it timed out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import dicomweb_client
import pydicom
import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from ..errors import ConfigError, SeriesError, TransientError, machine_fault
from ..scan import is_valid_uid
from .s3 import DownloadStats  # one record of what a download moved, whichever the source

log = logging.getLogger(__name__)

TOKEN_ENV = "SPINE_IDC_DICOMWEB_TOKEN"
USER_ENV = "SPINE_IDC_DICOMWEB_USER"
PASSWORD_ENV = "SPINE_IDC_DICOMWEB_PASSWORD"
AUTH_HINT = f"set {TOKEN_ENV} (bearer token) or {USER_ENV} and {PASSWORD_ENV} (basic auth)"
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-healthcare",)
AUTH_MODES = ("none", "env", "google")

#: Statuses worth another try: the server is overloaded, restarting or behind a failing proxy.
RETRY_STATUSES = (429, 500, 502, 503, 504)
#: QIDO-RS results asked for per request.  Servers may return fewer than asked (cloud stores cap
#: a page), so pages are requested until one comes back empty.  (Orthanc's own
#: ``LimitFindResults`` is different: it drops results past the cap silently, at every offset.)
PAGE_SIZE = 1000
CHUNK_BYTES = 1 << 20
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# QIDO-RS attributes, as the tags DICOM JSON is keyed by.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, MODALITY, SERIES_DESCRIPTION = "00100020", "00080060", "0008103E"
BODY_PART, N_SERIES_INSTANCES = "00180015", "00201209"
STUDY_DESCRIPTION = "00081030"
SERIES_FIELDS = (N_SERIES_INSTANCES, BODY_PART, SERIES_DESCRIPTION, PATIENT_ID, STUDY_DESCRIPTION)


# --------------------------------------------------------------------------------------------
# One attempt's time limit


class AttemptLimit:
    """A wall-clock limit on one attempt, enforced on every connection the attempt opens.

    Use as a context manager around the attempt, and give it to :func:`make_client` and
    :func:`fetch_dicomweb_series`.  When ``timeout_s`` has passed, a timer thread shuts down the
    sockets of the attempt's connections (a ``recv`` blocked on a trickling server returns at
    once), the session starts no further retry and waits no longer than the time left.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.deadline = time.monotonic() + self.timeout_s
        self.expired = False
        self._connections: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, self.timeout_s), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> AttemptLimit:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._connections.clear()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def track(self, conn) -> None:
        """Shut ``conn`` down when the limit passes (at once, if it has)."""
        with self._lock:
            if conn not in self._connections:
                self._connections.append(conn)
        if self.expired:
            raise Urllib3Timeout(f"the attempt's {self.timeout_s:g} s have passed")

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _limited_pools(limit: AttemptLimit) -> dict[str, type]:
    """Connection pools whose connections ``limit`` can shut down."""

    class HTTPPool(HTTPConnectionPool):
        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            limit.track(conn)
            return conn

    class HTTPSPool(HTTPSConnectionPool):
        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            limit.track(conn)
            return conn

    return {"http": HTTPPool, "https": HTTPSPool}


class _LimitedRetry(Retry):
    """The session's retries, none begun and no wait longer than the attempt has left."""

    limit: AttemptLimit | None = None

    def new(self, **kw):
        retry = super().new(**kw)
        retry.limit = self.limit
        return retry

    def is_exhausted(self) -> bool:
        return (self.limit is not None and self.limit.expired) or super().is_exhausted()

    def sleep(self, response=None) -> None:
        if self.limit is None:
            return super().sleep(response)
        wait = self.get_retry_after(response) if response is not None else None
        wait = self.get_backoff_time() if wait is None else wait
        time.sleep(min(wait, self.limit.remaining()))


class _LimitedAdapter(HTTPAdapter):
    """An adapter whose connections, timeouts and retries answer to an :class:`AttemptLimit`."""

    def __init__(self, limit: AttemptLimit, **kwargs):
        self._limit = limit
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _limited_pools(self._limit)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _limited_pools(self._limit)
        return manager

    def send(self, request, timeout=None, **kwargs):
        left = max(0.001, self._limit.remaining())
        if isinstance(timeout, tuple):
            timeout = tuple(left if t is None else min(t, left) for t in timeout)
        else:
            timeout = left if timeout is None else min(timeout, left)
        return super().send(request, timeout=timeout, **kwargs)


# --------------------------------------------------------------------------------------------
# Client


def make_client(
    url: str,
    *,
    auth: str = "env",
    timeout_s: float = 60,
    retries: int = 3,
    backoff_s: float = 0.5,
    limit: AttemptLimit | None = None,
) -> dicomweb_client.DICOMwebClient:
    """A DICOMweb client for the service rooted at ``url``, with retries and a timeout.

    Parameters
    ----------
    url:
        The DICOMweb root, e.g. ``http://localhost:8042/dicom-web`` or
        ``https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb``.
    auth:
        ``"none"``: anonymous.  ``"env"``: a bearer token from ``SPINE_IDC_DICOMWEB_TOKEN`` if set,
        else HTTP basic auth from ``SPINE_IDC_DICOMWEB_USER`` and ``SPINE_IDC_DICOMWEB_PASSWORD``
        if set, else anonymous.  ``"google"``: application default credentials (Google Cloud
        Healthcare DICOM stores; needs ``google-auth``).
    timeout_s:
        Seconds to wait for a connection, and for each read from it.
    retries:
        How many times a request is repeated after a connection error, a read error before the
        response headers, or a 429/5xx answer; waits grow from 0 by ``backoff_s * 2**n``.
        A response that breaks after its headers is not repeated here:
        :func:`fetch_dicomweb_series` asks for the series again.
    limit:
        The attempt's :class:`AttemptLimit`, if any: it bounds the client's requests, their
        retries and their reads as a whole (``timeout_s`` alone bounds each read).

    Raises
    ------
    ConfigError
        ``auth`` is unknown, only one of user and password is set, or Google credentials are
        missing.
    """
    session = _session_for(auth)
    retry = (Retry if limit is None else _LimitedRetry)(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=retries,
        backoff_factor=backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,  # hand back the last 5xx so that its status can be reported
    )
    if limit is None:
        adapter = HTTPAdapter(max_retries=retry)
    else:
        retry.limit = limit
        adapter = _LimitedAdapter(limit, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    client = dicomweb_client.DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout_s)
    # The client has its own retry loop (503/504/429, five attempts, waits from 2 s up); with the
    # adapter's retries underneath they would multiply, so the adapter alone retries.
    client.set_http_retry_params(retry=False)
    return client


def _session_for(auth: str) -> requests.Session:
    if auth == "none":
        return requests.Session()
    if auth == "google":
        return _google_session()
    if auth != "env":
        raise ConfigError(f"unknown DICOMweb authentication {auth!r}; expected one of {AUTH_MODES}")
    session = requests.Session()
    token = os.environ.get(TOKEN_ENV)
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
        log.info("DICOMweb: bearer token from %s", TOKEN_ENV)
    elif user and password:
        session.auth = (user, password)
        log.info("DICOMweb: basic auth from %s and %s", USER_ENV, PASSWORD_ENV)
    elif user or password:
        missing = PASSWORD_ENV if user else USER_ENV
        raise ConfigError(f"{missing} is not set",
                          hint=f"basic auth needs both {USER_ENV} and {PASSWORD_ENV}")
    else:
        log.info("DICOMweb: anonymous (none of %s, %s, %s is set)", TOKEN_ENV, USER_ENV, PASSWORD_ENV)
    return session


def _google_session() -> requests.Session:
    try:
        import google.auth
        import google.auth.exceptions
        from google.auth.transport.requests import AuthorizedSession
    except ImportError as e:
        raise ConfigError("auth 'google' needs the google-auth package",
                          hint="pip install google-auth") from e
    try:
        credentials, _project = google.auth.default(scopes=list(GOOGLE_SCOPES))
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ConfigError(
            "no Google application default credentials",
            hint="run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
        ) from e
    log.info("DICOMweb: Google application default credentials")
    return AuthorizedSession(credentials)


def server_name(client: dicomweb_client.DICOMwebClient) -> str:
    """``scheme://host[:port]/path`` of the client's service, without any user or password."""
    parts = urlsplit(client.base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


# --------------------------------------------------------------------------------------------
# QIDO-RS search


def search_series(
    client: dicomweb_client.DICOMwebClient, *, modality: str = "CT", page_size: int = PAGE_SIZE
) -> list[dict]:
    """Every series of ``modality`` on the server, as manifest records sorted by series UID.

    Each record has the keys ``series_key``, ``series_instance_uid``, ``study_instance_uid``,
    ``patient_id``, ``modality``, ``series_description``, ``n_instances``, ``collection_id``,
    ``body_part``, ``license``, ``size_mb``, ``location`` and ``index_version``.  A malformed
    record (a SeriesInstanceUID or StudyInstanceUID that is missing or not a valid UID, an
    attribute that is not DICOM JSON) is left out with a one-line warning naming it; the other
    series go on.

    Raises
    ------
    TransientError
        The server could not be reached or kept failing.
    ConfigError
        The server refused the credentials (401/403) or has no DICOMweb service at this URL.
    """
    server = server_name(client)
    items = _paged(
        lambda limit, offset: client.search_for_series(
            search_filters={"Modality": modality}, fields=list(SERIES_FIELDS), limit=limit, offset=offset
        ),
        page_size,
        key=lambda item: _text(item, SERIES_UID),
        what=f"{modality} series on {server}",
    )
    records = {}
    for item in items:
        uid, study = _text(item, SERIES_UID), _text(item, STUDY_UID)
        if not is_valid_uid(uid):
            log.warning("%s: skipping series with invalid SeriesInstanceUID %r (study %r)",
                        server, _shown(uid), _shown(study))
            continue
        if not is_valid_uid(study):
            log.warning("%s: skipping series %s: invalid StudyInstanceUID %r", server, uid, _shown(study))
            continue
        try:
            records[uid] = _series_record(client, item, page_size=page_size)
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # what the server sent
            log.warning("%s: skipping series %s (study %s): malformed QIDO-RS record: %s",
                        server, uid, study, _shown(f"{type(e).__name__}: {e}"))
    log.info("%s: %d %s series", server, len(records), modality)
    return [records[uid] for uid in sorted(records)]


def _series_record(
    client: dicomweb_client.DICOMwebClient, item: dict, *, page_size: int = PAGE_SIZE
) -> dict:
    series_uid, study_uid = _text(item, SERIES_UID), _text(item, STUDY_UID)
    n_instances = _number(item, N_SERIES_INSTANCES)
    if n_instances is None:  # optional in QIDO-RS: count the instances instead
        n_instances = len(
            _paged(
                lambda limit, offset: client.search_for_instances(
                    study_instance_uid=study_uid, series_instance_uid=series_uid,
                    fields=[SOP_UID], limit=limit, offset=offset,
                ),
                page_size,
                key=lambda instance: _text(instance, SOP_UID),
                what=f"instances of series {series_uid} on {server_name(client)}",
            )
        )
    return {
        "series_key": series_uid,
        "series_instance_uid": series_uid,
        "study_instance_uid": study_uid,
        "patient_id": _text(item, PATIENT_ID),
        "modality": _text(item, MODALITY),
        "series_description": _text(item, SERIES_DESCRIPTION),
        "n_instances": int(n_instances),
        "collection_id": "",
        "body_part": _text(item, BODY_PART),
        "license": "",
        "size_mb": 0.0,
        "location": f"{server_name(client)}/studies/{study_uid}/series/{series_uid}",
        "index_version": "",
        # not a manifest column, but `query.study_description` filters on it
        "study_description": _text(item, STUDY_DESCRIPTION),
    }


def _paged(search: Callable[[int, int], list[dict]], page_size: int, *, key, what: str) -> list[dict]:
    """All results of a QIDO-RS search, asked for a page at a time until a page comes back empty.

    A short page does not mean the end: servers cap ``limit`` below what was asked.  A server
    that ignores ``offset`` would repeat its first page forever, so a page with nothing new ends
    the search too.
    """
    results: dict[str, dict] = {}
    offset = 0
    while True:
        try:
            page = search(page_size, offset)
        except requests.HTTPError as e:
            raise _search_http_error(e, what) from e
        except requests.RequestException as e:
            raise TransientError(f"QIDO-RS search for {what} failed: {_describe(e)}") from e
        new = {key(item): item for item in page if key(item) not in results}
        if not new:
            if page:
                log.warning("QIDO-RS search for %s: offset %d returned nothing new; stopping",
                            what, offset)
            return list(results.values())
        results.update(new)
        offset += len(page)


def _search_http_error(e: requests.HTTPError, what: str) -> Exception:
    status = e.response.status_code if e.response is not None else 0
    message = f"QIDO-RS search for {what}: HTTP {status}"
    if status in (401, 403):
        return ConfigError(f"{message} (credentials refused)", hint=AUTH_HINT)
    if status == 404:
        return ConfigError(f"{message} (no DICOMweb service at this URL?)")
    if status in RETRY_STATUSES or status >= 500:
        return TransientError(message)
    return ConfigError(message)


def _shown(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters: it came from a server."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _value(item: dict, tag: str):
    """The first value of ``tag`` in a DICOM JSON record; ``None`` if absent or malformed."""
    attribute = item.get(tag) if isinstance(item, dict) else None
    values = (attribute.get("Value") if isinstance(attribute, dict) else None) or [None]
    value = values[0] if isinstance(values, list) else None
    if isinstance(value, dict):  # a person name: {"Alphabetic": "..."}
        value = value.get("Alphabetic", "")
    return value


def _text(item: dict, tag: str) -> str:
    value = _value(item, tag)
    return "" if value is None else str(value).strip()


def _number(item: dict, tag: str) -> int | None:
    value = _value(item, tag)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# WADO-RS retrieval


def fetch_dicomweb_series(
    client: dicomweb_client.DICOMwebClient,
    study_uid: str,
    series_uid: str,
    dest: Path,
    *,
    series_key: str,
    stream_retries: int = 2,
    limit: AttemptLimit | None = None,
) -> DownloadStats:
    """Retrieve every instance of a series into the existing empty folder ``dest``.

    Each instance is written as received (its transfer syntax kept) to
    ``dest/<SOPInstanceUID>.dcm``.  Counts are not checked here.

    A response that breaks after it has begun (cut, reset, stalled past the timeout) is asked
    for again up to ``stream_retries`` times; instances already written are kept and skipped.
    Faults before a response begins are the session's to retry (see :func:`make_client`).
    ``limit`` (the one given to :func:`make_client`) bounds all of it.

    Raises
    ------
    TransientError
        Connection errors, timeouts, 5xx after the session's retries, a response broken more
        often than ``stream_retries`` allows, ``limit`` passed ("timed out after N s").
    SeriesError
        ``not-found`` (404), ``unauthorized`` (401/403), ``bad-uid`` (an invalid UID, requested
        or received), ``bad-response`` (not a multipart DICOM answer, or a part that is not
        DICOM), ``duplicate-instance`` (two instances with one SOPInstanceUID), ``http-error``
        (any other 4xx).
    """
    dest = Path(dest)
    server = server_name(client)
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if not is_valid_uid(uid):
            raise SeriesError(series_key, "bad-uid", f"invalid {name} {uid!r}")
    url = f"{_wado_root(client)}/studies/{study_uid}/series/{series_uid}"
    started = time.perf_counter()
    written: dict[str, int] = {}  # SOPInstanceUID -> bytes, across tries
    for attempt in range(stream_retries + 1):
        try:
            _receive_series(client, url, dest, written, series_key=series_key, server=server)
            break
        except Exception as e:  # noqa: BLE001 - an answer cut by the limit can look like anything
            if limit is not None and limit.expired and machine_fault(e) is None:
                raise TransientError(
                    f"series {series_key}: WADO-RS retrieval from {server} timed out after "
                    f"{limit.timeout_s:g} s (download.timeout_s) with {len(written)} instances "
                    f"({sum(written.values())} bytes) received",
                    hint="a server this slow is retried (download.retries), then recorded") from e
            if not isinstance(e, _StreamBroken):
                raise
            cause = e.__cause__ or e
            message = (f"series {series_key}: WADO-RS response from {server} broke after "
                       f"{len(written)} instances: {_describe(cause)}")
            if attempt == stream_retries:
                raise TransientError(message) from cause
            log.warning("%s; asking again (%d of %d)", message, attempt + 1, stream_retries)
    seconds = time.perf_counter() - started
    n_bytes = sum(written.values())
    log.info("series %s: %d instances, %.1f MB from %s in %.1f s",
             series_key, len(written), n_bytes / 1e6, server, seconds)
    return DownloadStats(files=len(written), bytes=n_bytes, seconds=seconds)


class _StreamBroken(Exception):
    """A response that had begun broke off; ``__cause__`` says how."""


def _receive_series(
    client: dicomweb_client.DICOMwebClient, url: str, dest: Path, written: dict[str, int], *,
    series_key: str, server: str,
) -> None:
    """One WADO-RS request: write each instance not in ``written`` yet, and record it there."""
    try:
        # The client's own GET: its session (auth, retries), timeout and headers.
        response = client._http_get(url, headers={"Accept": WADO_ACCEPT}, stream=True)
    except requests.HTTPError as e:
        raise _retrieve_http_error(e, series_key, server) from e
    except requests.RequestException as e:
        raise TransientError(
            f"series {series_key}: WADO-RS retrieval from {server} failed: {_describe(e)}"
        ) from e
    this_response = set()
    try:
        with response:
            for part in _multipart_parts(response):
                uid = _sop_instance_uid(part, series_key)
                path = dest / f"{uid}.dcm"
                if uid in this_response:
                    raise SeriesError(series_key, "duplicate-instance",
                                      f"{server} sent two instances with one SOPInstanceUID",
                                      path=str(path))
                this_response.add(uid)
                if uid in written:
                    continue  # whole from an earlier, broken response
                with path.open("xb") as f:  # never over a file that was there before
                    f.write(part)
                written[uid] = len(part)
    except (requests.RequestException, _Truncated) as e:
        raise _StreamBroken() from e
    except _BadMultipart as e:
        raise SeriesError(series_key, "bad-response", f"WADO-RS answer from {server}: {e}") from e


def _wado_root(client: dicomweb_client.DICOMwebClient) -> str:
    prefix = f"/{client.wado_url_prefix}" if client.wado_url_prefix else ""
    return f"{client.base_url}{prefix}"


def _retrieve_http_error(e: requests.HTTPError, series_key: str, server: str) -> Exception:
    status = e.response.status_code if e.response is not None else 0
    if e.response is not None:
        e.response.close()
    if status == 404:
        return SeriesError(series_key, "not-found", f"{server} has no such series (HTTP 404)")
    if status in (401, 403):
        return SeriesError(series_key, "unauthorized",
                           f"{server} refused the credentials (HTTP {status})", hint=AUTH_HINT)
    if status in RETRY_STATUSES or status >= 500:
        return TransientError(
            f"series {series_key}: WADO-RS retrieval from {server} failed: HTTP {status}")
    return SeriesError(series_key, "http-error",
                       f"WADO-RS retrieval from {server} answered HTTP {status}")


def _sop_instance_uid(part: bytes, series_key: str) -> str:
    try:
        ds = pydicom.dcmread(BytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception as e:  # pydicom raises many kinds on bytes that are not DICOM
        raise _BadMultipart(f"a part of {len(part)} bytes is not a DICOM file: {e}") from e
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not is_valid_uid(uid):
        raise SeriesError(series_key, "bad-uid", f"an instance has an invalid SOPInstanceUID {uid!r}")
    return uid


def _describe(e: BaseException) -> str:
    """The innermost cause of a network error: requests wraps urllib3's reason several deep."""
    reason = e
    while True:
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException) and reason.args:
            inner = reason.args[0]
        if not isinstance(inner, BaseException):
            break
        reason = inner
    return f"{type(reason).__name__}: {reason}"


# --------------------------------------------------------------------------------------------
# multipart/related, read as it streams


class _Truncated(Exception):
    """The body ended before the closing boundary, or inside a part."""


class _BadMultipart(Exception):
    """The body is not a multipart/related DICOM answer."""


def _multipart_parts(response: requests.Response) -> Iterator[bytes]:
    """The parts of a ``multipart/related`` body, one at a time, checking that none is cut.

    Each part's ``Content-Length`` header, where the server sends one (Orthanc does), is held
    to; the body must end with the closing delimiter ``--boundary--``.
    """
    media_type, params = _content_type(response.headers.get("Content-Type", ""))
    if media_type == "application/dicom":  # one instance, not wrapped (some servers do this)
        yield response.content
        return
    if media_type != "multipart/related" or not params.get("boundary"):
        raise _BadMultipart(
            f"Content-Type {response.headers.get('Content-Type')!r}, expected multipart/related")
    reader = _StreamBuffer(response.iter_content(CHUNK_BYTES))
    delimiter = b"--" + params["boundary"].encode("latin-1")
    # The first delimiter may open the body or follow a preamble.
    if not reader.startswith(delimiter):
        reader.skip_past(b"\r\n" + delimiter)
    else:
        reader.skip(len(delimiter))
    while True:
        if reader.startswith(b"--"):
            return  # closing delimiter: complete (an epilogue, if any, is ignored)
        reader.skip_past(b"\r\n")  # rest of the delimiter line (transport padding)
        if reader.startswith(b"\r\n"):  # a part without headers
            reader.skip(2)
            headers = {}
        else:
            headers = _part_headers(reader.read_until(b"\r\n\r\n"))
        length = headers.get("content-length")
        if length is not None:
            part = reader.read(int(length))
            if not reader.startswith(b"\r\n" + delimiter):
                raise _BadMultipart(f"a part is longer than its Content-Length {length}")
            reader.skip(2 + len(delimiter))
        else:
            part = reader.read_until(b"\r\n" + delimiter)
        yield part


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    media_type, *rest = [p.strip() for p in value.split(";")]
    params = {}
    for p in rest:
        name, _, v = p.partition("=")
        params[name.strip().lower()] = v.strip().strip('"')
    return media_type.lower(), params


def _part_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


class _StreamBuffer:
    """Bytes from an iterator of chunks, consumed from the front; raises _Truncated at the end."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0

    def _more(self) -> None:
        for chunk in self._chunks:
            if chunk:
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                self._buf += chunk
                return
        left = len(self._buf) - self._pos
        raise _Truncated(f"the response ended early ({left} bytes of an unfinished part)")

    def _fill(self, n: int) -> None:
        while len(self._buf) - self._pos < n:
            self._more()

    def startswith(self, prefix: bytes) -> bool:
        self._fill(len(prefix))
        return self._buf.startswith(prefix, self._pos)

    def skip(self, n: int) -> None:
        self._fill(n)
        self._pos += n

    def read(self, n: int) -> bytes:
        self._fill(n)
        with memoryview(self._buf) as view:  # one copy, not two; released before the next resize
            out = bytes(view[self._pos : self._pos + n])
        self._pos += n
        return out

    def read_until(self, marker: bytes) -> bytes:
        """The bytes before ``marker``; the marker is consumed too."""
        start = self._pos
        search_from = start
        while (i := self._buf.find(marker, search_from)) < 0:
            search_from = max(self._pos, len(self._buf) - len(marker) + 1)
            offset = self._pos
            self._more()
            # _more() may have compacted the buffer: shift the search positions with it.
            shift = offset - self._pos
            start -= shift
            search_from -= shift
        with memoryview(self._buf) as view:
            out = bytes(view[start:i])
        self._pos = i + len(marker)
        return out

    def skip_past(self, marker: bytes) -> None:
        self.read_until(marker)
