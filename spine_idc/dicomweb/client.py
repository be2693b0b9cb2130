"""The DICOMweb session: authentication, timeouts, retries, and what an answer's status means.

Works with any DICOMweb store (Orthanc, dcm4chee, Google Cloud Healthcare).  Credentials come
from the environment, never from the configuration file (see :func:`make_client`), and no
message names them: :func:`server_name` is how a store is named.

Retries come in two layers that never multiply: the session's (urllib3, set up here) for faults
before a response begins (connection refused or reset, 429/5xx; a POST only when its connection
was refused, so that nothing reached the server), and the caller's for what the session cannot
know is safe to repeat (:func:`~.retrieve.retrieve_series` asks again for a series whose
response broke; :mod:`~spine_idc.publish` looks up an instance before it repeats a POST).
dicomweb-client's own retry loop is switched off.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import dicomweb_client
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import ConfigError
from .limit import AttemptLimit, LimitedAdapter, LimitedRetry

log = logging.getLogger(__name__)

TOKEN_ENV = "SPINE_IDC_DICOMWEB_TOKEN"
USER_ENV = "SPINE_IDC_DICOMWEB_USER"
PASSWORD_ENV = "SPINE_IDC_DICOMWEB_PASSWORD"
AUTH_HINT = f"set {TOKEN_ENV} (bearer token) or {USER_ENV} and {PASSWORD_ENV} (basic auth)"
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-healthcare",)
AUTH_MODES = ("none", "env", "google")

#: Statuses worth another try: the server is overloaded, restarting or behind a failing proxy.
RETRY_STATUSES = (429, 500, 502, 503, 504)


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
        :func:`~.retrieve.retrieve_series` asks for the series again.
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
    retry = (Retry if limit is None else LimitedRetry)(
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
        adapter = LimitedAdapter(limit, max_retries=retry)
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


def service_root(client: dicomweb_client.DICOMwebClient, prefix: str) -> str:
    """The root of one service (``client.wado_url_prefix``, ``stow_url_prefix``...) of the client."""
    return f"{client.base_url}/{prefix}" if prefix else client.base_url


def describe(e: BaseException) -> str:
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


def status_of(e: requests.HTTPError) -> int:
    """The HTTP status of a failed request; 0 if it has no response."""
    return e.response.status_code if e.response is not None else 0


def is_transient(status: int) -> bool:
    """Whether an answer with this status may go away when asked again (429 and 5xx)."""
    return status in RETRY_STATUSES or status >= 500
