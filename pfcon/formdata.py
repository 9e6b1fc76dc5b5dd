"""A streaming ``multipart/form-data`` reader for job submissions (RFC 7578).

pfcon relays the input zip of a submission straight to pfioh while it
arrives, so the reader is on the data plane's hot path. aiohttp's
``MultipartReader`` copies each chunk two or three times to find the
boundary (it joins the stream's buffered pieces, then glues each chunk onto
the previous one); this reader searches each piece of the request stream
as it arrives and hands the data on as views of it, copying only the few
bytes that straddle two pieces.

It understands what form clients send: a boundary from the Content-Type, an
optional preamble, parts with ``Content-Disposition: form-data; name=...``
headers, an optional epilogue. Part bodies are not decoded (no
``Content-Transfer-Encoding``; RFC 7578 §4.7 deprecates it). Anything else is
a :class:`MalformedForm`, a 400.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import Message

from aiohttp.multipart import (
    BadContentDispositionHeader,
    content_disposition_filename,
    parse_content_disposition,
)
from multidict import CIMultiDict

from pfcon.errors import InvalidJob

__all__ = ["MAX_HEADER_BYTES", "FormPart", "FormReader", "MalformedForm"]

#: Largest header block of one part (bytes); form parts carry a few short headers.
MAX_HEADER_BYTES = 16 * 1024
#: Longest preamble skipped before the first boundary (bytes).
MAX_PREAMBLE_BYTES = 64 * 1024
#: RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY_BYTES = 70

Read = Callable[[], Awaitable[bytes]]


class MalformedForm(InvalidJob):
    """The body is not well-formed ``multipart/form-data`` (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"malformed multipart body: {message}")


