"""The docker backend: plugin jobs as containers of a Docker engine.

A job is a container named after its jid and labelled
``org.chrisproject.jid=<jid>`` and ``org.chrisproject.managed-by=pman``;
the engine is the only record of it, so a restarted pman finds its jobs by
label. The storebase dirs of the job are bind-mounted at ``/share/incoming``
(read-only) and ``/share/outgoing`` (read-write).

Unlike ChRIS pman (a soft ``mem_reservation``), ``memory_limit`` is a hard
limit without swap: a plugin that exceeds it is OOM-killed and reported as
such.

The engine connection, image pulls and max run timers are shared with the
swarm backend (:mod:`pman.backends.engine`).
"""

from __future__ import annotations

import logging
import shlex
from typing import Any, ClassVar

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from pman.backends.engine import (
    LABEL_MAX_RUN,
    EngineBackend,
)
from pman.backends.engine import parse_time as _parse_time
from pman.backends.vocabulary import (
    INCOMING,
    LABEL_JID,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    MAX_RUN_MESSAGE,
    OOM_MESSAGE,
    OUTGOING,
)
from pman.errors import BackendError, InvalidJob, JobConflict, JobNotFound, PmanError
from pman.schema import JobId, JobInfo, JobSpec, JobStatus, build_command
from pman.settings import BackendName

log = logging.getLogger(__name__)

#: Docker's zero time, reported for events that did not happen yet.
_ZERO_TIME = "0001-01-01T00:00:00Z"


def status_from_state(state: dict[str, Any], labels: dict[str, str]) -> tuple[JobStatus, str]:
    """A job's status and message from a container's ``State`` (reference §4).

    Running/Paused → started; OOMKilled → finishedWithError (out of memory);
    exited 0 → finishedSuccessfully; exited non-0 or Dead → finishedWithError
    ("exceeded max run time" when it ran for its max run time label);
    created → notStarted, unless the engine recorded a start error;
    anything else → undefined.
    """
    status = str(state.get("Status", ""))
    exit_code = int(state.get("ExitCode") or 0)
    if state.get("Running") or state.get("Paused") or status in ("running", "paused"):
        return JobStatus.STARTED, status or "running"
    if state.get("OOMKilled"):
        return JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE
    if status == "created":
        if state.get("Error"):
            return JobStatus.FINISHED_WITH_ERROR, f"failed to start: {state['Error']}"
        return JobStatus.NOT_STARTED, status
    if status == "exited":
        if exit_code == 0:
            return JobStatus.FINISHED_SUCCESSFULLY, status
        limit = labels.get(LABEL_MAX_RUN)
        started, finished = (
            _parse_time(state.get("StartedAt")),
            _parse_time(state.get("FinishedAt")),
        )
        if limit and started and finished:
            if (finished - started).total_seconds() >= float(limit):
                return JobStatus.FINISHED_WITH_ERROR, MAX_RUN_MESSAGE
        return JobStatus.FINISHED_WITH_ERROR, f"exited with code {exit_code}"
    if state.get("Dead") or status == "dead":
        return JobStatus.FINISHED_WITH_ERROR, status or "dead"
    return JobStatus.UNDEFINED, status


