"""The swarm backend: plugin jobs as one-shot services of a Docker Swarm.

A job is a replicated service of one replica with restart condition
``none``, labelled ``org.chrisproject.jid=<jid>`` and
``org.chrisproject.managed-by=pman``; the swarm is the only record of it, so
a restarted pman finds its jobs by label. The job's status is the state of its
task, its logs those of the service.

Unlike ChRIS pman, limits are honoured: ``cpu_limit`` and ``memory_limit``
are both the service's limits and its reservations, so the swarm scheduler
places a job only on a node with that much room, and never overcommits one.
GPUs are requested as generic resources (``swarm_gpu_resource``, by default
``NVIDIA-GPU``) that the nodes' dockerd advertise (see the README). A job
no node can take stays ``notStarted`` with the scheduler's reason
("no suitable node ...") as its message.

A failed task is "out of memory" when its container's engine says the
container saw an OOM kill (also when the kernel killed a child process and
the plugin then exited with another code), or, when that engine cannot be
asked (the task ran on another node), when it exited with code 137 (SIGKILL).
pman's own stop at the max run time is recorded on the service first, so it
is reported as such.
"""

from __future__ import annotations

import logging
import re
import shlex
import zlib
from typing import Any, ClassVar

import docker.types
from docker.models.services import Service

from pman.backends.engine import (
    EngineBackend,
    parse_time,
)
from pman.backends.vocabulary import (
    INCOMING,
    LABEL_JID,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    MAX_RUN_MESSAGE,
    OOM_MESSAGE,
    OUTGOING,
)
from pman.errors import BackendError, JobConflict, JobNotFound
from pman.schema import JobId, JobInfo, JobSpec, JobStatus, build_command
from pman.settings import BackendName

log = logging.getLogger(__name__)

#: Put on a service that pman stopped because it ran past its max run time.
LABEL_STOPPED = "org.chrisproject.stopped"
STOPPED_MAX_RUN = "max-run-time"

#: Task states before the container runs (swarmkit's TaskState, in order).
_PENDING_STATES = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
#: Swarm service names: DNS-label-like, at most 63 characters.
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[-_]*[A-Za-z0-9]+)*$")
_MAX_NAME = 63


