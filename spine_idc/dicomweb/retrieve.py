"""WADO-RS: every instance of a series into a folder, streaming, one instance in memory at a time.

The request goes through the client's session (:mod:`.client`: credentials, retries, timeout)
and the body is read by :func:`~.multipart.read_parts`, which treats a body without its closing
boundary as a transient fault.  A response that breaks once it has begun is asked for again
here, keeping the instances already written; an :class:`~.limit.AttemptLimit` bounds all of it,
and when it passes the retrieval ends with a :class:`~spine_idc.errors.TransientError` that
says it timed out.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import dicomweb_client
import pydicom
import requests

from ..errors import SeriesError, TransientError, machine_fault
from ..uids import is_valid_uid
from .client import AUTH_HINT, describe, is_transient, server_name, service_root, status_of
from .limit import AttemptLimit
from .multipart import BadMultipart, Truncated, read_parts

log = logging.getLogger(__name__)

WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def retrieve_series(
    client: dicomweb_client.DICOMwebClient,
    study_uid: str,
    series_uid: str,
    dest: Path,
    *,
    series_key: str,
    stream_retries: int = 2,
    limit: AttemptLimit | None = None,
) -> dict[str, int]:
    """Retrieve every instance of a series into the existing empty folder ``dest``.

    Each instance is written as received (its transfer syntax kept) to
    ``dest/<SOPInstanceUID>.dcm``.  Returns the bytes written per SOPInstanceUID; counts are
    not checked here.

    A response that breaks after it has begun (cut, reset, stalled past the timeout) is asked
    for again up to ``stream_retries`` times; instances already written are kept and skipped.
    Faults before a response begins are the session's to retry (see
    :func:`~.client.make_client`).  ``limit`` (the one given to ``make_client``) bounds all of it.

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
    url = f"{service_root(client, client.wado_url_prefix)}/studies/{study_uid}/series/{series_uid}"
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
                       f"{len(written)} instances: {describe(cause)}")
            if attempt == stream_retries:
                raise TransientError(message) from cause
            log.warning("%s; asking again (%d of %d)", message, attempt + 1, stream_retries)
    return written


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
            f"series {series_key}: WADO-RS retrieval from {server} failed: {describe(e)}"
        ) from e
    this_response = set()
    try:
        with response:
            for part in read_parts(response):
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
    except (requests.RequestException, Truncated) as e:
        raise _StreamBroken() from e
    except BadMultipart as e:
        raise SeriesError(series_key, "bad-response", f"WADO-RS answer from {server}: {e}") from e


def _retrieve_http_error(e: requests.HTTPError, series_key: str, server: str) -> Exception:
    status = status_of(e)
    if e.response is not None:
        e.response.close()
    if status == 404:
        return SeriesError(series_key, "not-found", f"{server} has no such series (HTTP 404)")
    if status in (401, 403):
        return SeriesError(series_key, "unauthorized",
                           f"{server} refused the credentials (HTTP {status})", hint=AUTH_HINT)
    if is_transient(status):
        return TransientError(
            f"series {series_key}: WADO-RS retrieval from {server} failed: HTTP {status}")
    return SeriesError(series_key, "http-error",
                       f"WADO-RS retrieval from {server} answered HTTP {status}")


def _sop_instance_uid(part: bytes, series_key: str) -> str:
    try:
        ds = pydicom.dcmread(BytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception as e:  # pydicom raises many kinds on bytes that are not DICOM
        raise BadMultipart(f"a part of {len(part)} bytes is not a DICOM file: {e}") from e
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not is_valid_uid(uid):
        raise SeriesError(series_key, "bad-uid", f"an instance has an invalid SOPInstanceUID {uid!r}")
    return uid
