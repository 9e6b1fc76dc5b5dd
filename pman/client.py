"""Typed async client of pman's API, for pfcon (and tests).

::

    async with PmanClient("http://127.0.0.1:5010/api/v1/") as pman:
        info = await pman.schedule(spec)
        while not info.status.is_terminal:
            info = await pman.get(info.jid, wait=30, known=info.status)

Every failure is a :class:`~pman.errors.PmanError`: error bodies are mapped
back by their ``code`` (then by HTTP status), connection failures and
timeouts become :class:`~pman.errors.PmanUnavailable`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from pman.errors import ERRORS_BY_CODE, ERRORS_BY_STATUS, PmanError, PmanUnavailable
from pman.schema import ErrorBody, JobInfo, JobSpec, JobStatus, ServerInfo

M = TypeVar("M", bound=BaseModel)

_JOB_LIST = TypeAdapter(list[JobInfo])
#: Extra seconds a long-poll's HTTP timeout allows beyond its ``wait``.
LONG_POLL_MARGIN = 30.0


def error_from_response(status: int, body: bytes) -> PmanError:
    """The PmanError an error response stands for (by body ``code``, then ``status``)."""
    message = body.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status}"
    code: str | None = None
    try:
        err = ErrorBody.model_validate_json(body)
        message, code = err.message, err.code
    except ValidationError:
        pass
    cls = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(status) or PmanError
    # keep the real status where the class only approximates it (e.g. a 500)
    return cls(message, status=status) if cls is PmanError else cls(message)


class PmanClient:
    """Client of one pman server.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:5010/api/v1/``.
        token: sent as ``Authorization: Bearer <token>`` when given.
        session: an aiohttp session to use (not closed by :meth:`close`);
            by default the client creates and owns one.
        timeout: total seconds per request; a long-poll gets ``wait`` +
            :data:`LONG_POLL_MARGIN` when that is longer.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if not self._owns_session:
                raise PmanError("client is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: str | None = None,
        params: dict[str, str] | None = None,
        seconds: float | None = None,
    ) -> bytes:
        """Send one request; returns the body of a 2xx answer.

        Raises:
            PmanError: the matching subclass for an error answer.
            PmanUnavailable: connection failure or timeout.
        """
        url = self.base_url + path
        headers = dict(self._headers)
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._get_session().request(
                method,
                url,
                data=json_body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds or self.timeout),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise error_from_response(resp.status, body)
                return body
        except PmanError:
            raise
        except TimeoutError as exc:
            raise PmanUnavailable(f"pman at {url} did not answer in time") from exc
        except aiohttp.ClientConnectionError as exc:
            raise PmanUnavailable(f"cannot reach pman at {url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise PmanError(f"request to pman at {url} failed: {exc}") from exc

    @staticmethod
    def _parse(model: type[M], body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise PmanError(f"unexpected answer from pman: {exc}") from exc

    async def server_info(self) -> ServerInfo:
        """GET ``/api/v1/``. Raises PmanError."""
        return self._parse(ServerInfo, await self._request("GET", ""))

    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Start a job. Raises JobConflict, InvalidJob, BackendError, PmanUnavailable."""
        body = await self._request("POST", "", json_body=spec.model_dump_json())
        return self._parse(JobInfo, body)

    async def get(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        """A job's info, with logs.

        With ``wait`` (seconds) and ``known``, long-polls: pman answers as soon
        as the status differs from ``known`` or after ``wait`` seconds (capped
        by the server's ``max_wait_seconds``).

        Raises:
            JobNotFound: no such job.
            PmanUnavailable: pman unreachable or too slow.
        """
        params: dict[str, str] = {}
        timeout = self.timeout
        if wait is not None and known is not None:
            params = {"wait": f"{wait:g}", "status": known.value}
            timeout = max(timeout, wait + LONG_POLL_MARGIN)
        body = await self._request(
            "GET", f"{quote(jid, safe='')}/", params=params or None, seconds=timeout
        )
        return self._parse(JobInfo, body)

    async def list_jobs(self) -> list[JobInfo]:
        """All jobs pman manages, without logs. Raises PmanError."""
        body = await self._request("GET", "jobs/")
        try:
            return _JOB_LIST.validate_json(body)
        except ValidationError as exc:
            raise PmanError(f"unexpected answer from pman: {exc}") from exc

    async def delete(self, jid: str) -> None:
        """Stop and remove a job. Raises JobNotFound, BackendError, PmanUnavailable."""
        await self._request("DELETE", f"{quote(jid, safe='')}/")