def service_name(jid: str) -> str:
    """The service name of ``jid``: the jid itself when swarm accepts it, else a
    deterministic, valid name with a checksum of the jid (the exact jid is in
    the service's labels)."""
    if len(jid) <= _MAX_NAME and _SERVICE_NAME.match(jid):
        return jid
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", jid).strip("-_") or "job"
    suffix = f"-{zlib.crc32(jid.encode()):08x}"
    return cleaned[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def latest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recent task of a service (restarts or a scale down leave older ones)."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: (t.get("Version", {}).get("Index", 0), t.get("CreatedAt", "")))


def status_from_task(
    task: dict[str, Any] | None,
    labels: dict[str, str],
    oom_killed: bool | None = None,
) -> tuple[JobStatus, str]:
    """A job's status and message from its latest task.

    ``oom_killed`` is the container's own OOM flag when its engine could be
    asked, None otherwise; True wins over the exit code. Pending states →
    notStarted (with the scheduler's reason); running → started; complete →
    finishedSuccessfully; failed, rejected, shutdown → finishedWithError with
    the reason: exceeded max run time (pman stopped it), out of memory (the
    flag, or exit code 137 when the flag is unknown), the exit code or the
    swarm's error.
    """
    stopped = labels.get(LABEL_STOPPED) == STOPPED_MAX_RUN
    if task is None:
        # scaling the service down deletes its task once the container is gone
        if stopped:
            return JobStatus.FINISHED_WITH_ERROR, MAX_RUN_MESSAGE
        return JobStatus.NOT_STARTED, "no task yet"
    status = task.get("Status") or {}
    state = str(status.get("State", ""))
    err = str(status.get("Err") or "")
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if state in _PENDING_STATES:
        return JobStatus.NOT_STARTED, f"{state}: {err}" if err else state
    if state == "running":
        return JobStatus.STARTED, state
    if state == "complete":
        return JobStatus.FINISHED_SUCCESSFULLY, state
    if stopped:
        return JobStatus.FINISHED_WITH_ERROR, MAX_RUN_MESSAGE
    if state == "failed":
        # the kernel may kill a child process (the plugin's worker) and the
        # plugin exit otherwise: the container's flag is the authority
        if oom_killed or (exit_code == 137 and oom_killed is None):
            return JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE
        if exit_code:
            return JobStatus.FINISHED_WITH_ERROR, f"exited with code {exit_code}"
        return JobStatus.FINISHED_WITH_ERROR, err or state
    if state in ("rejected", "shutdown", "remove", "orphaned"):
        return JobStatus.FINISHED_WITH_ERROR, f"{state}: {err}" if err else state
    return JobStatus.UNDEFINED, state


class SwarmBackend(EngineBackend):
    """Runs jobs as one-shot services of the swarm whose manager ``docker.from_env()`` reaches.

    Refuses ``number_of_workers != 1`` (422). Task states are polled while a
    long-poll waits.
    """

    name: ClassVar[BackendName] = BackendName.SWARM
    poll_interval: ClassVar[float | None] = 0.5

    async def start(self) -> None:
        """Connect, check the engine is a swarm manager, re-arm max run timers.

        Raises:
            BackendError: the engine cannot be reached or is not a swarm manager.
        """
        await super().start()
        info: dict[str, Any] = await self._call("swarm info", self._client.info)
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise BackendError(
                "the docker engine is not a swarm manager "
                "(run `docker swarm init` on it, or point DOCKER_HOST at a manager)"
            )

    async def _resume(self) -> None:
        # start() calls this before checking the swarm; listing services needs one
        if self.settings.max_run_seconds <= 0:
            return
        try:
            services = await self._managed()
        except BackendError:
            return
        for service in services:
            task = latest_task(await self._tasks(service))
            if task and (task.get("Status") or {}).get("State") == "running":
                started = parse_time((task.get("Status") or {}).get("Timestamp"))
                self._arm_timer(self._jid_of(service), started)

    # -- Backend API ----------------------------------------------------------------

    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Create the job's service; the swarm starts its task.

        Raises:
            InvalidJob: refused spec, or a missing image that cannot be pulled.
            JobConflict: a service of that jid or name exists.
            BackendError: the swarm failed.
        """
        self.check_spec(spec)
        if self.settings.pull_images:
            # fail early on an image no registry has; nodes pull it themselves too
            await self.ensure_image(spec.image)
        await self._make_dirs(spec.jid, spec.input_dir, spec.output_dir)
        if await self._find(spec.jid) is not None:
            raise JobConflict(f"job {spec.jid!r} exists already")
        name = service_name(spec.jid)
        # a service of that name that is not pman's: the create below answers 409
        await self._login(spec.image)
        service: Service = await self._call(
            f"creating the service of job {spec.jid!r}",
            self._client.services.create,
            **self._service_args(spec, name),
        )
        self._arm_timer(spec.jid, None)
        log.info("job %s created as service %s", spec.jid, service.short_id)
        return await self._info_from(service, logs=False)

    async def info(self, jid: JobId, *, logs: bool = True) -> JobInfo:
        """The job's info from its service and task. Raises JobNotFound, BackendError."""
        return await self._info_from(await self._get(jid), logs=logs)

    async def list_jobs(self) -> list[JobInfo]:
        """Every service pman manages, without logs. Raises BackendError."""
        infos: list[JobInfo] = []
        for service in await self._managed():
            try:
                infos.append(await self._info_from(service, logs=False))
            except JobNotFound:
                continue  # removed while listing
        return infos

    async def remove(self, jid: JobId) -> None:
        """Remove the job's service; the swarm stops and removes its container.

        Raises JobNotFound, BackendError.
        """
        service = await self._get(jid)
        self._cancel_timer(jid)
        try:
            await self._call(f"removing job {jid!r}", service.remove)
        except JobNotFound:
            pass  # removed meanwhile (concurrent DELETE): the goal is reached
        finally:
            self.notify(jid)
        log.info("job %s removed", jid)

    # -- helpers --------------------------------------------------------------------

    def _service_args(self, spec: JobSpec, name: str) -> dict[str, Any]:
        """The ``services.create`` arguments of ``spec``."""
        s = self.settings
        argv = build_command(spec, INCOMING, OUTGOING)
        labels = {**s.job_labels, LABEL_JID: spec.jid, LABEL_MANAGED_BY: MANAGED_BY}
        labels.update(self._max_run_labels())
        mounts = [
            docker.types.Mount(
                INCOMING, str(s.engine_storebase / spec.input_dir), type="bind", read_only=True
            ),
            docker.types.Mount(OUTGOING, str(s.engine_storebase / spec.output_dir), type="bind"),
        ]
        if s.shm_size_mib:
            mounts.append(
                docker.types.Mount(
                    "/dev/shm", None, type="tmpfs", tmpfs_size=s.shm_size_mib * 1024 * 1024
                )
            )
        args: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            # the argv reaches the plugin verbatim: command replaces the entrypoint, no shell
            "command": argv[:1],
            "args": argv[1:],
            "env": list(spec.env),
            "labels": labels,
            "container_labels": labels,
            "mounts": mounts,
            "mode": docker.types.ServiceMode("replicated", replicas=1),
            "restart_policy": docker.types.RestartPolicy(condition="none"),
            "stop_grace_period": int(s.kill_grace_seconds * 1_000_000_000),
        }
        if s.swarm_constraints:
            args["constraints"] = list(s.swarm_constraints)
        if s.container_user:
            args["user"] = s.container_user
        if not s.ignore_limits:
            nano_cpus = spec.cpu_limit * 1_000_000
            memory = spec.memory_limit * 1024 * 1024
            args["resources"] = docker.types.Resources(
                cpu_limit=nano_cpus,
                mem_limit=memory,
                cpu_reservation=nano_cpus,
                mem_reservation=memory,
                generic_resources=(
                    {s.swarm_gpu_resource: spec.gpu_limit} if spec.gpu_limit > 0 else None
                ),
            )
        return args

    async def _login(self, image: str) -> None:
        """Log the client in to the image's registry, so that the service
        carries the credentials (``X-Registry-Auth``) to the nodes that pull."""
        auth = self._auth_config
        first = image.split("/", 1)[0]
        if auth is None or "/" not in image or not ("." in first or ":" in first):
            return  # no credentials, or an image of Docker Hub's default registry
        await self._call(
            f"logging in to registry {first!r}",
            self._client.login,
            auth["username"],
            auth["password"],
            registry=first,
        )

    @staticmethod
    def _jid_of(service: Service) -> JobId:
        labels = (service.attrs.get("Spec") or {}).get("Labels") or {}
        return JobId(labels.get(LABEL_JID, service.name or ""))

    @staticmethod
    def _labels(service: Service) -> dict[str, str]:
        labels: dict[str, str] = (service.attrs.get("Spec") or {}).get("Labels") or {}
        return labels

    async def _find(self, jid: JobId) -> Service | None:
        services: list[Service] = await self._call(
            f"job {jid!r}",
            self._client.services.list,
            filters={"label": [f"{LABEL_JID}={jid}", f"{LABEL_MANAGED_BY}={MANAGED_BY}"]},
        )
        return services[0] if services else None

    async def _get(self, jid: JobId) -> Service:
        """The service of ``jid``; JobNotFound if none."""
        service = await self._find(jid)
        if service is None:
            raise JobNotFound(f"no job {jid!r}")
        return service

    async def _managed(self) -> list[Service]:
        services: list[Service] = await self._call(
            "listing jobs",
            self._client.services.list,
            filters={"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]},
        )
        return services

    async def _tasks(self, service: Service) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = await self._call(
            f"tasks of service {service.name!r}", service.tasks
        )
        return tasks

    async def _oom_killed(self, task: dict[str, Any]) -> bool | None:
        """The container's OOM flag when this engine has the container, else None."""
        container_id = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if not container_id:
            return None
        try:
            container = await self._call(
                "task container", self._client.containers.get, container_id
            )
        except (JobNotFound, BackendError):
            return None  # on another node, or already pruned
        return bool((container.attrs.get("State") or {}).get("OOMKilled"))

    async def _info_from(self, service: Service, *, logs: bool) -> JobInfo:
        labels = self._labels(service)
        task = latest_task(await self._tasks(service))
        task_status = (task or {}).get("Status") or {}
        exit_code = (task_status.get("ContainerStatus") or {}).get("ExitCode")
        oom: bool | None = None
        if task_status.get("State") == "failed":
            oom = await self._oom_killed(task or {})
        status, message = status_from_task(task, labels, oom)
        container_spec = (
            ((service.attrs.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec")
        ) or {}
        argv = [*(container_spec.get("Command") or []), *(container_spec.get("Args") or [])]
        text = ""
        if logs:
            text = await self._logs(service)
            if message == OOM_MESSAGE:
                text += f"\n[pman] the job was killed: {OOM_MESSAGE}\n"
        return JobInfo(
            jid=self._jid_of(service),
            image=str(container_spec.get("Image", "")).split("@", 1)[0],
            cmd=shlex.join(argv),
            status=status,
            message=message,
            timestamp=str(task_status.get("Timestamp") or ""),
            logs=text,
            exit_code=int(exit_code) if status.is_terminal and exit_code is not None else None,
        )

    async def _logs(self, service: Service) -> str:
        def read() -> bytes:
            chunks = service.logs(stdout=True, stderr=True, tail=self.settings.job_logs_tail)
            return b"".join(chunks)

        try:
            raw = await self._call(f"logs of service {service.name!r}", read)
        except BackendError as exc:
            # logs are best effort: a node that left the swarm cannot serve them
            return f"[pman] logs unavailable: {exc.message}\n"
        return raw.decode("utf-8", errors="replace")

    async def _stop_for_max_run(self, jid: JobId) -> None:
        """Mark the service, then scale it to zero: the swarm stops the task
        (SIGTERM, SIGKILL after the grace period) and keeps it as ``shutdown``."""
        service = await self._get(jid)
        labels = {**self._labels(service), LABEL_STOPPED: STOPPED_MAX_RUN}
        await self._call(
            f"stopping job {jid!r}",
            service.update,
            labels=labels,
            mode=docker.types.ServiceMode("replicated", replicas=0),
        )
