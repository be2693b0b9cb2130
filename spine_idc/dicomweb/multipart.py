"""multipart/related DICOM bodies: read one as it streams (WADO-RS), write one (STOW-RS).

Reading does not go through dicomweb-client's decoder: it ignores the closing boundary and the
parts' ``Content-Length``, and Orthanc ends a WADO-RS series response by closing the connection
(no ``Content-Length``, no chunked encoding), so a server dying mid-series would look like a
complete, shorter series whose last file is cut.  :func:`read_parts` holds each part to its
length and raises :class:`Truncated` for a body without its closing boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import requests

CHUNK_BYTES = 1 << 20


class Truncated(Exception):
    """The body ended before the closing boundary, or inside a part."""


class BadMultipart(Exception):
    """The body is not a multipart/related DICOM answer."""


def encode(data: bytes) -> tuple[bytes, str]:
    """One DICOM file as a multipart/related body, and that body's Content-Type."""
    boundary = uuid.uuid4().hex
    while boundary.encode() in data:  # pragma: no cover - 2**-122
        boundary = uuid.uuid4().hex
    body = b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                     data, f"\r\n--{boundary}--\r\n".encode()))
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def read_parts(response: requests.Response) -> Iterator[bytes]:
    """The parts of a ``multipart/related`` body, one at a time, checking that none is cut.

    Each part's ``Content-Length`` header, where the server sends one (Orthanc does), is held
    to; the body must end with the closing delimiter ``--boundary--``.
    """
    media_type, params = _content_type(response.headers.get("Content-Type", ""))
    if media_type == "application/dicom":  # one instance, not wrapped (some servers do this)
        yield response.content
        return
    if media_type != "multipart/related" or not params.get("boundary"):
        raise BadMultipart(
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
                raise BadMultipart(f"a part is longer than its Content-Length {length}")
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
    """Bytes from an iterator of chunks, consumed from the front; raises Truncated at the end."""

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
        raise Truncated(f"the response ended early ({left} bytes of an unfinished part)")

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
