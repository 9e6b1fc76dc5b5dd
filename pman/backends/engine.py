"""What the docker and swarm backends share: a Docker engine connection.

Both talk to a Docker engine through the (synchronous) docker library, so
every call runs in a worker thread and its exceptions are translated here,
once, into pman's (:func:`translate`). Both pull missing images from a
registry with the credentials of the settings, and both enforce
``max_run_seconds`` with timers in pman, re-armed from the engine's records
after a restart (the engine has no run-time limit of its own).
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from pman.backends.base import Backend
from pman.backends.vocabulary import MAX_RUN_MESSAGE
from pman.errors import BackendError, InvalidJob, JobConflict, JobNotFound, PmanError
from pman.schema import JobId
from pman.settings import PmanSettings

log = logging.getLogger(__name__)

#: The max run time a job was started with, in seconds.
LABEL_MAX_RUN = "org.chrisproject.max-run-seconds"

T = TypeVar("T")


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn docker and transport errors inside the block into pman errors."""
    try:
        yield
    except PmanError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise InvalidJob(f"{what}: image not found ({exc.explanation})") from exc
    except docker.errors.NotFound as exc:
        raise JobNotFound(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise JobConflict(f"{what}: {exc.explanation}") from exc
        raise BackendError(f"{what}: docker engine error: {exc.explanation}") from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise BackendError(f"{what}: docker engine unreachable: {exc}") from exc


def parse_time(value: str | None) -> datetime | None:
    """A Docker timestamp as a datetime; None for missing or Docker's zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        # Python >= 3.11 reads Docker's nanoseconds (truncated) and the Z suffix
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def split_image(image: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` → (repository, tag or digest) for a pull."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


class EngineBackend(Backend):
    """A backend on a Docker engine (``docker.from_env()`` unless a factory is given)."""

    def __init__(
        self,
        settings: PmanSettings,
        *,
        client_factory: Callable[[], docker.DockerClient] = docker.from_env,
    ) -> None:
        super().__init__(settings)
        self._client_factory = client_factory
        self._docker: docker.DockerClient | None = None
        self._timers: dict[JobId, asyncio.Task[None]] = {}

    @property
    def _client(self) -> docker.DockerClient:
        if self._docker is None:
            raise BackendError(f"{self.name} backend used before start()")
        return self._docker

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a docker library call in a worker thread, translating its errors."""
        with translate(what):
            return await asyncio.to_thread(fn, *args, **kwargs)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the engine, then :meth:`_resume` jobs of a previous pman.

        Raises:
            BackendError: the engine cannot be reached.
        """
        self._docker = await self._call("connecting to docker", self._client_factory)
        await self._call("connecting to docker", self._client.ping)
        await self._resume()

    async def _resume(self) -> None:
        """Pick up running jobs (re-arm their max run timers)."""

    async def close(self) -> None:
        """Cancel max run timers and close the engine connection; jobs keep running."""
        timers = list(self._timers.values())
        self._timers.clear()
        for task in timers:
            task.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        if self._docker is not None:
            client, self._docker = self._docker, None
            await asyncio.to_thread(client.close)

    # -- images -------------------------------------------------------------------

    @property
    def _auth_config(self) -> dict[str, str] | None:
        s = self.settings
        if not s.registry_username or s.registry_password is None:
            return None
        return {"username": s.registry_username, "password": s.registry_password.get_secret_value()}

    async def ensure_image(self, image: str) -> None:
        """Make sure the engine has ``image``, pulling it when it is missing.

        Pulls use the registry credentials of the settings. With
        ``pull_images`` off only images already on the engine can run.

        Raises:
            InvalidJob: the image is missing and cannot be pulled (no such
                image or tag, access denied, pulls disabled).
            BackendError: the engine failed.
        """
        try:
            await self._call(f"image {image!r}", self._client.images.get, image)
            return
        except InvalidJob:
            if not self.settings.pull_images:
                raise
        repo, tag = split_image(image)
        log.info("pulling image %s", image)
        try:
            await asyncio.to_thread(
                self._client.images.pull, repo, tag=tag, auth_config=self._auth_config
            )
        except docker.errors.APIError as exc:
            if exc.is_client_error() or exc.status_code == 500:
                # the engine reports registry refusals (no such repo, denied) as 404/500
                raise InvalidJob(
                    f"image {image!r} not found on the engine and cannot be pulled: "
                    f"{exc.explanation}"
                ) from exc
            raise BackendError(f"pulling image {image!r}: {exc.explanation}") from exc
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise BackendError(f"pulling image {image!r}: {exc}") from exc

    # -- storage ------------------------------------------------------------------

    async def _make_dirs(self, jid: JobId, input_dir: str, output_dir: str) -> None:
        """Create the job's storebase dirs as pman.

        The engine would create missing bind sources owned by root (docker)
        or refuse them (swarm). With ``container_user`` set, the output dir is
        handed to that user when pman may (it runs as root): otherwise the
        plugin could not write its results.
        """

        def make() -> None:
            for rel in (input_dir, output_dir):
                (self.settings.storebase / rel).mkdir(parents=True, exist_ok=True)
            user = self.settings.container_user
            if user and os.geteuid() == 0:
                uid, _, gid = user.partition(":")
                os.chown(self.settings.storebase / output_dir, int(uid), int(gid or uid))

        try:
            await asyncio.to_thread(make)
        except OSError as exc:
            raise BackendError(f"cannot create the dirs of job {jid!r}: {exc}") from exc

    # -- max run time -------------------------------------------------------------

    def _max_run_labels(self) -> dict[str, str]:
        limit = self.settings.max_run_seconds
        return {LABEL_MAX_RUN: f"{limit:g}"} if limit > 0 else {}

    def _arm_timer(self, jid: JobId, started: datetime | None) -> None:
        """Stop the job when it exceeds ``max_run_seconds``, counted from ``started``."""
        limit = self.settings.max_run_seconds
        if limit <= 0:
            return
        elapsed = (datetime.now(UTC) - started).total_seconds() if started else 0.0
        delay = max(limit - elapsed, 0.0)
        self._cancel_timer(jid)
        self._timers[jid] = asyncio.create_task(self._expire(jid, delay))

    def _cancel_timer(self, jid: JobId) -> None:
        timer = self._timers.pop(jid, None)
        if timer is not None:
            timer.cancel()

    async def _expire(self, jid: JobId, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timers.pop(jid, None)
        try:
            await self._stop_for_max_run(jid)
            log.info("job %s stopped: %s", jid, MAX_RUN_MESSAGE)
        except JobNotFound:
            pass
        except PmanError:
            log.exception("job %s: cannot stop it after its max run time", jid)
        self.notify(jid)

    @abstractmethod
    async def _stop_for_max_run(self, jid: JobId) -> None:
        """Stop ``jid`` so that it reports "exceeded max run time"."""