class FormReader:
    """Parts of a ``multipart/form-data`` body, one after the other.

    ``read`` returns the next piece of the body as it arrives (``b""`` at
    its end), e.g. ``request.content.readany``. Each part must be read to
    its end or :meth:`FormPart.release`\\ d before the next is asked for
    (:meth:`next_part` does that itself).
    """

    def __init__(self, read: Read, boundary: str) -> None:
        raw = boundary.encode("latin-1", "replace")
        if not 0 < len(raw) <= MAX_BOUNDARY_BYTES:
            raise MalformedForm("the boundary must be 1 to 70 characters")
        self._read = read
        self._dash = b"--" + raw
        #: What ends a part's body: CRLF, then the boundary line.
        self.delimiter = b"\r\n" + self._dash
        self._buf = b""
        self._pos = 0
        self._started = False
        self._finished = False
        self._current: FormPart | None = None

    @classmethod
    def for_content_type(cls, read: Read, content_type: str) -> FormReader:
        """A reader for a body sent with this ``Content-Type`` header (its ``boundary``)."""
        header = Message()
        header["Content-Type"] = content_type
        boundary = header.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise MalformedForm("the Content-Type declares no boundary")
        return cls(read, boundary)

    async def next_part(self) -> FormPart | None:
        """The next part, or None after the closing boundary.

        Raises :class:`MalformedForm` for a body that breaks the format or
        ends early.
        """
        if self._current is not None:
            await self._current.release()
            self._current = None
        if self._finished:
            return None
        if not self._started:
            await self._skip_preamble()
            self._started = True
        # At the boundary line: "--boundary", then "--" (the end) or CRLF.
        await self._want(len(self._dash) + 2, "a boundary")
        if not self._buf.startswith(self._dash, self._pos):
            raise MalformedForm("a part is not followed by its boundary")
        self._pos += len(self._dash)
        if self._buf.startswith(b"--", self._pos):
            self._finished = True  # the epilogue, if any, is ignored
            return None
        await self._skip_line_end()
        headers = await self._headers()
        self._current = FormPart(self, headers)
        return self._current

    # -- buffer ---------------------------------------------------------------

    def _available(self) -> int:
        return len(self._buf) - self._pos

    async def _more(self, what: str) -> bytes:
        piece = await self._read()
        if not piece:
            raise MalformedForm(f"the body ends inside {what}")
        return piece

    async def _want(self, n: int, what: str) -> None:
        """Make at least ``n`` bytes available (copying only what is left of the buffer)."""
        while self._available() < n:
            piece = await self._more(what)
            self._buf = self._buf[self._pos :] + piece
            self._pos = 0

    async def _skip_preamble(self) -> None:
        await self._want(len(self._dash), "the first boundary")
        if self._buf.startswith(self._dash):
            return
        while True:
            at = self._buf.find(self.delimiter)
            if at >= 0:
                self._pos = at + 2
                return
            if len(self._buf) > MAX_PREAMBLE_BYTES:
                raise MalformedForm("no boundary where the form should begin")
            piece = await self._more("the preamble (no boundary found)")
            self._buf += piece

    async def _skip_line_end(self) -> None:
        """After a boundary: optional spaces or tabs, then CRLF."""
        while True:
            await self._want(2, "a boundary line")
            if self._buf.startswith(b"\r\n", self._pos):
                self._pos += 2
                return
            if self._buf[self._pos] not in b" \t":
                raise MalformedForm("unexpected bytes after a boundary")
            self._pos += 1

    async def _headers(self) -> CIMultiDict[str]:
        await self._want(2, "a part's headers")
        if self._buf.startswith(b"\r\n", self._pos):  # a part without headers
            self._pos += 2
            return CIMultiDict()
        while (end := self._buf.find(b"\r\n\r\n", self._pos)) < 0:
            if self._available() > MAX_HEADER_BYTES:
                raise MalformedForm(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
            await self._want(self._available() + 1, "a part's headers")
        if end - self._pos > MAX_HEADER_BYTES:
            raise MalformedForm(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
        block = self._buf[self._pos : end]
        self._pos = end + 4
        headers: CIMultiDict[str] = CIMultiDict()
        for line in block.split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name.strip() or line[:1] in b" \t":
                raise MalformedForm(f"bad part header line {line[:80]!r}")
            headers.add(name.strip().decode("latin-1"), value.strip().decode("utf-8", "replace"))
        return headers

    # -- part bodies -------------------------------------------------------------

    async def _body_piece(self) -> tuple[bytes | memoryview, bool]:
        """The next piece of the current part's body and whether it is the last.

        Data is handed out as views of what arrived; at most the last
        ``len(delimiter) - 1`` bytes of a piece are held back, since they
        may begin the delimiter.
        """
        keep = len(self.delimiter) - 1
        while True:
            at = self._buf.find(self.delimiter, self._pos)
            if at >= 0:
                out = memoryview(self._buf)[self._pos : at]
                self._pos = at + 2  # the boundary line starts after the CRLF
                return out, True
            safe = len(self._buf) - keep
            if safe > self._pos:
                out = memoryview(self._buf)[self._pos : safe]
                self._pos = safe
                return out, False
            piece = await self._more("a part's body")
            tail = self._buf[self._pos :]
            junction = tail + piece[:keep]
            if len(piece) >= keep and junction.find(self.delimiter) < 0:
                # The delimiter does not start in the tail: hand the tail
                # out and search the new piece itself, uncopied.
                self._buf, self._pos = piece, 0
                if tail:
                    return tail, False
                continue
            self._buf, self._pos = tail + piece, 0  # rare: a few bytes, or a short piece


class FormPart:
    """One part of a form: its headers, and its body as a stream (never decoded)."""

    def __init__(self, reader: FormReader, headers: CIMultiDict[str]) -> None:
        self._reader = reader
        self.headers = headers
        self._done = False
        disposition = headers.get("Content-Disposition")
        self.name: str | None = None
        self.filename: str | None = None
        if disposition:
            # aiohttp warns about a bad header and returns no type; make it an error.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BadContentDispositionHeader)
                kind, params = parse_content_disposition(disposition)
            if kind is None:
                raise MalformedForm(f"bad Content-Disposition {disposition[:80]!r}")
            if kind == "form-data":
                self.name = params.get("name")
                self.filename = content_disposition_filename(params, "filename")

    @property
    def is_multipart(self) -> bool:
        """Whether the part is itself a multipart body (not accepted in forms)."""
        return self.headers.get("Content-Type", "").lower().startswith("multipart/")

    def charset(self, default: str = "utf-8") -> str:
        """The charset its Content-Type declares, else ``default``."""
        for param in self.headers.get("Content-Type", "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"')
        return default

    async def read_chunk(self) -> bytes | memoryview:
        """The next piece of the body (empty at its end). Raises :class:`MalformedForm`."""
        while not self._done:
            piece, last = await self._reader._body_piece()
            self._done = last
            if piece:
                return piece
        return b""

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        while piece := await self.read_chunk():
            yield piece

    async def release(self) -> None:
        """Read and drop the rest of the body."""
        while await self.read_chunk():
            pass
