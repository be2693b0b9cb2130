"""A small DICOMweb server on loopback that answers as a test needs: chosen QIDO-RS records
(malformed ones included), WADO-RS series as multipart, and slow servers (headers or body one
byte at a time, or nothing at all).

Orthanc (``orthanc.py``) is the real server for what a store does right; this one plays what a
real store does wrong, which Orthanc cannot be made to do::

    with DicomwebStub(series=[record, ...], instances={series_uid: [bytes, ...]}) as stub:
        make_client(stub.url)                    # http://127.0.0.1:<port>/dicom-web
        stub.trickle_s = 1.0                     # WADO-RS answers: one byte a second
        stub.trickle_body_only = True            # ... after headers sent at once
        stub.silent = True                       # WADO-RS: read the request, never answer

Nothing here imports pytest.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOUNDARY = "stub-boundary"


def qido_record(study_uid: str | None, series_uid: str | None, *, n: int | None = 1,
                modality: str = "CT") -> dict:
    """A QIDO-RS series record in DICOM JSON; ``None`` leaves an attribute out."""
    record: dict = {"00080060": {"vr": "CS", "Value": [modality]}}
    if study_uid is not None:
        record["0020000D"] = {"vr": "UI", "Value": [study_uid]}
    if series_uid is not None:
        record["0020000E"] = {"vr": "UI", "Value": [series_uid]}
    if n is not None:
        record["00201209"] = {"vr": "IS", "Value": [n]}
    return record


def multipart(parts: list[bytes]) -> bytes:
    body = b""
    for part in parts:
        body += (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n"
                 f"Content-Length: {len(part)}\r\n\r\n").encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


class DicomwebStub:
    def __init__(self, series: list | None = None, instances: dict[str, list[bytes]] | None = None):
        self.series = list(series or [])
        self.instances = dict(instances or {})
        self.trickle_s = 0.0  # seconds between bytes of a WADO-RS answer (headers and body)
        self.trickle_body_only = False  # the headers (and the first byte of the body) at once
        self.silent = False  # WADO-RS requests are read and never answered
        self.give_up_s = 10.0  # a slow or silent answer is cut after this long (a test must end)
        self.requests: list[str] = []
        self._stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                stub.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")[1:]  # after "dicom-web"
                if parts == ["series"]:
                    offset = int(query.get("offset", ["0"])[0])
                    limit = int(query.get("limit", ["1000"])[0])
                    self._json(stub.series[offset:offset + limit])
                elif len(parts) == 5 and parts[0] == "studies" and parts[4] == "instances":
                    self._json([{"00080018": {"vr": "UI", "Value": [f"1.2.3.{i}"]}}
                                for i in range(len(stub.instances.get(parts[3], [])))])
                elif len(parts) == 4 and parts[0] == "studies" and parts[2] == "series":
                    self._wado(parts[3])
                else:
                    self._send(404, b"", "text/plain")

            def _json(self, value) -> None:
                self._send(200, json.dumps(value).encode(), "application/dicom+json")

            def _wado(self, series_uid: str) -> None:
                if stub.silent:
                    stub._stop.wait(stub.give_up_s)
                    self.close_connection = True
                    return
                if series_uid not in stub.instances:
                    self._send(404, b"", "text/plain")
                    return
                body = multipart(stub.instances[series_uid])
                self._send(200, body, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                           trickle_s=stub.trickle_s)

            def _send(self, status: int, body: bytes, content_type: str, trickle_s: float = 0.0) -> None:
                head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                data = head + body
                try:
                    if not trickle_s:
                        self.wfile.write(data)
                        return
                    start = len(head) + 1 if stub.trickle_body_only else 0
                    self.wfile.write(data[:start])
                    self.wfile.flush()
                    until = time.monotonic() + stub.give_up_s
                    for i in range(start, len(data)):
                        if stub._stop.wait(trickle_s) or time.monotonic() > until:
                            self.close_connection = True
                            return
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                except OSError:  # the client gave up
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def __enter__(self) -> DicomwebStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        time.sleep(0)  # let handler threads see the stop
