"""Typed async client of pfcon's v5 ``/api/v1/jobs/`` API (what CUBE uses).

::

    async with PfconClient("http://127.0.0.1:5005/api/v1/",
                           username="pfcon", password="pfcon1234") as pfcon:
        submitted = await pfcon.submit(job, zip_chunks)
        info = await pfcon.status(job.jid, wait=30, known=submitted.compute.status)
        async for chunk in pfcon.iter_output(job.jid):
            ...

    # in-network (the site shares CUBE's storage): storage paths, no data
    submitted = await pfcon.submit_innetwork(job, InNetworkDirs(input_dirs=[...], output_dir=...))
    listing = await pfcon.output_listing(job.jid, job_output_path=...)

Tokens are obtained lazily and renewed once on a 401. Error bodies map back to
:mod:`pfcon.errors` by ``code``, then by status; connection failures and
timeouts raise :class:`PfconUnavailable`. No aiohttp exception escapes.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import jwt
from pydantic import BaseModel, ValidationError

from pfcon.errors import (
    ERRORS_BY_CODE,
    AuthError,
    JobNotFound,
    PfconError,
    PfconUnavailable,
    UpstreamError,
    error_for_status,
)
from pfcon.schema import (
    DATA_FILE_FIELD,
    INPUT_DIRS_FIELD,
    JID_PATTERN,
    OUTPUT_DIR_FIELD,
    AuthToken,
    ErrorBody,
    Health,
    InNetworkDirs,
    JobDescriptor,
    JobInfo,
    JobState,
    JobStatus,
    JobSubmitted,
    OutputListing,
    PfconServerInfo,
)

M = TypeVar("M", bound=BaseModel)

_JID = re.compile(JID_PATTERN)

#: Renew a token this many seconds before it expires, so no request races expiry.
TOKEN_RENEW_MARGIN = 60.0


class PfconClient:
    """Client of one pfcon server.

    ``base_url`` is the API root, e.g. ``"http://127.0.0.1:5005/api/v1/"``;
    ``auth_url`` defaults to ``base_url + "auth-token/"``. ``timeout`` (seconds)
    bounds each whole call, uploads and downloads included. A ``session`` given
    by the caller is used but not closed.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        auth_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 3600.0,
    ) -> None:
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._auth_url = auth_url or self._base + "auth-token/"
        self._username = username
        self._password = password
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token: str | None = None
        self._token_expiry: float | None = None

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
        """Close the session if this client created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    # -- authentication ---------------------------------------------------------

    async def login(self) -> str:
        """Obtain a fresh token (and cache it for later calls).

        Raises :class:`AuthError` for bad credentials, :class:`PfconUnavailable`
        when pfcon cannot be reached.
        """
        body = {"pfcon_user": self._username, "pfcon_password": self._password}
        async with self._request("POST", self._auth_url, json=body, auth=False) as resp:
            if resp.status == 400:
                raise AuthError(await _message(resp), status=400)
            token = (await _parse(resp, AuthToken)).token
        self._token = token
        self._token_expiry = _expiry(token)
        return token

    async def _auth_header(self) -> dict[str, str]:
        expired = self._token_expiry is not None and (
            self._token_expiry - TOKEN_RENEW_MARGIN <= time.time()
        )
        if self._token is None or expired:
            await self.login()
        return {"Authorization": f"Bearer {self._token}"}

    # -- API ----------------------------------------------------------------------

    async def health(self) -> bool:
        """True when pfcon answers its health check; False when it is down or unwell."""
        try:
            async with self._request("GET", self._base + "health/", auth=False) as resp:
                return (await _parse(resp, Health)).health == "OK"
        except PfconError:
            return False

    async def server_info(self) -> PfconServerInfo:
        """GET ``jobs/``: the site's description. Raises :class:`PfconError`."""
        return await self._call("GET", "jobs/", PfconServerInfo)

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        """Submit ``job`` with its input zip, streamed from ``data`` (never buffered).

        Returns the stored data's summary and the compute state (also for an
        idempotent retry of a job pfcon already has). Raises
        :class:`InvalidJob` (400/413/422: a bad field, archive or an
        unsatisfiable job), :class:`JobConflict`, :class:`AuthError`,
        :class:`PfconUnavailable`. The upload cannot be replayed, so the token
        is renewed before sending rather than after a 401.
        """
        form = _job_form(job, data)
        async with self._request("POST", self._base + "jobs/", data=form) as resp:
            return await _parse(resp, JobSubmitted)

    async def submit_innetwork(self, job: JobDescriptor, dirs: InNetworkDirs) -> JobSubmitted:
        """Submit ``job`` to an in-network site over dirs of the storage it shares with CUBE.

        No data is sent: ``dirs`` names the input dirs and the output dir as
        storage paths. Returns like :meth:`submit`. Raises :class:`InvalidJob`
        (400: a bad field, an unsafe, missing or non-directory path, or a site
        in zip mode; 422 from pman), :class:`JobConflict`, :class:`StorageError`,
        :class:`AuthError`, :class:`PfconUnavailable`.
        """
        form = _form_fields(job)
        for path in dirs.input_dirs:
            _append_field(form, INPUT_DIRS_FIELD, path)
        _append_field(form, OUTPUT_DIR_FIELD, dirs.output_dir)
        async with self._request("POST", self._base + "jobs/", data=form) as resp:
            return await _parse(resp, JobSubmitted)

    async def output_listing(self, jid: str, *, job_output_path: str) -> OutputListing:
        """The output files of a finished in-network job (paths relative to its output dir).

        The site removes symbolic links, special files and ``.chrislink``
        files from the output before listing it. Raises :class:`InvalidJob`
        (400: ``job_output_path`` is not the job's output dir, or the site is
        in zip mode), :class:`JobNotFound`, :class:`JobConflict` (the job has
        not ended), :class:`StorageError`, :class:`PfconUnavailable`.
        """
        return await self._call(
            "GET",
            f"jobs/{_quoted(jid)}/file/",
            OutputListing,
            params={"job_output_path": job_output_path},
        )

    async def status(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        """The job's compute state.

        With ``wait`` (seconds; the server caps it) the call returns as soon
        as the status differs from ``known`` (default: the status when the
        request arrives), or after ``wait``. Raises :class:`JobNotFound`,
        :class:`PfconUnavailable`.
        """
        params: dict[str, str] = {}
        if wait is not None:
            params["wait"] = str(wait)
        if known is not None:
            params["status"] = known.value
        state = await self._call("GET", f"jobs/{_quoted(jid)}/", JobState, params=params)
        return state.compute

    async def iter_output(self, jid: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream the job's output zip in chunks of at most ``chunk_size`` bytes.

        Raises :class:`JobNotFound` before the first chunk for an unknown job,
        :class:`PfconUnavailable` if the transfer breaks midway.
        """
        async with self._authorized("GET", f"jobs/{_quoted(jid)}/file/") as resp:
            if resp.status != 200:
                raise await _error(resp)
            try:
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PfconUnavailable(f"output of job {jid!r} broke off: {exc}") from exc

    async def delete(self, jid: str) -> None:
        """Delete the job and its data; deleting a job that is gone is not an error.

        Raises :class:`JobNotFound` only for an invalid job id,
        :class:`UpstreamError` (502) when pfioh or pman failed to delete their
        part, :class:`PfconUnavailable`, :class:`AuthError`.
        """
        async with self._authorized("DELETE", f"jobs/{_quoted(jid)}/") as resp:
            if resp.status != 204:
                raise await _error(resp)

    # -- plumbing -----------------------------------------------------------------

    async def _call(
        self, method: str, path: str, model: type[M], *, params: Mapping[str, str] | None = None
    ) -> M:
        async with self._authorized(method, path, params=params) as resp:
            return await _parse(resp, model)

    def _authorized(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> _Exchange:
        """A bodiless request with the token, renewed and repeated once on a 401."""
        return _Exchange(
            self, method, self._base + path, token=True, retry_auth=True, params=params
        )

    def _request(self, method: str, url: str, *, auth: bool = True, **kwargs: Any) -> _Exchange:
        """A request sent once, with the token when ``auth``."""
        return _Exchange(self, method, url, token=auth, retry_auth=False, **kwargs)


class _Exchange:
    """One HTTP exchange as an async context manager yielding the response.

    Transport failures become :class:`PfconUnavailable`. With ``retry_auth``
    (only for requests without a body, which can be replayed) a 401 renews
    the token and repeats the request once.
    """

    def __init__(
        self,
        client: PfconClient,
        method: str,
        url: str,
        *,
        token: bool,
        retry_auth: bool,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self._method = method
        self._url = url
        self._token = token
        self._retry_auth = retry_auth
        self._kwargs = kwargs
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        resp = await self._send()
        if resp.status == 401 and self._retry_auth:
            resp.release()
            await self._client.login()
            resp = await self._send()
        self._resp = resp
        return resp

    async def _send(self) -> aiohttp.ClientResponse:
        headers = await self._client._auth_header() if self._token else {}
        try:
            return await self._client._http().request(
                self._method,
                self._url,
                headers=headers,
                timeout=self._client._timeout,
                **self._kwargs,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PfconUnavailable(f"pfcon unreachable at {self._url}: {exc}") from exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._resp is not None:
            self._resp.release()


def _job_form(job: JobDescriptor, data: AsyncIterable[bytes]) -> aiohttp.MultipartWriter:
    """The multipart form of a submission: every field first, then ``data_file``.

    Fields come first so pfcon can stream the zip straight on to pfioh.
    """
    form = _form_fields(job)
    part = form.append(data, {"Content-Type": "application/zip"})
    part.set_content_disposition("form-data", name=DATA_FILE_FIELD, filename=f"{job.jid}.zip")
    return form


def _form_fields(job: JobDescriptor) -> aiohttp.MultipartWriter:
    """A multipart form holding the fields of ``job`` (list fields repeat their name)."""
    form = aiohttp.MultipartWriter("form-data")
    for name, value in job.model_dump(mode="json").items():
        for item in value if isinstance(value, list) else [value]:
            _append_field(form, name, str(item))
    return form


def _append_field(form: aiohttp.MultipartWriter, name: str, value: str) -> None:
    part = form.append(value)
    part.set_content_disposition("form-data", name=name)


async def _parse(resp: aiohttp.ClientResponse, model: type[M]) -> M:
    """The response body as ``model``, or the error it carries, raised."""
    if resp.status >= 300:
        raise await _error(resp)
    try:
        return model.model_validate_json(await resp.read())
    except ValidationError as exc:
        raise UpstreamError(f"pfcon sent an unexpected {model.__name__} body") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PfconUnavailable(f"pfcon reply broke off: {exc}") from exc


async def _message(resp: aiohttp.ClientResponse) -> str:
    """The ``message`` of an error body, or the status line when there is none."""
    try:
        return ErrorBody.model_validate_json(await resp.read()).message
    except (ValidationError, aiohttp.ClientError, TimeoutError):
        return f"HTTP {resp.status} {resp.reason or ''}".strip()


async def _error(resp: aiohttp.ClientResponse) -> PfconError:
    """The :mod:`pfcon.errors` exception an error response stands for (by code, then status)."""
    try:
        body = ErrorBody.model_validate_json(await resp.read())
        message, code = body.message, body.code
    except (ValidationError, aiohttp.ClientError, TimeoutError):
        message, code = f"HTTP {resp.status} {resp.reason or ''}".strip(), ""
    cls = ERRORS_BY_CODE.get(code) or error_for_status(resp.status)
    return cls(message, status=resp.status)


def _quoted(jid: str) -> str:
    """A job id as one URL path segment.

    Raises :class:`JobNotFound` for an id no job can have (``..``, ``a/b``),
    which would otherwise change the route.
    """
    if not _JID.match(jid):
        raise JobNotFound(f"no job {jid!r} (not a valid job id)")
    return quote(jid, safe="")


def _expiry(token: str) -> float | None:
    """The ``exp`` of a token (seconds since the epoch), read without verifying it.

    Only used to renew in time; the server verifies the signature.
    """
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        return None
    return float(exp) if isinstance(exp, int | float) else None
