"""Registration of complete series: into CUBE's ``pacsfiles`` API, or a JSON-lines registry.

:class:`Registrar` is the abstract base; :class:`CubeRegistrar` registers each
series with ONE bulk POST to CUBE (ChRIS #546: one POST per instance was the
bottleneck); :class:`JsonlRegistry` appends one line per registration to a
file, for a bridge without CUBE (the embedded default) and for tools that
read the registrations back (:meth:`JsonlRegistry.series`).
"""

from __future__ import annotations

import asyncio
import base64
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from pydantic import ValidationError

from pacs_bridge.errors import PacsBridgeError, RegistrationError, RegistrationUnavailable
from pacs_bridge.schema import (
    AuthToken,
    PacsFileIn,
    PacsFilesIn,
    PacsFilesRegistered,
    SeriesRegistration,
)
from pacs_bridge.settings import BridgeSettings


def cube_session(*, timeout: float = 60.0) -> aiohttp.ClientSession:
    """An HTTP session for CUBE's API (DRF JSON); credentials go per request (:class:`CubeAuth`)."""
    return aiohttp.ClientSession(
        headers={"Accept": "application/json"}, timeout=aiohttp.ClientTimeout(total=timeout)
    )


class CubeAuth:
    """The ``Authorization`` of one CUBE client's requests.

    A token is sent as is. A username and password are exchanged once for the
    user's token at ``auth-token/`` (again after :meth:`forget`), because CUBE
    checks a password with scrypt on every request that carries one (~50
    CPU-ms, more than the rest of a 200-file registration); a CUBE without
    ``auth-token/`` (404) gets HTTP Basic on every request instead. Login
    failures raise ``unavailable`` (connection, timeout, 5xx) or ``refused``
    (4xx, an unexpected answer): the calling client's own exceptions.
    """

    def __init__(
        self,
        api_url: str,
        session: aiohttp.ClientSession,
        *,
        token: str | None,
        username: str | None,
        password: str | None,
        unavailable: type[PacsBridgeError],
        refused: type[PacsBridgeError],
    ) -> None:
        self._url = api_url + "auth-token/"
        self._session = session
        self._token = token
        self._credentials = (
            (username, password or "") if username is not None and not token else None
        )
        self._basic = False
        self._login = asyncio.Lock()
        self._unavailable = unavailable
        self._refused = refused

    async def header(self) -> dict[str, str]:
        """The Authorization header for the next request (logs in once if need be)."""
        if self._credentials is not None and not self._basic:
            async with self._login:  # concurrent requests: one login
                if self._token is None:
                    self._token = await self._fetch_token(*self._credentials)
        if self._token:
            return {"Authorization": f"Token {self._token}"}
        if self._credentials is not None:  # a CUBE without auth-token/
            # Built by hand: aiohttp 3.14 deprecates BasicAuth and the auth parameter.
            pair = ":".join(self._credentials).encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    def forget(self) -> bool:
        """Drop a token obtained by logging in (True), so the next request logs in again."""
        if self._credentials is None or self._basic or self._token is None:
            return False
        self._token = None
        return True

    async def _fetch_token(self, username: str, password: str) -> str | None:
        """The user's token from ``auth-token/``; None where CUBE has no such endpoint."""
        try:
            async with self._session.post(
                self._url, json={"username": username, "password": password}
            ) as resp:
                text = await resp.text()
                if resp.status == 404:
                    self._basic = True
                    return None
                if resp.status >= 500:
                    raise self._unavailable(f"CUBE answered {resp.status}: {text[:500]}")
                if resp.status >= 400:
                    raise self._refused(f"CUBE refused the login ({resp.status}): {text[:500]}")
                return AuthToken.model_validate_json(text).token
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(f"CUBE at {self._url} unreachable: {exc}") from exc
        except ValidationError as exc:
            raise self._refused(f"unexpected answer from CUBE: {exc}") from exc


class CubeHttp:
    """Requests to CUBE's API as one user: the session and its :class:`CubeAuth`.

    The bridge's CUBE clients (the registrar, routing's feed client) share
    it, each judging CUBE's answers with its own exceptions, given here as
    ``unavailable`` (connection, timeout, a failed login's 5xx) and
    ``refused`` (a refused login).
    """

    def __init__(
        self,
        api_url: str,
        *,
        token: str | None,
        username: str | None,
        password: str | None,
        timeout: float,
        unavailable: type[PacsBridgeError],
        refused: type[PacsBridgeError],
    ) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._session = cube_session(timeout=timeout)
        # a password is traded for a token once: each request carrying one costs CUBE a scrypt
        self._auth = CubeAuth(
            self.api_url,
            self._session,
            token=token,
            username=username,
            password=password,
            unavailable=unavailable,
            refused=refused,
        )
        self._unavailable = unavailable

    async def send(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, str]:
        """One request (``url`` absolute, or relative to the API root): status and body.

        A token this client logged in for and CUBE no longer accepts (401)
        is renewed once. Raises ``unavailable`` on a connection failure or a
        timeout; the status is the caller's to judge.
        """
        if not url.startswith(("http://", "https://")):
            url = self.api_url + url
        try:
            for attempt in (1, 2):
                sent = {**(headers or {}), **await self._auth.header()}
                async with self._session.request(method, url, headers=sent, **kwargs) as resp:
                    text = await resp.text()
                if not (resp.status == 401 and attempt == 1 and self._auth.forget()):
                    break  # else the token we logged in for was revoked: log in again
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(f"CUBE at {url} unreachable: {exc}") from exc
        return resp.status, text

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()


