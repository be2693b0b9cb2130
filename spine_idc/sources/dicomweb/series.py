"""DICOMweb source: which CT series a server holds, as manifest records, and one series into a
folder, through the shared client (:mod:`spine_idc.dicomweb`: session, retries, QIDO-RS,
WADO-RS).

One download attempt is bounded as a whole by an :class:`~spine_idc.dicomweb.AttemptLimit`
(``download.timeout_s``), given to both :func:`make_client` and :func:`fetch_dicomweb_series`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dicomweb_client

from ...dicomweb import AttemptLimit, retrieve_series, server_name
from ...dicomweb import make_client  # noqa: F401 - the source takes it from here
from ...dicomweb.search import (
    BODY_PART,
    MODALITY,
    N_SERIES_INSTANCES,
    PAGE_SIZE,
    PATIENT_ID,
    SERIES_DESCRIPTION,
    SERIES_UID,
    STUDY_DESCRIPTION,
    STUDY_UID,
    count_instances,
    find_series,
    number,
    shown,
    text,
)
from ...uids import is_valid_uid
from ..base import DownloadStats

log = logging.getLogger(__name__)

#: What a manifest record needs beyond the UIDs.
SERIES_FIELDS = (N_SERIES_INSTANCES, BODY_PART, SERIES_DESCRIPTION, PATIENT_ID, STUDY_DESCRIPTION)


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
    items = find_series(client, modality=modality, fields=SERIES_FIELDS, page_size=page_size)
    records = {}
    for item in items:
        uid, study = text(item, SERIES_UID), text(item, STUDY_UID)
        if not is_valid_uid(uid):
            log.warning("%s: skipping series with invalid SeriesInstanceUID %r (study %r)",
                        server, shown(uid), shown(study))
            continue
        if not is_valid_uid(study):
            log.warning("%s: skipping series %s: invalid StudyInstanceUID %r", server, uid, shown(study))
            continue
        try:
            records[uid] = _series_record(client, item, page_size=page_size)
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # what the server sent
            log.warning("%s: skipping series %s (study %s): malformed QIDO-RS record: %s",
                        server, uid, study, shown(f"{type(e).__name__}: {e}"))
    log.info("%s: %d %s series", server, len(records), modality)
    return [records[uid] for uid in sorted(records)]


def _series_record(
    client: dicomweb_client.DICOMwebClient, item: dict, *, page_size: int = PAGE_SIZE
) -> dict:
    series_uid, study_uid = text(item, SERIES_UID), text(item, STUDY_UID)
    n_instances = number(item, N_SERIES_INSTANCES)
    if n_instances is None:  # optional in QIDO-RS: count the instances instead
        n_instances = count_instances(client, study_uid, series_uid, page_size=page_size)
    return {
        "series_key": series_uid,
        "series_instance_uid": series_uid,
        "study_instance_uid": study_uid,
        "patient_id": text(item, PATIENT_ID),
        "modality": text(item, MODALITY),
        "series_description": text(item, SERIES_DESCRIPTION),
        "n_instances": int(n_instances),
        "collection_id": "",
        "body_part": text(item, BODY_PART),
        "license": "",
        "size_mb": 0.0,
        "location": f"{server_name(client)}/studies/{study_uid}/series/{series_uid}",
        "index_version": "",
        # not a manifest column, but `query.study_description` filters on it
        "study_description": text(item, STUDY_DESCRIPTION),
    }


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
    """Retrieve every instance of a series into the existing empty folder ``dest``, as
    ``<SOPInstanceUID>.dcm``; counts are checked by the caller.  Arguments and errors are those
    of :func:`~spine_idc.dicomweb.retrieve_series`."""
    started = time.perf_counter()
    written = retrieve_series(client, study_uid, series_uid, dest, series_key=series_key,
                              stream_retries=stream_retries, limit=limit)
    seconds = time.perf_counter() - started
    n_bytes = sum(written.values())
    log.info("series %s: %d instances, %.1f MB from %s in %.1f s",
             series_key, len(written), n_bytes / 1e6, server_name(client), seconds)
    return DownloadStats(files=len(written), bytes=n_bytes, seconds=seconds)
