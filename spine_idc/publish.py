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

Retries come in two layers.  The session's (urllib3, see
:func:`~spine_idc.download.dicomweb.make_client`) repeats a GET after a connection error or a
429/5xx, and any request, a POST too, whose connection was refused (nothing reached the server);
a look-up that still fails then raises.  :func:`publish_files` repeats the look-up-then-POST
cycle after a POST that timed out, broke off or got a 5xx, up to ``retries`` times.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from urllib.parse import quote, urlsplit

import pydicom
import requests

from .download.dicomweb import AUTH_HINT, RETRY_STATUSES, _describe, make_client, server_name
from .errors import ConfigError, SeriesError, TransientError
from .scan import is_valid_uid

log = logging.getLogger(__name__)

#: IDC's own OHIF v3 viewer; the URL form follows ``idc_index.IDCClient.get_viewer_URL``.
IDC_VIEWER = "https://viewer.imaging.datacommons.cancer.gov/v3/viewer/"
#: Hosts of IDC's public DICOMweb proxy, and the Google Cloud projects of IDC's DICOM stores.
IDC_PROXY_HOSTS = ("proxy.imaging.datacommons.cancer.gov",)
IDC_GOOGLE_PROJECTS = ("nci-idc-data",)
GOOGLE_HEALTHCARE_HOST = "healthcare.googleapis.com"
TEMPLATE_FIELDS = ("study", "series")
VERIFY_DELAY_S = 0.5

# DICOM JSON tags of a STOW-RS response (PS3.18 10.5.3).
_FAILED_SOP_SEQ, _REFERENCED_SOP_SEQ, _SOP_UID = "00081198", "00081199", "00081155"
_FAILURE_REASON, _WARNING_REASON, _QIDO_SOP_UID = "00081197", "00081196", "00080018"
#: Failure and warning reasons (PS3.18 Table I.2-1, PS3.4 B.2.3), and Azure's "already stored".
REASONS = {
    0x0110: "processing failure", 0x0111: "duplicate SOP instance",
    0x0119: "class-instance conflict",
    0x0122: "SOP class not supported", 0x0124: "not authorized", 0xA700: "out of resources",
    0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
    0xC122: "transfer syntax not supported", 0xB000: "coercion of data elements",
    0xB006: "elements discarded", 0xB007: "data set does not match SOP class",
    0xB00E: "instance already stored",
}


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


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str


