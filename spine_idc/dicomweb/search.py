"""QIDO-RS: every result of a search, a page at a time, and the values of DICOM JSON records.

Servers may return fewer results than asked (cloud stores cap a page), so pages are requested
until one comes back empty.  (Orthanc's own ``LimitFindResults`` is different: it drops results
past the cap silently, at every offset.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dicomweb_client
import requests

from ..errors import ConfigError, TransientError
from .client import AUTH_HINT, describe, is_transient, server_name, status_of

log = logging.getLogger(__name__)

#: QIDO-RS results asked for per request.
PAGE_SIZE = 1000

# QIDO-RS attributes, as the tags DICOM JSON is keyed by.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, MODALITY, SERIES_DESCRIPTION = "00100020", "00080060", "0008103E"
BODY_PART, N_SERIES_INSTANCES = "00180015", "00201209"
STUDY_DESCRIPTION = "00081030"


def find_series(
    client: dicomweb_client.DICOMwebClient, *, modality: str, fields: tuple[str, ...] = (),
    page_size: int = PAGE_SIZE,
) -> list[dict]:
    """Every series of ``modality`` on the server, as QIDO-RS records with ``fields`` added.

    The records are as the server sent them (see :func:`text` to read them).

    Raises
    ------
    TransientError
        The server could not be reached or kept failing.
    ConfigError
        The server refused the credentials (401/403) or has no DICOMweb service at this URL.
    """
    return paged(
        lambda limit, offset: client.search_for_series(
            search_filters={"Modality": modality}, fields=list(fields), limit=limit, offset=offset
        ),
        page_size,
        key=lambda item: text(item, SERIES_UID),
        what=f"{modality} series on {server_name(client)}",
    )


def count_instances(
    client: dicomweb_client.DICOMwebClient, study_uid: str, series_uid: str, *,
    page_size: int = PAGE_SIZE,
) -> int:
    """How many instances the server lists in a series (errors as :func:`find_series`)."""
    return len(
        paged(
            lambda limit, offset: client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid,
                fields=[SOP_UID], limit=limit, offset=offset,
            ),
            page_size,
            key=lambda instance: text(instance, SOP_UID),
            what=f"instances of series {series_uid} on {server_name(client)}",
        )
    )


def paged(search: Callable[[int, int], list[dict]], page_size: int, *, key, what: str) -> list[dict]:
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
            raise _search_error(e, what) from e
        except requests.RequestException as e:
            raise TransientError(f"QIDO-RS search for {what} failed: {describe(e)}") from e
        new = {key(item): item for item in page if key(item) not in results}
        if not new:
            if page:
                log.warning("QIDO-RS search for %s: offset %d returned nothing new; stopping",
                            what, offset)
            return list(results.values())
        results.update(new)
        offset += len(page)


def _search_error(e: requests.HTTPError, what: str) -> Exception:
    status = status_of(e)
    message = f"QIDO-RS search for {what}: HTTP {status}"
    if status in (401, 403):
        return ConfigError(f"{message} (credentials refused)", hint=AUTH_HINT)
    if status == 404:
        return ConfigError(f"{message} (no DICOMweb service at this URL?)")
    if is_transient(status):
        return TransientError(message)
    return ConfigError(message)


def shown(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters: it came from a server."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def value(item: dict, tag: str):
    """The first value of ``tag`` in a DICOM JSON record; ``None`` if absent or malformed."""
    attribute = item.get(tag) if isinstance(item, dict) else None
    values = (attribute.get("Value") if isinstance(attribute, dict) else None) or [None]
    first = values[0] if isinstance(values, list) else None
    if isinstance(first, dict):  # a person name: {"Alphabetic": "..."}
        first = first.get("Alphabetic", "")
    return first


def text(item: dict, tag: str) -> str:
    """The first value of ``tag`` as stripped text; ``""`` if absent or malformed."""
    first = value(item, tag)
    return "" if first is None else str(first).strip()


def number(item: dict, tag: str) -> int | None:
    """The first value of ``tag`` as an integer; ``None`` if absent or not a number."""
    first = value(item, tag)
    try:
        return None if first is None else int(first)
    except (TypeError, ValueError):
        return None
