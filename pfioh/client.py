"""Typed async client of pfioh (what pfcon uses).

::

    async with PfiohClient("http://127.0.0.1:5055/api/v1/", token=...) as pfioh:
        report = await pfioh.push_incoming("chris-jid-3", zip_chunks)
        async for chunk in pfioh.iter_outgoing("chris-jid-3"):
            ...
        await pfioh.delete("chris-jid-3")

Every failure is a :class:`pfioh.errors.PfiohError`: error bodies are mapped
back by their ``code`` (then by HTTP status) to :class:`JobNotFound`,
:class:`Conflict`, :class:`UnsafeArchive`, :class:`CorruptArchive`,
:class:`PayloadTooLarge`, :class:`Unauthorized`, ...; connection failures,
timeouts and broken transfers become :class:`PfiohUnavailable`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from pfioh.errors import (
    ArchiveError,
    BadRequest,
    Conflict,
    CorruptArchive,
    IncompleteUpload,
    InsufficientStorage,
    IntegrityError,
    InvalidKey,
    JobNotFound,
    PayloadTooLarge,
    PfiohError,
    PfiohUnavailable,
    StorageError,
    Unauthorized,
    UnexpectedResponse,
    UnsafeArchive,
    UnsupportedMediaType,
)
from pfioh.schema import KEY_PATTERN, ErrorBody, IncomingReport, JobDataStatus, ServerInfo

_KEY_RE = re.compile(KEY_PATTERN)
# Most of an error body read; a real one is a few hundred bytes.
_MAX_ERROR_BODY = 64 * 1024

_BY_CODE: dict[str, type[PfiohError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidKey,
        IncompleteUpload,
        Unauthorized,
        JobNotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        StorageError,
        ArchiveError,
        UnsafeArchive,
        CorruptArchive,
        IntegrityError,
        InsufficientStorage,
    )
}
_BY_STATUS: dict[int, type[PfiohError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: JobNotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: UnsafeArchive,
    503: PfiohUnavailable,
    507: InsufficientStorage,
}
# Transport failures: refused/reset connections, timeouts, broken bodies.
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


async def _raise_for_response(resp: aiohttp.ClientResponse) -> None:
    """Raise the pfioh exception an error response stands for (nothing if < 400)."""
    if resp.status < 400:
        return
    raw = await resp.content.read(_MAX_ERROR_BODY)
    try:
        body = ErrorBody.model_validate_json(raw)
        message, code = body.message, body.code
    except ValidationError:
        message = raw.decode("utf-8", "replace").strip() or (resp.reason or "")
        code = ""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(resp.status)
    if cls is None:
        raise UnexpectedResponse(f"pfioh answered HTTP {resp.status}: {message}")
    raise cls(message)


class PfiohClient:
    """Client of one pfioh server at ``base_url`` (e.g. ``http://127.0.0.1:5055/api/v1/``).

    ``token`` is sent as a bearer token. A given ``session`` is used and
    left open; otherwise the client creates its own on first use and closes
    it in :meth:`close`. ``timeout`` bounds each whole request, in seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 3600.0,
    ) -> None:
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> PfiohClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside a running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _job_url(self, jid: str, *rest: str) -> str:
        """URL of a job resource; raises :class:`InvalidKey` for a bad ``jid``.

        Checked here too, because a jid such as ``..`` would otherwise be
        folded away by URL normalisation and address another resource.
        """
        if not _KEY_RE.fullmatch(jid):
            raise InvalidKey(f"invalid job key {jid!r}: must match {KEY_PATTERN}")
        return self._base + "".join(quote(p, safe="") + "/" for p in ("jobs", jid, *rest))

    async def _request_json(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> bytes:
        """Send a request, raise for an error status, return the body."""
        try:
            async with self._http().request(
                method,
                url,
                headers={**self._headers, **(headers or {})},
                timeout=self._timeout,
                **kwargs,
            ) as resp:
                await _raise_for_response(resp)
                return await resp.read()
        except _TRANSPORT_ERRORS as exc:
            raise PfiohUnavailable(f"pfioh at {self._base} unreachable: {exc!r}") from exc

    async def server_info(self) -> ServerInfo:
        """The server's version and storebase."""
        raw = await self._request_json("GET", self._base)
        return ServerInfo.model_validate_json(raw)

    async def push_incoming(
        self, jid: str, body: AsyncIterable[bytes | memoryview]
    ) -> IncomingReport:
        """Upload a job's input: ``body`` yields the zip archive's bytes.

        The body is streamed with chunked transfer encoding, never held in
        memory. Raises :class:`Conflict` if the job already has input,
        :class:`UnsafeArchive` / :class:`CorruptArchive` for a refused
        archive, :class:`PayloadTooLarge`, :class:`InvalidKey`, or
        :class:`PfiohUnavailable`.
        """
        raw = await self._request_json(
            "POST",
            self._job_url(jid, "incoming"),
            data=body,
            # A zip's length is not known before it is built.
            chunked=True,
            headers={"Content-Type": "application/zip"},
        )
        return IncomingReport.model_validate_json(raw)

    async def iter_outgoing(self, jid: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream the zip of a job's ``outgoing/`` in chunks of at most ``chunk_size`` bytes.

        Raises :class:`JobNotFound` before yielding anything if pfioh holds
        no output for the job; :class:`PfiohUnavailable` if the transfer
        fails or is cut short (then the bytes already yielded are no
        complete zip).
        """
        try:
            async with self._http().get(
                self._job_url(jid, "outgoing"), headers=self._headers, timeout=self._timeout
            ) as resp:
                await _raise_for_response(resp)
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk
        except _TRANSPORT_ERRORS as exc:
            raise PfiohUnavailable(f"output transfer from pfioh failed: {exc!r}") from exc

    async def job_status(self, jid: str) -> JobDataStatus:
        """What pfioh holds for the job; raises :class:`JobNotFound` if nothing."""
        raw = await self._request_json("GET", self._job_url(jid))
        return JobDataStatus.model_validate_json(raw)

    async def delete(self, jid: str) -> None:
        """Delete the job's data on pfioh; succeeds also when there is none."""
        await self._request_json("DELETE", self._job_url(jid))
