"""Publish a series' SEG and SR to a DICOMweb store with STOW-RS, once, whatever fails on the way.

Each file is sent as written (one instance per request, no re-encoding).  Publishing is
idempotent: our SOPInstanceUIDs are derived from the source series and the algorithm, so an
instance the store already holds *is* this result, and is left alone ("already-present") unless
``replace`` asks for it to be deleted and stored again ("replaced").

A POST is never repeated blindly.  Its response can be lost after the store has kept the
instance (a reset, a timeout, a proxy's 502), so after every failed POST the store is asked
again (QIDO-RS, by SOPInstanceUID) and the POST is repeated only if the instance is still
missing.  A 2xx answer is not taken on trust either: Orthanc 1.10 answers 200 to an instance its
storage area refused (full) or that a Lua filter dropped, so every store is checked afterwards.

The store's side (STOW-RS, look-up, delete, what a STOW-RS answer says) is
:class:`spine_idc.dicomweb.Store`; this module decides what is sent, when, and how often.

Retries come in two layers.  The session's (urllib3, see
:func:`~spine_idc.dicomweb.make_client`) repeats a GET after a connection error or a
429/5xx, and any request, a POST too, whose connection was refused (nothing reached the server);
a look-up that still fails then raises.  :func:`publish_files` repeats the look-up-then-POST
cycle after a POST that timed out, broke off or got a 5xx, up to ``retries`` times.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from urllib.parse import quote, urlsplit

import pydicom

from .dicomweb import Instance, Lost, Store, make_client, server_name
from .errors import ConfigError, SeriesError, TransientError
from .uids import is_valid_uid

log = logging.getLogger(__name__)

#: IDC's own OHIF v3 viewer; the URL form follows ``idc_index.IDCClient.get_viewer_URL``.
IDC_VIEWER = "https://viewer.imaging.datacommons.cancer.gov/v3/viewer/"
#: Hosts of IDC's public DICOMweb proxy, and the Google Cloud projects of IDC's DICOM stores.
IDC_PROXY_HOSTS = ("proxy.imaging.datacommons.cancer.gov",)
IDC_GOOGLE_PROJECTS = ("nci-idc-data",)
GOOGLE_HEALTHCARE_HOST = "healthcare.googleapis.com"
TEMPLATE_FIELDS = ("study", "series")


class PublishStatus(enum.StrEnum):
    """What publishing did with one instance."""

    STORED = "stored"  # the store did not hold it; now it does
    ALREADY_PRESENT = "already-present"  # the store held it; nothing was sent
    REPLACED = "replaced"  # the store held it; deleted and stored again (``replace=True``)


@dataclass(frozen=True)
class Published:
    """One instance the store now holds."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    path: str
    status: PublishStatus


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_series` did: the instances, where to look at them, and how long it took.

    ``store`` is the DICOMweb root without credentials; ``viewer_url`` is ``""`` where no viewer
    is known for the store (see :func:`viewer_url`).
    """

    instances: list[Published]
    viewer_url: str
    store: str
    seconds: float


# --------------------------------------------------------------------------------------------
# Public API


def publish_files(
    files: Sequence[Path],
    client,
    *,
    replace: bool = False,
    series_key: str,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> list[Published]:
    """STOW-RS each DICOM file to the store behind ``client``, skipping what it already holds.

    Parameters
    ----------
    files:
        DICOM files, sent in this order, each exactly as written.
    client:
        A ``dicomweb_client.DICOMwebClient`` from :func:`~spine_idc.dicomweb.make_client`.
    replace:
        Delete an instance the store holds and store the file again.  Orthanc (found by its
        ``/system`` answer next to the DICOMweb root) deletes through its REST API; any other
        store through the DICOMweb ``DELETE`` of the instance (Google Cloud Healthcare).
    series_key:
        The series the files belong to, for errors.
    retries, backoff_s:
        A POST that times out, breaks or gets a 5xx is tried again up to ``retries`` times, after
        ``backoff_s * 2**n`` seconds and a look-up that shows the instance still missing.

    Raises
    ------
    TransientError
        The store kept failing (naming the instance, the series and the store).
    SeriesError
        ``publish-unreadable`` (a file is not DICOM or lacks valid UIDs), ``publish-rejected``
        (a 4xx; the message has the HTTP status and the server's reason), ``publish-not-stored``
        (the store answered 2xx but does not hold the instance), ``unauthorized`` (401/403).
    ConfigError
        ``replace`` with a store that cannot delete instances.
    """
    instances = [_read_instance(Path(f), series_key) for f in files]
    seen: dict[str, Path] = {}
    for inst in instances:
        if inst.sop_instance_uid in seen:
            raise SeriesError(series_key, "publish-unreadable",
                              f"{seen[inst.sop_instance_uid]} and {inst.path} are one instance "
                              f"{inst.sop_instance_uid}", path=str(inst.path))
        seen[inst.sop_instance_uid] = inst.path
    store = Store(client, series_key)
    return [_publish_one(store, inst, replace=replace, retries=retries, backoff_s=backoff_s)
            for inst in instances]


def viewer_url(
    store_url: str,
    study_uid: str,
    series_uids: Sequence[str],
    *,
    template: str = "",
    orthanc_study_id: str = "",
) -> str:
    """A web viewer's address for the published series, or ``""`` where none is known.

    In order of precedence:

    1. ``template`` (a user's choice for any store): ``{study}`` becomes the StudyInstanceUID,
       ``{series}`` the SeriesInstanceUIDs joined by commas.
    2. IDC's stores (host ``proxy.imaging.datacommons.cancer.gov``, or a Google Cloud
       Healthcare store of project ``nci-idc-data``): IDC's OHIF v3 viewer, in the form
       ``idc_index`` uses: ``?StudyInstanceUIDs=<study>&initialSeriesInstanceUID=<first series>``.
       (OHIF's ``SeriesInstanceUIDs`` filter is not used: it would hide the CT a SEG needs.)
    3. Orthanc, given the Orthanc ID of the study: Orthanc Explorer's page of the study, under
       the REST root (the DICOMweb root minus its last path segment, ``/dicom-web`` by default).
    4. Otherwise ``""``.

    Credentials in ``store_url`` never reach the result.

    Raises
    ------
    ConfigError
        ``template`` names a placeholder other than ``{study}`` and ``{series}``.
    """
    if template:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        if not fields <= set(TEMPLATE_FIELDS):
            raise ConfigError(f"viewer URL template {template!r} has unknown placeholders "
                              f"{sorted(fields - set(TEMPLATE_FIELDS))}",
                              hint="use {study} and {series} only")
        return template.format(study=quote(study_uid), series=",".join(map(quote, series_uids)))
    if _is_idc_store(store_url):
        url = f"{IDC_VIEWER}?StudyInstanceUIDs={quote(study_uid)}"
        return url + (f"&initialSeriesInstanceUID={quote(series_uids[0])}" if series_uids else "")
    if orthanc_study_id:
        parts = urlsplit(store_url)
        host = parts.hostname or ""
        root = parts.path.rstrip("/").rpartition("/")[0]
        netloc = f"{host}:{parts.port}" if parts.port else host
        page = f"app/explorer.html#study?uuid={quote(orthanc_study_id)}"
        return f"{parts.scheme}://{netloc}{root}/{page}"
    return ""


def publish_series(
    seg: Path,
    sr: Path,
    *,
    url: str,
    auth: str = "env",
    replace: bool = False,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 120,
    template: str = "",
    source_files: Sequence[Path] = (),
    series_key: str,
) -> PublishResult:
    """Publish one series' SEG and SR (after ``source_files``, if any) to the store at ``url``.

    ``source_files`` are the source CT instances, for stores that do not hold them already (IDC
    does; a local Orthanc does not, and viewers need the CT to show a SEG); they go first, so
    every reference resolves as soon as it is stored.  The other arguments are those of
    :func:`~spine_idc.dicomweb.make_client` and :func:`publish_files`; the viewer URL
    follows :func:`viewer_url` (for Orthanc, the study's ID is looked up).
    """
    started = time.perf_counter()
    client = make_client(url, auth=auth, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    files = [*map(Path, source_files), Path(seg), Path(sr)]
    instances = publish_files(files, client, replace=replace, series_key=series_key,
                              retries=retries, backoff_s=backoff_s)
    seg_inst, sr_inst = instances[-2:]
    known = template or _is_idc_store(url) or urlsplit(url).hostname == GOOGLE_HEALTHCARE_HOST
    orthanc_id = "" if known else Store(client, series_key).orthanc_study_id(seg_inst)
    link = viewer_url(server_name(client), seg_inst.study_instance_uid,
                      [seg_inst.series_instance_uid, sr_inst.series_instance_uid],
                      template=template, orthanc_study_id=orthanc_id)
    seconds = time.perf_counter() - started
    counts = {s: sum(i.status is s for i in instances) for s in PublishStatus}
    log.info("series %s: published to %s in %.1f s (%s)", series_key, server_name(client), seconds,
             ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return PublishResult(instances=instances, viewer_url=link, store=server_name(client),
                         seconds=seconds)


# --------------------------------------------------------------------------------------------
# One instance


def _read_instance(path: Path, series_key: str) -> Instance:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"])
    except Exception as e:  # pydicom raises many kinds on what is not DICOM
        raise SeriesError(series_key, "publish-unreadable", f"not a DICOM file: {e}",
                          path=str(path)) from e
    uids = {k: str(ds.get(k, "") or "") for k in
            ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")}
    bad = [f"{k} {v!r}" for k, v in uids.items() if not is_valid_uid(v)]
    if bad:
        raise SeriesError(series_key, "publish-unreadable", f"invalid {', '.join(bad)}",
                          path=str(path))
    return Instance(path, uids["SOPInstanceUID"], uids["SeriesInstanceUID"],
                     uids["StudyInstanceUID"], uids["SOPClassUID"])


def _publish_one(store: Store, inst: Instance, *, replace: bool, retries: int,
                 backoff_s: float) -> Published:
    """Look up, (delete,) POST, verify; after a lost POST, back off and start again."""
    started = time.perf_counter()
    data = inst.path.read_bytes()
    status = PublishStatus.STORED
    posted = False
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            if store.holds(inst):
                if posted:  # an earlier POST got through; its answer did not
                    break
                if not replace:
                    return _published(inst, PublishStatus.ALREADY_PRESENT)
                status = PublishStatus.REPLACED
                store.delete(inst)
            posted = True
            store.stow(inst, data)
            break
        except Lost as e:
            if attempt == retries:
                raise TransientError(
                    f"series {store.series_key}: could not publish instance "
                    f"{inst.sop_instance_uid} of series {inst.series_instance_uid} ({inst.path}) "
                    f"to {store.name} after {retries + 1} tries: {e}") from (e.__cause__ or e)
            log.warning("%s: publishing %s to %s failed (%s); trying again (%d of %d)",
                        store.series_key, inst.sop_instance_uid, store.name, e, attempt + 1,
                        retries)
    seconds = time.perf_counter() - started
    log.info("%s: %s %s (%.2f MB) on %s in %.2f s", store.series_key, status.value,
             inst.sop_instance_uid, len(data) / 1e6, store.name, seconds)
    return _published(inst, status)


def _published(inst: Instance, status: PublishStatus) -> Published:
    return Published(inst.sop_instance_uid, inst.series_instance_uid, inst.study_instance_uid,
                     inst.sop_class_uid, str(inst.path), status)


def _is_idc_store(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in IDC_PROXY_HOSTS:
        return True
    segments = parts.path.strip("/").split("/")
    return (host == GOOGLE_HEALTHCARE_HOST and "projects" in segments
            and segments.index("projects") + 1 < len(segments)
            and segments[segments.index("projects") + 1] in IDC_GOOGLE_PROJECTS)
