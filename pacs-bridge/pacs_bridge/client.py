"""Typed async client of the bridge's REST API (:mod:`pacs_bridge.api`).

The ``chris pacs`` commands and other services use this client, never the
server's modules. Answers are parsed into the models of
:mod:`pacs_bridge.schema`. Errors are translated here, at the edge:

- an error answer ``{"message", "code"}`` becomes the
  :mod:`pacs_bridge.errors` class of its ``code`` (``not_found`` →
  :class:`~pacs_bridge.errors.NotFound`, ``dicom`` →
  :class:`~pacs_bridge.errors.DicomNetworkError`, ...), its root otherwise;
- a connection failure, a timeout or an answer that is not the API's becomes
  :class:`~pacs_bridge.errors.BridgeUnreachable`.

Example::

    async with PacsBridgeClient("http://127.0.0.1:4005/") as bridge:
        started = await bridge.retrieve("orthanc", RetrieveIn(StudyInstanceUID=uid))
        async for event in bridge.retrieve_events(started.id):
            print(event.status.completed, event.status.remaining)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from pacs_bridge.errors import (
    BridgeUnreachable,
    DicomNetworkError,
    InvalidDicom,
    InvalidRequest,
    NotFound,
    PacsBridgeError,
    RegistrationError,
    RoutingError,
    StateError,
    StorageFull,
)
from pacs_bridge.schema import (
    BridgeStatus,
    ExportIn,
    ExportOut,
    PacsService,
    QueryIn,
    QueryLevel,
    QueryOut,
    RetrieveEvent,
    RetrieveIn,
    RetrieveState,
    RetrieveStatus,
)

M = TypeVar("M", bound=BaseModel)

#: The REST API ``chris up`` serves (``StackConfig.pacs_api_port``).
DEFAULT_URL = "http://127.0.0.1:4005/"

#: Error codes of the API → the class the client raises ("unavailable" is shared by the
#: registration and routing classes; either way the bridge could not reach CUBE).
ERRORS: dict[str, type[PacsBridgeError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        StorageFull,
        InvalidDicom,
        RegistrationError,
        RoutingError,
        DicomNetworkError,
        StateError,
    )
}

_SERVICES = TypeAdapter(list[PacsService])
_RETRIEVES = TypeAdapter(list[RetrieveStatus])


def error_from(status: int, body: str) -> PacsBridgeError:
    """The exception for an error answer of the API (``status`` ≥ 400, ``body`` its text)."""
    try:
        data = json.loads(body)
        message, code = str(data["message"]), str(data.get("code", ""))
    except (ValueError, TypeError, KeyError):
        return BridgeUnreachable(f"the bridge answered {status} and not as its API: {body[:300]}")
    return ERRORS.get(code, PacsBridgeError)(message)


class PacsBridgeClient:
    """A session with one bridge's REST API; ``async with`` it, or call :meth:`close`.

    ``url`` is the bridge's root (``http://host:4005/``); ``timeout`` bounds
    each call except the event stream, in seconds (a C-FIND of a large PACS
    may take a while, so it is generous).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 300.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self._own = session is None
        self._session = session or aiohttp.ClientSession()

    async def __aenter__(self) -> PacsBridgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client made it."""
        if self._own:
            await self._session.close()

    # -- transport -------------------------------------------------------------

    async def _call(self, method: str, path: str, body: BaseModel | None = None) -> str:
        url = self.url + path
        data = None if body is None else body.model_dump_json(exclude_none=True)
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/json"} if data is not None else None,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10),
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BridgeUnreachable(
                f"the PACS bridge at {self.url} is unreachable: {str(exc) or type(exc).__name__}"
            ) from exc
        if resp.status >= 400:
            raise error_from(resp.status, text)
        return text

    async def _model(
        self, model: type[M], method: str, path: str, body: BaseModel | None = None
    ) -> M:
        text = await self._call(method, path, body)
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            raise BridgeUnreachable(f"unexpected answer to {method} {path}: {exc}") from exc

    async def _adapted(self, adapter: TypeAdapter[Any], path: str) -> Any:
        text = await self._call("GET", path)
        try:
            return adapter.validate_json(text)
        except ValidationError as exc:
            raise BridgeUnreachable(f"unexpected answer to GET {path}: {exc}") from exc

    # -- services --------------------------------------------------------------

    async def services(self) -> list[PacsService]:
        """Every PACS service, by name."""
        services: list[PacsService] = await self._adapted(_SERVICES, "api/v1/services/")
        return services

    async def service(self, name: str) -> PacsService:
        """The PACS service ``name``.

        Raises:
            NotFound: no such service.
        """
        return await self._model(PacsService, "GET", f"api/v1/services/{name}/")

    async def put_service(self, service: PacsService) -> PacsService:
        """Add or replace a PACS service (by its name).

        Raises:
            InvalidRequest: the bridge refused the definition.
        """
        return await self._model(PacsService, "PUT", f"api/v1/services/{service.name}/", service)

    async def delete_service(self, name: str) -> None:
        """Forget the PACS service ``name``.

        Raises:
            NotFound: no such service.
        """
        await self._call("DELETE", f"api/v1/services/{name}/")

    async def echo(self, name: str) -> None:
        """C-ECHO the PACS service ``name``.

        Raises:
            NotFound: no such service.
            DicomNetworkError: the PACS refused the association or did not answer.
        """
        await self._call("POST", f"api/v1/services/{name}/echo/")

    # -- query/retrieve --------------------------------------------------------

    async def query(
        self, name: str, level: QueryLevel | str = QueryLevel.STUDY, **match: str
    ) -> list[dict[str, str]]:
        """C-FIND at ``level`` on the service ``name``; ``match`` maps DICOM keywords to values.

        Raises:
            InvalidRequest: an unknown keyword or level.
            NotFound: no such service.
            DicomNetworkError: the PACS refused or failed the query.
        """
        try:
            body = QueryIn(level=QueryLevel(level), query=match)
        except ValueError as exc:
            raise InvalidRequest(f"a bad query: {exc}") from exc
        out = await self._model(QueryOut, "POST", f"api/v1/services/{name}/query/", body)
        return out.results

    async def retrieve(self, name: str, what: RetrieveIn) -> RetrieveStatus:
        """Start a C-MOVE (or C-GET) from the service ``name``; its status at the start.

        Raises:
            NotFound: no such service.
        """
        return await self._model(RetrieveStatus, "POST", f"api/v1/services/{name}/retrieve/", what)

    async def retrieve_status(self, ident: int) -> RetrieveStatus:
        """The status of retrieve ``ident``.

        Raises:
            NotFound: no such retrieve.
        """
        return await self._model(RetrieveStatus, "GET", f"api/v1/retrieves/{ident}/")

    async def retrieves(self) -> list[RetrieveStatus]:
        """Every retrieve the bridge keeps (those of earlier runs too), oldest first."""
        found: list[RetrieveStatus] = await self._adapted(_RETRIEVES, "api/v1/retrieves/")
        return found

    async def retrieve_events(self, ident: int) -> AsyncIterator[RetrieveEvent]:
        """The progress of retrieve ``ident`` as it comes: one event per change, to the end.

        The stream of ``/api/v1/retrieves/{id}/events/`` (server-sent events);
        the last event is the one whose state is not ``running``. An ended
        retrieve yields one event.

        Raises:
            NotFound: no such retrieve.
            BridgeUnreachable: the bridge went away before the retrieve ended.
        """
        url = f"{self.url}api/v1/retrieves/{ident}/events/"
        try:
            # no timeout: a retrieve may run for hours with no change to report; a
            # bridge that stops closes the connection, which ends the stream early
            async with self._session.get(
                url,
                headers={"Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as resp:
                if resp.status >= 400:
                    raise error_from(resp.status, await resp.text())
                last: RetrieveEvent | None = None
                async for event in _sse(resp.content):
                    last = event
                    yield event
                if last is None or last.event is RetrieveState.RUNNING:
                    raise BridgeUnreachable(f"the event stream of retrieve {ident} ended early")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BridgeUnreachable(
                f"the PACS bridge at {self.url} is unreachable: {str(exc) or type(exc).__name__}"
            ) from exc

    async def wait_retrieve(self, ident: int) -> RetrieveStatus:
        """Follow retrieve ``ident`` to its end; its final status (see :meth:`retrieve_events`)."""
        final: RetrieveStatus | None = None
        async for event in self.retrieve_events(ident):
            final = event.status
        assert final is not None  # retrieve_events raises rather than end with nothing
        return final

    # -- export and status -----------------------------------------------------

    async def export(self, name: str, files: list[str], study_from: str | None = None) -> ExportOut:
        """C-STORE stored files (paths relative to the storage root) to the service ``name``.

        Raises:
            InvalidRequest: no files, or a path outside the storage.
            NotFound: no such service.
            DicomNetworkError: the PACS refused the association.
        """
        try:
            body = ExportIn(files=files, study_from=study_from)
        except ValidationError as exc:
            raise InvalidRequest(f"a bad export: {exc}") from exc
        return await self._model(ExportOut, "POST", f"api/v1/services/{name}/export/", body)

    async def status(self) -> BridgeStatus:
        """The receiver's counts, the registrations and the routing record."""
        return await self._model(BridgeStatus, "GET", "api/v1/status/")


async def _sse(stream: aiohttp.StreamReader) -> AsyncIterator[RetrieveEvent]:
    """Parse a server-sent event stream (the WHATWG format) into retrieve events.

    Lines ``event:`` and ``data:`` accumulate until a blank line ends the
    event; comments (``:``) and other fields are ignored.
    """
    name, data = "", list[str]()
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield _event(name, "\n".join(data))
            name, data = "", list[str]()
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield _event(name, "\n".join(data))


def _event(name: str, data: str) -> RetrieveEvent:
    try:
        status = RetrieveStatus.model_validate_json(data)
        return RetrieveEvent(event=RetrieveState(name or status.state), status=status)
    except (ValidationError, ValueError) as exc:
        raise BridgeUnreachable(f"a bad retrieve event {name!r}: {exc}") from exc
