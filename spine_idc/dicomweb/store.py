"""STOW-RS: store one instance, look it up, delete it; and what a STOW-RS answer says.

A :class:`Store` is the DICOMweb store behind a client (:func:`~.client.make_client`), for one
series' instances.  Its POST is never repeated here: :class:`Lost` says its outcome is unknown
(a timeout, a broken connection, a 5xx), and the caller decides, after a look-up, whether to
send it again (:mod:`spine_idc.publish` does).  A 2xx answer is not taken on trust: Orthanc 1.10
answers 200 to an instance its storage area refused (full) or that a Lua filter dropped, so
every store is checked afterwards.  Orthanc (found by its ``/system`` answer next to the
DICOMweb root) deletes through its REST API; any other store through the DICOMweb ``DELETE`` of
the instance (Google Cloud Healthcare).
"""

from __future__ import annotations

import json
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ..errors import ConfigError, SeriesError, TransientError
from . import multipart
from .client import AUTH_HINT, describe, is_transient, server_name, service_root, status_of
from .search import value

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Instance:
    """One DICOM file to store, with the UIDs that address it."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str


class Lost(Exception):
    """A request whose outcome is unknown (timeout, broken connection, 5xx): ask, then retry."""


class Store:
    """The DICOMweb store behind a client: look up, STOW, delete one instance."""

    def __init__(self, client, series_key: str):
        self.client = client
        self.series_key = series_key
        self.name = server_name(client)
        self._orthanc: str | None | bool = False  # not probed yet

    def holds(self, inst: Instance) -> bool:
        """Whether the store has the instance (QIDO-RS by SOPInstanceUID; 404 means no)."""
        try:
            found = self.client.search_for_instances(
                study_instance_uid=inst.study_instance_uid,
                series_instance_uid=inst.series_instance_uid,
                search_filters={"SOPInstanceUID": inst.sop_instance_uid},
                fields=["SOPInstanceUID"],
            )
        except requests.HTTPError as e:
            if status_of(e) == 404:
                return False
            raise self._http_error(e.response, inst, "QIDO-RS look-up") from e
        except requests.RequestException as e:  # the session has already retried
            raise TransientError(
                f"series {self.series_key}: looking up instance {inst.sop_instance_uid} of series "
                f"{inst.series_instance_uid} on {self.name} failed: {describe(e)}") from e
        # a server may ignore the filter: look for the UID rather than at the count
        return any(value(item, _QIDO_SOP_UID) == inst.sop_instance_uid for item in found)

    def stow(self, inst: Instance, data: bytes) -> None:
        """POST one instance; return once the store holds it, raise :class:`Lost` if unknown."""
        body, content_type = multipart.encode(data)
        root = service_root(self.client, self.client.stow_url_prefix)
        url = f"{root}/studies/{inst.study_instance_uid}"
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        try:  # the client's session: its credentials and retries (connection refused only)
            response = self.client._session.post(url, data=body, headers=headers,
                                                 timeout=self.client._timeout)
        except requests.RequestException as e:
            raise Lost(describe(e)) from e
        with response:
            answer = StowAnswer.parse(response)
        code = response.status_code
        if is_transient(code) and code != 501:
            raise Lost(f"HTTP {code}{answer.describe(inst)}")
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

    def _holds_after_store(self, inst: Instance) -> bool:
        """Look twice, half a second apart: a store may index what it has just written late."""
        if self.holds(inst):
            return True
        time.sleep(VERIFY_DELAY_S)
        return self.holds(inst)

    def delete(self, inst: Instance) -> None:
        rest = self.orthanc_rest()
        try:
            if rest:
                for orthanc_id in self._orthanc_find(inst):
                    gone = self.client._session.delete(f"{rest}/instances/{orthanc_id}",
                                                       timeout=self.client._timeout)
                    self._ok(gone, tolerate=frozenset({404}))  # deleted by a lost attempt
                return
            root = service_root(self.client, self.client.delete_url_prefix)
            url = (f"{root}/studies/{inst.study_instance_uid}/series/"
                   f"{inst.series_instance_uid}/instances/{inst.sop_instance_uid}")
            response = self.client._session.delete(url, timeout=self.client._timeout)
        except requests.RequestException as e:
            raise Lost(f"DELETE: {describe(e)}") from e
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
                                     f"{describe(e)}") from e
            except ValueError:
                about = {}
            self._orthanc = rest if isinstance(about, dict) and "ApiVersion" in about else None
        return self._orthanc

    def orthanc_study_id(self, inst: Instance) -> str:
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
        except (requests.RequestException, Lost) as e:
            raise TransientError(f"series {self.series_key}: looking up the Orthanc study of "
                                 f"{inst.sop_instance_uid} on {self.name} failed: {e}") from e

    def _orthanc_find(self, inst: Instance) -> list[str]:
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
        if is_transient(response.status_code):
            raise Lost(f"{what}: HTTP {response.status_code}")
        raise SeriesError(self.series_key, "publish-rejected",
                          f"{what} answered HTTP {response.status_code}"
                          f"{StowAnswer.parse(response).describe(None)}")

    def _http_error(self, response, inst: Instance, what: str,
                    answer: StowAnswer | None = None) -> Exception:
        code = response.status_code if response is not None else 0
        if code in (401, 403):
            return SeriesError(self.series_key, "unauthorized",
                               f"{self.name} refused the credentials (HTTP {code}) for the {what} "
                               f"of instance {inst.sop_instance_uid}", path=str(inst.path),
                               hint=AUTH_HINT)
        if is_transient(code):
            return TransientError(f"series {self.series_key}: {what} of instance "
                                  f"{inst.sop_instance_uid} of series {inst.series_instance_uid} "
                                  f"on {self.name} failed: HTTP {code}")
        answer = answer or StowAnswer.parse(response)
        return SeriesError(self.series_key, "publish-rejected",
                           f"{self.name} rejected the {what} of instance {inst.sop_instance_uid} "
                           f"with HTTP {code} {getattr(response, 'reason', '')}"
                           f"{answer.describe(inst)}",
                           path=str(inst.path))


# --------------------------------------------------------------------------------------------
# STOW-RS answers


@dataclass
class StowAnswer:
    """The Referenced/Failed SOP Sequences of a STOW-RS response, or its text."""

    referenced: set[str]
    failed: dict[str, int | None]  # SOPInstanceUID -> Failure Reason
    warnings: dict[str, int | None]  # SOPInstanceUID -> Warning Reason
    text: str  # the body, trimmed, when it is not a DICOM answer
    dicom: bool = False  # the body is a DICOM JSON or XML data set

    @classmethod
    def parse(cls, response: requests.Response) -> StowAnswer:
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
                answer.failed[value(item, _SOP_UID)] = value(item, _FAILURE_REASON)
            for item in (doc.get(_REFERENCED_SOP_SEQ) or {}).get("Value", []):
                answer.referenced.add(value(item, _SOP_UID))
                if _WARNING_REASON in item:
                    answer.warnings[value(item, _SOP_UID)] = value(item, _WARNING_REASON)
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

    def describe(self, inst: Instance | None) -> str:
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


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _trim(body: bytes, limit: int = 300) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