class _Lost(Exception):
    """A POST whose outcome is unknown (timeout, broken connection, 5xx): ask, then maybe retry."""


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
        A ``dicomweb_client.DICOMwebClient`` from :func:`~spine_idc.download.dicomweb.make_client`.
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
    store = _Store(client, series_key)
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
    :func:`~spine_idc.download.dicomweb.make_client` and :func:`publish_files`; the viewer URL
    follows :func:`viewer_url` (for Orthanc, the study's ID is looked up).
    """
    started = time.perf_counter()
    client = make_client(url, auth=auth, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    files = [*map(Path, source_files), Path(seg), Path(sr)]
    instances = publish_files(files, client, replace=replace, series_key=series_key,
                              retries=retries, backoff_s=backoff_s)
    seg_inst, sr_inst = instances[-2:]
    known = template or _is_idc_store(url) or urlsplit(url).hostname == GOOGLE_HEALTHCARE_HOST
    orthanc_id = "" if known else _Store(client, series_key).orthanc_study_id(seg_inst)
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


def _read_instance(path: Path, series_key: str) -> _Instance:
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
    return _Instance(path, uids["SOPInstanceUID"], uids["SeriesInstanceUID"],
                     uids["StudyInstanceUID"], uids["SOPClassUID"])


def _publish_one(store: _Store, inst: _Instance, *, replace: bool, retries: int,
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
        except _Lost as e:
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


def _published(inst: _Instance, status: PublishStatus) -> Published:
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


# --------------------------------------------------------------------------------------------
# The store


class _Store:
    """The DICOMweb store behind a client: look up, STOW, delete one instance."""

    def __init__(self, client, series_key: str):
        self.client = client
        self.series_key = series_key
        self.name = server_name(client)
        self._orthanc: str | None | bool = False  # not probed yet

    def holds(self, inst: _Instance) -> bool:
        """Whether the store has the instance (QIDO-RS by SOPInstanceUID; 404 means no)."""
        try:
            found = self.client.search_for_instances(
                study_instance_uid=inst.study_instance_uid,
                series_instance_uid=inst.series_instance_uid,
                search_filters={"SOPInstanceUID": inst.sop_instance_uid},
                fields=["SOPInstanceUID"],
            )
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status == 404:
                return False
            raise self._http_error(e.response, inst, "QIDO-RS look-up") from e
        except requests.RequestException as e:  # the session has already retried
            raise TransientError(
                f"series {self.series_key}: looking up instance {inst.sop_instance_uid} of series "
                f"{inst.series_instance_uid} on {self.name} failed: {_describe(e)}") from e
        # a server may ignore the filter: look for the UID rather than at the count
        return any(_first(item, _QIDO_SOP_UID) == inst.sop_instance_uid for item in found)

    def stow(self, inst: _Instance, data: bytes) -> None:
        """POST one instance; return once the store holds it, raise :class:`_Lost` if unknown."""
        boundary = uuid.uuid4().hex
        while boundary.encode() in data:  # pragma: no cover - 2**-122
            boundary = uuid.uuid4().hex
        body = b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                         data, f"\r\n--{boundary}--\r\n".encode()))
        prefix = f"/{self.client.stow_url_prefix}" if self.client.stow_url_prefix else ""
        url = f"{self.client.base_url}{prefix}/studies/{inst.study_instance_uid}"
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:  # the client's session: its credentials and retries (connection refused only)
            response = self.client._session.post(url, data=body, headers=headers,
                                                 timeout=self.client._timeout)
        except requests.RequestException as e:
            raise _Lost(_describe(e)) from e
        with response:
            answer = _StowAnswer.parse(response)
        code = response.status_code
        if code in RETRY_STATUSES or (code >= 500 and code != 501):
            raise _Lost(f"HTTP {code}{answer.describe(inst)}")
        if code == 409 and self.holds(inst):
            return  # "already stored" (Google, Azure): by us, in a lost attempt, or by a twin
        if code >= 400 or inst.sop_instance_uid in answer.failed:
            raise self._http_error(response, inst, "STOW-RS", answer)
        if inst.sop_instance_uid in answer.warnings:
            log.warning("%s: %s stored with a warning%s", self.series_key, inst.sop_instance_uid,
                        answer.describe(inst))
        if not self._holds_after_store(inst):
            listed = "listed" if inst.sop_instance_uid in answer.referenced else "did not list"
            raise SeriesError(
                self.series_key, "publish-not-stored",
                f"{self.name} answered STOW-RS of instance {inst.sop_instance_uid} with HTTP "
                f"{code} and {listed} it as stored, but does not hold it (storage full, or a "
                f"filter on the server dropped it? see the server's log)", path=str(inst.path))

    def _holds_after_store(self, inst: _Instance) -> bool:
        """Look twice, half a second apart: a store may index what it has just written late."""
        if self.holds(inst):
            return True
        time.sleep(VERIFY_DELAY_S)
        return self.holds(inst)

    def delete(self, inst: _Instance) -> None:
        rest = self.orthanc_rest()
        try:
            if rest:
                for orthanc_id in self._orthanc_find(inst):
                    gone = self.client._session.delete(f"{rest}/instances/{orthanc_id}",
                                                       timeout=self.client._timeout)
                    self._ok(gone, tolerate=frozenset({404}))  # deleted by a lost attempt
                return
            prefix = f"/{self.client.delete_url_prefix}" if self.client.delete_url_prefix else ""
            url = (f"{self.client.base_url}{prefix}/studies/{inst.study_instance_uid}/series/"
                   f"{inst.series_instance_uid}/instances/{inst.sop_instance_uid}")
            response = self.client._session.delete(url, timeout=self.client._timeout)
        except requests.RequestException as e:
            raise _Lost(f"DELETE: {_describe(e)}") from e
        if response.status_code in (400, 404, 405, 501):
            raise ConfigError(f"{self.name} cannot delete instances (DICOMweb DELETE answered "
                              f"HTTP {response.status_code}), so replace is impossible",
                              hint="set replace off, or delete the old results on the server")
        self._ok(response)

    def orthanc_rest(self) -> str | None:
        """Orthanc's REST root if the store is Orthanc's DICOMweb plugin, else ``None``."""
        if self._orthanc is False:
            rest = self.client.base_url.rstrip("/").rpartition("/")[0]
            try:
                answer = self.client._session.get(f"{rest}/system", timeout=self.client._timeout)
                about = answer.json() if answer.ok else {}
            except requests.RequestException as e:
                raise TransientError(f"{self.name}: asking what the server is failed: "
                                     f"{_describe(e)}") from e
            except ValueError:
                about = {}
            self._orthanc = rest if isinstance(about, dict) and "ApiVersion" in about else None
        return self._orthanc

    def orthanc_study_id(self, inst: _Instance) -> str:
        """The Orthanc ID of the study holding ``inst``, or ``""`` when the store is not Orthanc."""
        rest = self.orthanc_rest()
        if not rest:
            return ""
        try:
            ids = self._orthanc_find(inst)
            if not ids:
                return ""
            answer = self.client._session.get(f"{rest}/instances/{ids[0]}/study",
                                              timeout=self.client._timeout)
            return str(self._ok(answer).json()["ID"])
        except (requests.RequestException, _Lost) as e:
            raise TransientError(f"series {self.series_key}: looking up the Orthanc study of "
                                 f"{inst.sop_instance_uid} on {self.name} failed: {e}") from e

    def _orthanc_find(self, inst: _Instance) -> list[str]:
        """Orthanc's IDs of the instance (``/tools/find`` takes the UIDs of every level)."""
        query = {"StudyInstanceUID": inst.study_instance_uid,
                 "SeriesInstanceUID": inst.series_instance_uid,
                 "SOPInstanceUID": inst.sop_instance_uid}
        answer = self.client._session.post(f"{self.orthanc_rest()}/tools/find",
                                           json={"Level": "Instance", "Query": query},
                                           timeout=self.client._timeout)
        return [str(i) for i in self._ok(answer).json()]

    def _ok(self, response: requests.Response,
            tolerate: frozenset[int] = frozenset()) -> requests.Response:
        if response.ok or response.status_code in tolerate:
            return response
        what = f"{response.request.method} {urlsplit(response.url).path} on {self.name}"
        if response.status_code in RETRY_STATUSES or response.status_code >= 500:
            raise _Lost(f"{what}: HTTP {response.status_code}")
        raise SeriesError(self.series_key, "publish-rejected",
                          f"{what} answered HTTP {response.status_code}"
                          f"{_StowAnswer.parse(response).describe(None)}")

    def _http_error(self, response, inst: _Instance, what: str,
                    answer: _StowAnswer | None = None) -> Exception:
        code = response.status_code if response is not None else 0
        if code in (401, 403):
            return SeriesError(self.series_key, "unauthorized",
                               f"{self.name} refused the credentials (HTTP {code}) for the {what} "
                               f"of instance {inst.sop_instance_uid}", path=str(inst.path),
                               hint=AUTH_HINT)
        if code in RETRY_STATUSES or code >= 500:
            return TransientError(f"series {self.series_key}: {what} of instance "
                                  f"{inst.sop_instance_uid} of series {inst.series_instance_uid} "
                                  f"on {self.name} failed: HTTP {code}")
        answer = answer or _StowAnswer.parse(response)
        return SeriesError(self.series_key, "publish-rejected",
                           f"{self.name} rejected the {what} of instance {inst.sop_instance_uid} "
                           f"with HTTP {code} {getattr(response, 'reason', '')}"
                           f"{answer.describe(inst)}",
                           path=str(inst.path))


# --------------------------------------------------------------------------------------------
# STOW-RS answers


@dataclass
class _StowAnswer:
    """The Referenced/Failed SOP Sequences of a STOW-RS response, or its text."""

    referenced: set[str]
    failed: dict[str, int | None]  # SOPInstanceUID -> Failure Reason
    warnings: dict[str, int | None]  # SOPInstanceUID -> Warning Reason
    text: str  # the body, trimmed, when it is not a DICOM answer
    dicom: bool = False  # the body is a DICOM JSON or XML data set

    @classmethod
    def parse(cls, response: requests.Response) -> _StowAnswer:
        # Orthanc sends its error bodies (DICOM JSON or its own JSON) without a Content-Type.
        body = response.content or b""
        answer = cls(set(), {}, {}, "")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, list) and len(doc) == 1:
            doc = doc[0]
        if isinstance(doc, dict) and (_FAILED_SOP_SEQ in doc or _REFERENCED_SOP_SEQ in doc):
            answer.dicom = True
            for item in (doc.get(_FAILED_SOP_SEQ) or {}).get("Value", []):
                answer.failed[_first(item, _SOP_UID)] = _first(item, _FAILURE_REASON)
            for item in (doc.get(_REFERENCED_SOP_SEQ) or {}).get("Value", []):
                answer.referenced.add(_first(item, _SOP_UID))
                if _WARNING_REASON in item:
                    answer.warnings[_first(item, _SOP_UID)] = _first(item, _WARNING_REASON)
        elif isinstance(doc, dict):  # Orthanc's {"Message", "Details"}, Google's {"error": {...}}
            error = doc.get("error") if isinstance(doc.get("error"), dict) else doc
            words = [str(error[k]) for k in ("Message", "Details", "message") if error.get(k)]
            answer.text = "; ".join(words) or _trim(body)
        elif body.lstrip().startswith(b"<") and b"NativeDicomModel" in body[:2000]:
            answer.dicom = True
            answer._parse_xml(body)
        else:
            answer.text = _trim(body)
        return answer

    def _parse_xml(self, body: bytes) -> None:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            self.text, self.dicom = _trim(body), False
            return
        for attr in root:
            tag = attr.get("tag", "").upper()
            if tag not in (_FAILED_SOP_SEQ, _REFERENCED_SOP_SEQ):
                continue
            for item in attr:
                if not item.tag.endswith("Item"):  # Orthanc adds a stray <Value/> to a sequence
                    continue
                values = {a.get("tag", "").upper(): "".join(a.itertext()).strip() for a in item}
                uid = values.get(_SOP_UID, "")
                if tag == _FAILED_SOP_SEQ:
                    self.failed[uid] = _int(values.get(_FAILURE_REASON))
                else:
                    self.referenced.add(uid)
                    if _WARNING_REASON in values:
                        self.warnings[uid] = _int(values[_WARNING_REASON])

    def describe(self, inst: _Instance | None) -> str:
        """``": failure reason 0x0110 (processing failure)"``, the server's text, or ``""``."""
        uid = inst.sop_instance_uid if inst else ""
        for label, table in (("failure", self.failed), ("warning", self.warnings)):
            if uid in table:
                code = table[uid]
                if code is None:
                    return f": {label} without a reason"
                return f": {label} reason 0x{code:04X} ({REASONS.get(code, 'unknown')})"
        if self.text:
            return f": {self.text}"
        if self.dicom and not self.referenced and not self.failed:
            return ": no reason given (empty Referenced and Failed SOP Sequences)"
        return ""


def _first(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _trim(body: bytes, limit: int = 300) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