class Registrar(ABC):
    """Where complete series are registered."""

    @abstractmethod
    async def register(self, registration: SeriesRegistration) -> None:
        """Register the files of one series in one call.

        Raises:
            RegistrationUnavailable: the backend is unreachable (retrying may succeed).
            RegistrationError: the backend refused the registration.
        """

    async def close(self) -> None:  # noqa: B027 - most registrars hold nothing
        """Release what the registrar holds."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class JsonlRegistry(Registrar):
    """Registrations as JSON lines in one file (appends are atomic under a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def register(self, registration: SeriesRegistration) -> None:
        """Append ``registration`` as one line."""
        line = registration.model_dump_json() + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                raise RegistrationError(f"cannot write {self.path}: {exc}") from exc

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    def registrations(self) -> list[SeriesRegistration]:
        """Every registration so far, oldest first (an absent file: none).

        Raises:
            RegistrationError: a line is not a registration.
        """
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(SeriesRegistration.model_validate_json(line))
            except ValidationError as exc:
                raise RegistrationError(f"{self.path}:{n} is not a registration: {exc}") from exc
        return out

    def series(self) -> dict[tuple[str, str], list[str]]:
        """Registered files by (pacs_identifier, SeriesInstanceUID)."""
        out: dict[tuple[str, str], list[str]] = {}
        for r in self.registrations():
            out.setdefault((r.pacs_identifier, r.meta.SeriesInstanceUID), []).extend(r.files)
        return out


class CubeRegistrar(Registrar):
    """CUBE's bulk registration, ``POST <api>/pacs/files/`` (staff credentials).

    ``api_url`` is CUBE's API root with the trailing slash
    (``http://cube:8000/api/v1/``). Authenticate with a token, or a username
    and password: those are exchanged once for the user's token at
    ``auth-token/`` (again if CUBE stops accepting it), because CUBE checks a
    password with scrypt on every request that carries one (~50 CPU-ms here,
    twice the rest of a 200-file registration, on CUBE's event loop); a CUBE
    without ``auth-token/`` (404) gets HTTP Basic on every request instead.
    """

    def __init__(
        self,
        api_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._http = CubeHttp(
            api_url,
            token=token,
            username=username,
            password=password,
            timeout=timeout,
            unavailable=RegistrationUnavailable,
            refused=RegistrationError,
        )
        self.api_url = self._http.api_url

    async def register(self, registration: SeriesRegistration) -> None:
        """POST every file of the series at once."""
        meta = registration.meta.model_dump()
        body = PacsFilesIn(
            pacs_name=registration.pacs_identifier,
            files=[PacsFileIn(path=p, **meta) for p in registration.files],
        )
        await self.register_files(body)

    async def register_files(self, body: PacsFilesIn) -> PacsFilesRegistered:
        """One bulk registration; CUBE's answer.

        Raises:
            RegistrationUnavailable: connection failure, timeout or a 5xx.
            RegistrationError: a 4xx (bad path, unknown user, already registered).
        """
        status, text = await self._http.send(
            "POST",
            "pacs/files/",
            data=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        if status >= 500:
            raise RegistrationUnavailable(f"CUBE answered {status}: {text[:500]}")
        if status >= 400:
            raise RegistrationError(f"CUBE refused the registration ({status}): {text[:500]}")
        try:
            return PacsFilesRegistered.model_validate_json(text)
        except ValidationError as exc:
            raise RegistrationError(f"unexpected answer from CUBE: {exc}") from exc

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()


def make_registrar(settings: BridgeSettings) -> Registrar:
    """CUBE's registrar when ``cube_url`` is set, else the JSON-lines registry."""
    if settings.cube_url:
        return CubeRegistrar(
            settings.cube_url,
            token=settings.cube_token.get_secret_value() if settings.cube_token else None,
            username=settings.cube_username,
            password=settings.cube_password.get_secret_value() if settings.cube_password else None,
        )
    return JsonlRegistry(settings.resolved_registry_file())