class DockerBackend(EngineBackend):
    """Runs jobs as containers of the engine ``docker.from_env()`` connects to.

    Refuses ``number_of_workers != 1`` and images the engine does not have
    and cannot pull (422). Status changes are found by inspecting the container at the base
    class's poll interval while a long-poll waits.
    """

    name: ClassVar[BackendName] = BackendName.DOCKER

    async def _resume(self) -> None:
        """Re-arm the max run timers of running containers."""
        if self.settings.max_run_seconds > 0:
            for container in await self._managed():
                state = container.attrs.get("State") or {}
                if state.get("Running"):
                    self._arm_timer(self._jid_of(container), _parse_time(state.get("StartedAt")))

    # -- Backend API ----------------------------------------------------------------

    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Create and start the job's container.

        Raises:
            InvalidJob: refused spec, missing image, or the engine cannot start it.
            JobConflict: a container named ``jid`` exists.
            BackendError: the engine failed.
        """
        self.check_spec(spec)
        await self.ensure_image(spec.image)
        await self._make_dirs(spec.jid, spec.input_dir, spec.output_dir)
        what = f"job {spec.jid!r}"
        try:
            existing = await self._call(what, self._client.containers.get, spec.jid)
        except JobNotFound:
            existing = None
        if existing is not None:
            raise JobConflict(f"job {spec.jid!r} exists already (a container has that name)")
        container: Container = await self._call(
            f"creating the container of {what}",
            self._client.containers.create,
            **self._run_args(spec),
        )
        try:
            await self._call(f"starting {what}", container.start)
        except PmanError as exc:
            # a container that never started would report notStarted forever
            await self._call(f"removing {what}", container.remove, force=True)
            if isinstance(exc, BackendError) and _is_client_error(exc):
                raise InvalidJob(f"cannot start {what}: {exc.message}") from exc
            raise
        await self._call(what, container.reload)
        self._arm_timer(
            spec.jid, _parse_time((container.attrs.get("State") or {}).get("StartedAt"))
        )
        log.info("job %s started in container %s", spec.jid, container.short_id)
        return self._info_from(container, logs="")

    async def info(self, jid: JobId, *, logs: bool = True) -> JobInfo:
        """The job's info from its container. Raises JobNotFound, BackendError."""
        container = await self._get(jid)
        text = ""
        if logs:
            raw: bytes = await self._call(
                f"logs of job {jid!r}",
                container.logs,
                stdout=True,
                stderr=True,
                tail=self.settings.job_logs_tail,
            )
            text = raw.decode("utf-8", errors="replace")
        return self._info_from(container, logs=text)

    async def list_jobs(self) -> list[JobInfo]:
        """Every container pman manages, without logs. Raises BackendError."""
        return [self._info_from(c, logs="") for c in await self._managed()]

    async def remove(self, jid: JobId) -> None:
        """Stop (SIGTERM, SIGKILL after the grace period) and remove the job's container.

        Raises JobNotFound, BackendError.
        """
        container = await self._get(jid)
        self._cancel_timer(jid)
        try:
            if container.attrs.get("State", {}).get("Running"):
                await self._call(
                    f"stopping job {jid!r}",
                    container.stop,
                    timeout=round(self.settings.kill_grace_seconds),
                )
            await self._call(f"removing job {jid!r}", container.remove, force=True)
        except JobNotFound:
            pass  # removed meanwhile (concurrent DELETE): the goal is reached
        finally:
            self.notify(jid)
        log.info("job %s removed", jid)

    # -- helpers --------------------------------------------------------------------

    def _run_args(self, spec: JobSpec) -> dict[str, Any]:
        """The ``containers.create`` arguments of ``spec``."""
        s = self.settings
        argv = build_command(spec, INCOMING, OUTGOING)
        labels = {
            **s.job_labels,
            LABEL_JID: spec.jid,
            LABEL_MANAGED_BY: MANAGED_BY,
        }
        labels.update(self._max_run_labels())
        args: dict[str, Any] = {
            "image": spec.image,
            "name": spec.jid,
            # entrypoint and command as lists: the argv reaches the plugin verbatim, no shell
            "entrypoint": argv[:1],
            "command": argv[1:],
            "environment": list(spec.env),
            "labels": labels,
            "volumes": {
                str(s.engine_storebase / spec.input_dir): {"bind": INCOMING, "mode": "ro"},
                str(s.engine_storebase / spec.output_dir): {"bind": OUTGOING, "mode": "rw"},
            },
            "restart_policy": {"Name": "no"},
            "detach": True,
        }
        if s.container_user:
            args["user"] = s.container_user
        if s.shm_size_mib:
            args["shm_size"] = f"{s.shm_size_mib}m"
        if not s.ignore_limits:
            args["mem_limit"] = f"{spec.memory_limit}m"
            args["memswap_limit"] = f"{spec.memory_limit}m"  # equal: no swap
            args["nano_cpus"] = spec.cpu_limit * 1_000_000
            if spec.gpu_limit > 0:
                args["device_requests"] = [
                    docker.types.DeviceRequest(count=spec.gpu_limit, capabilities=[["gpu"]])
                ]
        return args

    async def _get(self, jid: JobId) -> Container:
        """The container of ``jid``; JobNotFound if none or not pman's."""
        container: Container = await self._call(f"job {jid!r}", self._client.containers.get, jid)
        if container.labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
            raise JobNotFound(f"no job {jid!r} (container {jid!r} is not managed by pman)")
        return container

    async def _managed(self) -> list[Container]:
        containers: list[Container] = await self._call("listing jobs", self._list_managed)
        return containers

    def _list_managed(self) -> list[Container]:
        """pman's containers, inspected one by one (blocking).

        A plain ``containers.list()`` inspects every container it listed and
        fails when one is removed in between (a job deleted concurrently); a
        sparse listing plus a tolerant ``get`` skips those instead.
        """
        found: list[Container] = []
        sparse = self._client.containers.list(
            all=True, sparse=True, filters={"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]}
        )
        for item in sparse:
            try:
                found.append(self._client.containers.get(item.id))
            except docker.errors.NotFound:
                continue
        return found

    def _info_from(self, container: Container, *, logs: str) -> JobInfo:
        attrs = container.attrs
        state: dict[str, Any] = attrs.get("State") or {}
        status, message = status_from_state(state, container.labels)
        finished = state.get("FinishedAt") or _ZERO_TIME
        timestamp = state.get("StartedAt") if finished.startswith("0001-") else finished
        if timestamp and timestamp.startswith("0001-"):
            timestamp = ""
        argv = [attrs.get("Path", ""), *(attrs.get("Args") or [])]
        return JobInfo(
            jid=self._jid_of(container),
            image=(attrs.get("Config") or {}).get("Image", ""),
            cmd=shlex.join(a for a in argv if a is not None),
            status=status,
            message=message,
            timestamp=timestamp or "",
            logs=logs,
            exit_code=(
                int(state["ExitCode"]) if status.is_terminal and "ExitCode" in state else None
            ),
        )

    @staticmethod
    def _jid_of(container: Container) -> JobId:
        return JobId(container.labels.get(LABEL_JID, container.name or ""))

    async def _stop_for_max_run(self, jid: JobId) -> None:
        """Stop the container; its run time then shows it hit the limit (the label)."""
        container = await self._get(jid)
        await self._call(
            f"stopping job {jid!r}", container.stop, timeout=round(self.settings.kill_grace_seconds)
        )


def _is_client_error(exc: BackendError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, docker.errors.APIError) and cause.is_client_error()
