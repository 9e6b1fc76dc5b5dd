"""The kubernetes backend: plugin jobs as ``batch/v1`` Jobs of a Kubernetes cluster.

One Job per plugin job, in ``kubernetes_namespace``. Its name is the jid when
the jid is a valid DNS-1123 label, otherwise a deterministic derivation of it
(:func:`job_name`); the exact jid is kept in the annotation
``org.chrisproject.jid``, because jids may hold ``_``, uppercase letters or
128 characters, which neither names nor label values accept. The labels are
``org.chrisproject.managed-by=pman`` (by which jobs are listed, so a restarted
pman finds them without any state of its own), ``org.chrisproject.jid=<job
name>`` (label-safe) and ``job_labels``.

The pod runs one container, ``plugin``, as a non-root user (``container_user``,
default :data:`DEFAULT_UID`) with the restricted security profile, with the
job's storebase dirs at ``/share/incoming`` (read-only) and ``/share/outgoing``
from hostPath volumes or from subPaths of one PersistentVolumeClaim
(``kubernetes_storage``). GPUs are requested as ``kubernetes_gpu_resource``;
``kubernetes_tolerations`` and ``kubernetes_node_selector`` let those pods land
on tainted GPU nodes (pman #194). ``backoffLimit`` is 0: a failed pod fails the
job, as a failed container does on docker.

Status comes from the Job's conditions and counters, refined by its pods
(:func:`status_from_job`); a finished Job is never reported ``undefined``
(pman #225). Polled at :attr:`KubernetesBackend.poll_interval` while a
long-poll waits.

The official client is synchronous: every call runs in a worker thread, and
its errors (``ApiException``, urllib3, configuration) are translated here into
pman's (:func:`_translate`). The client is built from its own
``Configuration``; the library's global default configuration is never
touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar, cast

import pydantic
import urllib3.exceptions
from kubernetes.client import (
    ApiClient,
    BatchV1Api,
    Configuration,
    CoreV1Api,
    V1Capabilities,
    V1Container,
    V1ContainerStateTerminated,
    V1DeleteOptions,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1HostPathVolumeSource,
    V1Job,
    V1JobSpec,
    V1JobStatus,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Preconditions,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config import new_client_from_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import load_incluster_config

from pman.backends.base import RESERVED_JIDS, Backend
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
from pman.settings import BackendName, PmanSettings

log = logging.getLogger(__name__)

#: The exact jid (a label holds the Job name: not every jid is a label value).
ANNOTATION_JID: Final = LABEL_JID
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
CONTAINER_NAME: Final = "plugin"

#: The uid (and gid) plugin pods run as when ``container_user`` is unset. The
#: restricted profile needs a numeric non-root user, and images may declare
#: none or root; 1001 is the conventional unprivileged uid of container images
#: (OpenShift, bitnami). The storebase must be writable by it.
DEFAULT_UID: Final = 1001

#: (connect, read) timeouts of every API call, in seconds: a hung API server
#: must not hold a worker thread for ever.
REQUEST_TIMEOUT: Final = (5.0, 30.0)
#: Page size of list calls.
LIST_LIMIT: Final = 500

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_MAX = 63

T = TypeVar("T")


# -- naming ------------------------------------------------------------------------


def job_name(jid: str) -> str:
    """The Job name of ``jid``: the jid itself when it is a DNS-1123 label.

    Otherwise (uppercase, ``_`` or ``.``, longer than 63 characters, a
    trailing ``-``) a lowercased, sanitised prefix plus the first 10 hex
    digits of the jid's SHA-256, so that two jids differing only in case or
    punctuation still get different names. Deterministic: a restarted pman
    finds the Job of a jid by its name.
    """
    if len(jid) <= _DNS_LABEL_MAX and _DNS_LABEL.match(jid):
        return jid
    digest = hashlib.sha256(jid.encode()).hexdigest()[:10]
    base = re.sub(r"[^a-z0-9-]+", "-", jid.lower()).strip("-")
    base = base[: _DNS_LABEL_MAX - len(digest) - 1].rstrip("-")
    return f"{base}-{digest}" if base else f"job-{digest}"


def parse_user(value: str | None) -> tuple[int, int]:
    """``(uid, gid)`` from ``container_user`` (``uid[:gid]``).

    Unset: :data:`DEFAULT_UID` for both. A uid alone runs with gid = uid
    (docker would use gid 0, root's group, which the backend avoids).
    """
    if not value:
        return DEFAULT_UID, DEFAULT_UID
    uid, _, gid = value.partition(":")
    return int(uid), int(gid or uid)


def _escape(text: str) -> str:
    # Kubernetes expands $(VAR) and turns $$ into $ in command, args and env
    # values; doubling every $ makes the argv reach the plugin verbatim.
    return text.replace("$", "$$")


def _unescape(text: str) -> str:
    return text.replace("$$", "$")


# -- errors ------------------------------------------------------------------------


def _api_message(exc: ApiException) -> str:
    """The ``message`` of the Status body the API server answered, else the reason."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc.reason or exc.body or "no details")


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Turn kubernetes client, urllib3 and configuration errors inside the block into pman errors.

    404 → JobNotFound, 409 → JobConflict, 400 and 422 → InvalidJob, any other
    status, a transport failure or an answer the client cannot read →
    BackendError.
    """
    try:
        yield
    except PmanError:
        raise
    except ApiException as exc:
        status, detail = exc.status or 0, _api_message(exc)
        if status == 404:
            raise JobNotFound(f"{what}: {detail}") from exc
        if status == 409:
            raise JobConflict(f"{what}: {detail}") from exc
        if status in (400, 422):
            raise InvalidJob(f"{what}: refused by the cluster: {detail}") from exc
        if status == 0:
            raise BackendError(f"{what}: kubernetes API unreachable: {detail}") from exc
        raise BackendError(f"{what}: kubernetes API error {status}: {detail}") from exc
    except ConfigException as exc:
        raise BackendError(f"{what}: kubernetes configuration: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendError(f"{what}: kubernetes API unreachable: {exc}") from exc
    except (OpenApiException, pydantic.ValidationError) as exc:
        raise BackendError(f"{what}: unexpected data from the kubernetes API: {exc}") from exc


def load_api_client(kubeconfig: Path | None) -> ApiClient:
    """A new ApiClient (blocking: reads files).

    ``kubeconfig`` when given; else ``$KUBECONFIG`` (one file or a
    ``:``-separated list); else ``~/.kube/config`` when it exists; else the
    in-cluster service account. Raises BackendError.
    """
    with _translate("loading the kubernetes configuration"):
        if kubeconfig is not None:
            if not kubeconfig.is_file():
                raise BackendError(f"kubeconfig {kubeconfig} is not a file")
            return new_client_from_config(config_file=str(kubeconfig), persist_config=False)
        # read at call time: the library's own default was fixed at its import
        from_env = os.environ.get("KUBECONFIG")
        if from_env:
            return new_client_from_config(config_file=from_env, persist_config=False)
        default = Path("~/.kube/config").expanduser()
        if default.is_file():
            return new_client_from_config(config_file=str(default), persist_config=False)
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise BackendError(
                "no kubernetes configuration: set PMAN_KUBECONFIG or $KUBECONFIG, "
                "create ~/.kube/config, or run pman in a pod of the cluster"
            )
        configuration = Configuration()
        load_incluster_config(client_configuration=configuration)
        return ApiClient(configuration=configuration)


# -- status --------------------------------------------------------------------------


def _terminated(pods: list[V1Pod]) -> list[V1ContainerStateTerminated]:
    """The terminated states of the pods' containers (current, else last)."""
    found = []
    for pod in pods:
        for cs in (pod.status.container_statuses if pod.status else None) or []:
            for state in (cs.state, cs.last_state):
                if state is not None and state.terminated is not None:
                    found.append(state.terminated)
                    break
    return found


def _oom_killed(pods: list[V1Pod]) -> bool:
    return any(t.reason == "OOMKilled" for t in _terminated(pods))


def _phase(pod: V1Pod) -> str:
    return (pod.status.phase if pod.status else None) or "Pending"


def _pending_message(pods: list[V1Pod]) -> str:
    """Why the job's pods do not run yet: a container's waiting reason, or unschedulable."""
    for pod in pods:
        status = pod.status
        if status is None:
            continue
        for cs in status.container_statuses or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason:
                detail = f": {waiting.message}" if waiting.message else ""
                return f"pending: {waiting.reason}{detail}"
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason:
                detail = f": {cond.message}" if cond.message else ""
                return f"pending: {cond.reason}{detail}"
    return "pending"


def _failure_message(reason: str | None, message: str | None, pods: list[V1Pod]) -> str:
    """The message of a failed job: OOM, max run time, or how its container ended."""
    if _oom_killed(pods):
        return OOM_MESSAGE
    if reason == "DeadlineExceeded":
        return MAX_RUN_MESSAGE
    ended = _terminated(pods)
    failed = [t for t in ended if t.exit_code != 0] or ended
    if failed:
        term = failed[0]
        text = f"exited with code {term.exit_code}"
        why = [p for p in (term.reason, term.message) if p and p != "Error"]
        if why:
            text += f" ({': '.join(why)})"
        return text
    if reason:
        return f"{reason}: {message}" if message else reason
    return "failed"


def status_from_job(job: V1Job, pods: list[V1Pod]) -> tuple[JobStatus, str]:
    """A job's status and message from its Job and pods.

    In order: a ``Failed`` or ``FailureTarget`` condition → finishedWithError
    (``DeadlineExceeded`` → "exceeded max run time"; an OOM-killed container →
    out of memory; else the container's exit code and termination reason);
    ``Complete`` or ``SuccessCriteriaMet`` → finishedSuccessfully; the
    counters before any condition (pman #225: ``succeeded`` reached the
    completions with ``active`` unset → finishedSuccessfully, ``failed`` > 0
    → finishedWithError since backoffLimit is 0); pods that ended before the
    Job's status caught up; a running pod or ``ready`` > 0 → started; pods that
    exist but all wait (scheduling, image pull) → notStarted with the reason;
    ``active`` > 0 with no pod seen → started; nothing yet → notStarted.
    Never undefined.
    """
    status = job.status or V1JobStatus()
    completions = (job.spec.completions if job.spec else None) or 1
    true = {c.type: c for c in status.conditions or [] if c.status == "True"}
    # FailureTarget and SuccessCriteriaMet (Kubernetes 1.31+) come before
    # Failed and Complete, while the pods still terminate; the outcome is known
    failure = true.get("Failed") or true.get("FailureTarget")
    if failure is not None:
        return JobStatus.FINISHED_WITH_ERROR, _failure_message(
            failure.reason, failure.message, pods
        )
    if "Complete" in true or "SuccessCriteriaMet" in true:
        return JobStatus.FINISHED_SUCCESSFULLY, "completed"
    if (status.succeeded or 0) >= completions:
        return JobStatus.FINISHED_SUCCESSFULLY, "completed"
    if (status.failed or 0) > 0:
        return JobStatus.FINISHED_WITH_ERROR, _failure_message(None, None, pods)
    phases = [_phase(p) for p in pods]
    if "Failed" in phases:
        return JobStatus.FINISHED_WITH_ERROR, _failure_message(None, None, pods)
    if phases and phases.count("Succeeded") >= completions:
        return JobStatus.FINISHED_SUCCESSFULLY, "completed"
    if "Running" in phases or "Succeeded" in phases or (status.ready or 0) > 0:
        return JobStatus.STARTED, "running"
    if pods:
        return JobStatus.NOT_STARTED, _pending_message(pods)
    if (status.active or 0) > 0:
        return JobStatus.STARTED, "running"
    return JobStatus.NOT_STARTED, "waiting for its pod"


def _exit_code(status: JobStatus, pods: list[V1Pod]) -> int | None:
    """The exit code of a finished job: the first non-zero one of its containers."""
    if not status.is_terminal:
        return None
    codes = [t.exit_code for t in _terminated(pods)]
    failed = [c for c in codes if c != 0]
    if failed:
        return failed[0]
    if codes or status is JobStatus.FINISHED_SUCCESSFULLY:
        # a Complete Job's pods all exited 0, even when they are gone already
        return 0
    return None


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _timestamp(job: V1Job, status: JobStatus) -> str:
    st = job.status or V1JobStatus()
    if status.is_terminal:
        if st.completion_time is not None:
            return _iso(st.completion_time)
        ends = [
            c.last_transition_time
            for c in st.conditions or []
            if c.status == "True" and c.last_transition_time is not None
        ]
        return _iso(max(ends)) if ends else _iso(st.start_time)
    return _iso(st.start_time)


# -- the backend ---------------------------------------------------------------------


class KubernetesBackend(Backend):
    """Runs jobs as Kubernetes Jobs in ``kubernetes_namespace``.

    Accepts ``number_of_workers`` > 1 (``parallelism = completions``). Status
    changes are found by reading the Job and its pods every
    :attr:`poll_interval` seconds while a long-poll waits (two API calls per
    waiter and interval, hence one second rather than the base's quarter).

    Raises BackendError on construction when the settings cannot work
    (``pvc`` storage without a claim name, root ``container_user``, malformed
    tolerations).
    """

    name: ClassVar[BackendName] = BackendName.KUBERNETES
    poll_interval: ClassVar[float | None] = 1.0

    def __init__(
        self,
        settings: PmanSettings,
        *,
        client_factory: Callable[[Path | None], ApiClient] = load_api_client,
    ) -> None:
        super().__init__(settings)
        self._client_factory = client_factory
        self._api: ApiClient | None = None
        self._uid, self._gid = parse_user(settings.container_user)
        if self._uid == 0:
            raise BackendError(
                "PMAN_CONTAINER_USER: the kubernetes backend runs plugins as a non-root "
                "user (runAsNonRoot); uid 0 is refused"
            )
        if settings.kubernetes_storage == "pvc" and not settings.kubernetes_pvc_name:
            raise BackendError(
                "PMAN_KUBERNETES_PVC_NAME must name the claim holding the storebase "
                "when PMAN_KUBERNETES_STORAGE=pvc"
            )
        self._tolerations = _tolerations(settings.kubernetes_tolerations)

    @property
    def namespace(self) -> str:
        """The namespace jobs are created in."""
        return self.settings.kubernetes_namespace

    @property
    def _batch(self) -> BatchV1Api:
        return BatchV1Api(self._client)

    @property
    def _core(self) -> CoreV1Api:
        return CoreV1Api(self._client)

    @property
    def _client(self) -> ApiClient:
        if self._api is None:
            raise BackendError("kubernetes backend used before start()")
        return self._api

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a client call in a worker thread, with the request timeout, translating errors."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        with _translate(what):
            return await asyncio.to_thread(fn, *args, **kwargs)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Build the API client and check that Jobs of the namespace can be listed.

        Raises:
            BackendError: no usable configuration, the API server cannot be
                reached, or it refuses (e.g. RBAC forbids listing Jobs).
        """
        with _translate("loading the kubernetes configuration"):
            self._api = await asyncio.to_thread(self._client_factory, self.settings.kubeconfig)
        try:
            await self._call(
                "connecting to kubernetes",
                self._batch.list_namespaced_job,
                namespace=self.namespace,
                label_selector=MANAGED_SELECTOR,
                limit=1,
            )
        except PmanError as exc:
            await self.close()
            if isinstance(exc, BackendError):
                raise
            raise BackendError(exc.message) from exc

    async def close(self) -> None:
        """Close the API client's connections; Jobs keep running."""
        if self._api is not None:
            api, self._api = self._api, None
            await asyncio.to_thread(api.close)

    # -- Backend API ----------------------------------------------------------------

    def check_spec(self, spec: JobSpec) -> None:
        """Refuse reserved jids; unlike the base, any ``number_of_workers`` runs.

        Raises:
            InvalidJob: the jid is reserved.
        """
        if spec.jid in RESERVED_JIDS:
            raise InvalidJob(f"job id {spec.jid!r} is reserved")

    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Create the job's Job.

        Raises:
            InvalidJob: refused spec, or the API server refused the Job (400/422).
            JobConflict: a Job with its name exists.
            BackendError: the API server failed or cannot be reached, or the
                namespace does not exist.
        """
        self.check_spec(spec)
        await asyncio.to_thread(self._make_dirs, spec)
        body = self.build_job(spec)
        try:
            job: V1Job = await self._call(
                f"creating the Job of job {spec.jid!r}",
                self._batch.create_namespaced_job,
                namespace=self.namespace,
                body=body,
                # refuse fields the server does not know rather than drop them silently
                field_validation="Strict",
            )
        except JobNotFound as exc:
            # a 404 on create means the namespace, not the job, is missing
            raise BackendError(exc.message) from exc.__cause__
        log.info("job %s created as Job %s/%s", spec.jid, self.namespace, job_name(spec.jid))
        return self._info_from(job, [], logs="")

    async def info(self, jid: JobId, *, logs: bool = True) -> JobInfo:
        """The job's info from its Job and pods. Raises JobNotFound, BackendError."""
        job = await self._get(jid)
        pods = await self._pods_of(job)
        text = await self._logs(pods) if logs else ""
        return self._info_from(job, pods, logs=text)

    async def list_jobs(self) -> list[JobInfo]:
        """Every Job pman manages in the namespace, without logs. Raises BackendError."""
        jobs: list[V1Job] = await self._list_all(self._batch.list_namespaced_job, "Jobs")
        pods: list[V1Pod] = await self._list_all(self._core.list_namespaced_pod, "pods")
        by_owner: dict[str, list[V1Pod]] = {}
        for pod in pods:
            for uid in _owner_uids(pod):
                by_owner.setdefault(uid, []).append(pod)
        infos = []
        for job in jobs:
            job_uid = (job.metadata.uid if job.metadata else None) or ""
            infos.append(self._info_from(job, by_owner.get(job_uid, []), logs=""))
        return infos

    async def remove(self, jid: JobId) -> None:
        """Delete the job's Job; its pods are deleted in the background.

        The pods get ``kill_grace_seconds`` between SIGTERM and SIGKILL.
        Raises JobNotFound, BackendError.
        """
        job = await self._get(jid)
        uid = job.metadata.uid if job.metadata else None
        options = V1DeleteOptions(
            propagation_policy="Background",
            # only this Job: never one created under the same name meanwhile
            preconditions=V1Preconditions(uid=uid) if uid else None,
        )
        try:
            await self._call(
                f"deleting the Job of job {jid!r}",
                self._batch.delete_namespaced_job,
                name=job_name(jid),
                namespace=self.namespace,
                body=options,
            )
        except JobNotFound:
            pass  # deleted meanwhile (concurrent DELETE, TTL): the goal is reached
        finally:
            self.notify(jid)
        log.info("job %s removed", jid)

    # -- the Job ------------------------------------------------------------------

    def build_job(self, spec: JobSpec) -> V1Job:
        """The Job that runs ``spec``, as the client's typed model."""
        s = self.settings
        name = job_name(spec.jid)
        labels = {**s.job_labels, LABEL_JID: name, LABEL_MANAGED_BY: MANAGED_BY}
        annotations = {ANNOTATION_JID: spec.jid}
        volumes, mounts = self._storage(spec)
        if s.shm_size_mib:
            volumes.append(
                V1Volume(
                    name="dshm",
                    empty_dir=V1EmptyDirVolumeSource(
                        medium="Memory", size_limit=f"{s.shm_size_mib}Mi"
                    ),
                )
            )
            mounts.append(V1VolumeMount(name="dshm", mount_path="/dev/shm"))
        env = []
        for item in spec.env:
            key, _, value = item.partition("=")
            env.append(V1EnvVar(name=key, value=_escape(value)))
        container = V1Container(
            name=CONTAINER_NAME,
            image=spec.image,
            command=[_escape(a) for a in build_command(spec, INCOMING, OUTGOING)],
            env=env or None,
            resources=self._resources(spec),
            volume_mounts=mounts,
            security_context=V1SecurityContext(
                run_as_non_root=True,
                allow_privilege_escalation=False,
                privileged=False,
                capabilities=V1Capabilities(drop=["ALL"]),
            ),
        )
        pod = V1PodSpec(
            containers=[container],
            restart_policy="Never",
            volumes=volumes,
            node_selector=dict(s.kubernetes_node_selector) or None,
            tolerations=list(self._tolerations) or None,
            image_pull_secrets=(
                [V1LocalObjectReference(name=s.kubernetes_image_pull_secret)]
                if s.kubernetes_image_pull_secret
                else None
            ),
            security_context=V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=self._uid,
                run_as_group=self._gid,
                fs_group=self._gid,
                # a recursive chown of a shared claim on every start would be costly
                fs_group_change_policy="OnRootMismatch",
                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
            ),
            # a plugin needs no API credentials, nor the namespace's services in its env
            automount_service_account_token=False,
            enable_service_links=False,
            termination_grace_period_seconds=math.ceil(s.kill_grace_seconds),
        )
        workers = spec.number_of_workers
        return V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=V1ObjectMeta(
                name=name, namespace=self.namespace, labels=labels, annotations=annotations
            ),
            spec=V1JobSpec(
                template=V1PodTemplateSpec(
                    metadata=V1ObjectMeta(labels=dict(labels), annotations=dict(annotations)),
                    spec=pod,
                ),
                backoff_limit=0,
                parallelism=workers,
                completions=workers,
                # 0 would delete a Job the moment it ends, before pfcon reads it: no TTL then
                ttl_seconds_after_finished=s.kubernetes_ttl_seconds or None,
                active_deadline_seconds=(
                    math.ceil(s.max_run_seconds) if s.max_run_seconds > 0 else None
                ),
            ),
        )

    def _resources(self, spec: JobSpec) -> V1ResourceRequirements | None:
        if self.settings.ignore_limits:
            return None
        # requests = limits: the scheduler reserves what the job may use (Guaranteed QoS)
        requests = {"cpu": f"{spec.cpu_limit}m", "memory": f"{spec.memory_limit}Mi"}
        limits = dict(requests)
        if spec.gpu_limit > 0:
            # extended resources default their request to the limit
            limits[self.settings.kubernetes_gpu_resource] = str(spec.gpu_limit)
        return V1ResourceRequirements(limits=limits, requests=requests)

    def _storage(self, spec: JobSpec) -> tuple[list[V1Volume], list[V1VolumeMount]]:
        s = self.settings
        if s.kubernetes_storage == "pvc":
            claim = V1PersistentVolumeClaimVolumeSource(claim_name=str(s.kubernetes_pvc_name))
            volumes = [V1Volume(name="storebase", persistent_volume_claim=claim)]
            mounts = [
                V1VolumeMount(
                    name="storebase", mount_path=INCOMING, sub_path=spec.input_dir, read_only=True
                ),
                V1VolumeMount(name="storebase", mount_path=OUTGOING, sub_path=spec.output_dir),
            ]
            return volumes, mounts
        base = s.engine_storebase
        volumes = [
            V1Volume(
                name="incoming",
                host_path=V1HostPathVolumeSource(
                    path=str(base / spec.input_dir), type="DirectoryOrCreate"
                ),
            ),
            V1Volume(
                name="outgoing",
                host_path=V1HostPathVolumeSource(
                    path=str(base / spec.output_dir), type="DirectoryOrCreate"
                ),
            ),
        ]
        mounts = [
            V1VolumeMount(name="incoming", mount_path=INCOMING, read_only=True),
            V1VolumeMount(name="outgoing", mount_path=OUTGOING),
        ]
        return volumes, mounts

    def _make_dirs(self, spec: JobSpec) -> None:
        """Create the job's dirs as pman, when pman shares the storebase (blocking).

        Kubelet would create missing hostPath dirs and subPaths owned by root,
        which a non-root plugin cannot write to. A pman that does not see the
        storebase leaves them to pfioh.
        """
        if not self.settings.storebase.is_dir():
            return
        try:
            for rel in (spec.input_dir, spec.output_dir):
                (self.settings.storebase / rel).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the dirs of job {spec.jid!r}: {exc}") from exc

    # -- reading ------------------------------------------------------------------

    async def _get(self, jid: JobId) -> V1Job:
        """The Job of ``jid``; JobNotFound if none, or not pman's, or another jid's."""
        name = job_name(jid)
        try:
            job: V1Job = await self._call(
                f"job {jid!r}", self._batch.read_namespaced_job, name=name, namespace=self.namespace
            )
        except JobNotFound as exc:
            raise JobNotFound(f"no job {jid!r}") from exc.__cause__
        meta = job.metadata or V1ObjectMeta()
        if (meta.labels or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
            raise JobNotFound(f"no job {jid!r} (Job {name!r} is not managed by pman)")
        if (meta.annotations or {}).get(ANNOTATION_JID, name) != jid:
            raise JobNotFound(f"no job {jid!r} (Job {name!r} belongs to another jid)")
        return job

    async def _pods_of(self, job: V1Job) -> list[V1Pod]:
        """The pods of ``job``, by its selector and owner reference, oldest first."""
        meta = job.metadata or V1ObjectMeta()
        selector = job.spec.selector if job.spec else None
        match = (selector.match_labels if selector else None) or {"job-name": str(meta.name)}
        pods: list[V1Pod] = await self._list_all(
            self._core.list_namespaced_pod, "pods", ",".join(f"{k}={v}" for k, v in match.items())
        )
        if meta.uid:
            # a Job recreated under the same name must not see the old one's terminating pods
            pods = [p for p in pods if meta.uid in _owner_uids(p)]
        return sorted(pods, key=_pod_order)

    async def _list_all(
        self, fn: Callable[..., Any], what: str, selector: str = MANAGED_SELECTOR
    ) -> list[Any]:
        """Every item of a namespaced list call, following ``continue`` tokens."""
        items: list[Any] = []
        token: str | None = None
        while True:
            page = await self._call(
                f"listing {what}",
                fn,
                namespace=self.namespace,
                label_selector=selector,
                limit=LIST_LIMIT,
                _continue=token,
            )
            items.extend(page.items or [])
            token = page.metadata.var_continue if page.metadata else None
            if not token:
                return items

    async def _logs(self, pods: list[V1Pod]) -> str:
        """The tail of each pod's log, OOM kills appended; headed by pod when several."""
        parts: list[tuple[str, str]] = []
        for pod in pods:
            pod_name = str(pod.metadata.name if pod.metadata else "")
            text = ""
            if self.settings.job_logs_tail > 0 and _phase(pod) != "Pending":
                text = await self._call(f"logs of pod {pod_name!r}", self._read_log, pod_name)
            if any(t.reason == "OOMKilled" for t in _terminated([pod])):
                if text and not text.endswith("\n"):
                    text += "\n"
                text += OOM_MESSAGE + "\n"
            parts.append((pod_name, text))
        if len(parts) == 1:
            return parts[0][1]
        return "".join(f"--- pod {name} ---\n{text}" for name, text in parts)

    def _read_log(self, pod_name: str, _request_timeout: tuple[float, float]) -> str:
        """The tail of a pod's log (blocking); empty when it has none (yet, or any more).

        Read raw: the client's own decoding fails on output that is not UTF-8.
        """
        try:
            response = cast(
                Any,
                self._core.read_namespaced_pod_log(
                    name=pod_name,
                    namespace=self.namespace,
                    container=CONTAINER_NAME,
                    tail_lines=self.settings.job_logs_tail,
                    _preload_content=False,
                    _request_timeout=_request_timeout,
                ),
            )
        except ApiException as exc:
            if exc.status in (400, 404):
                return ""  # the container is waiting, or the pod went away
            raise
        try:
            data: bytes = response.data
        finally:
            response.release_conn()
        return data.decode("utf-8", errors="replace")

    def _info_from(self, job: V1Job, pods: list[V1Pod], *, logs: str) -> JobInfo:
        meta = job.metadata or V1ObjectMeta()
        name = str(meta.name or "")
        template = job.spec.template.spec if job.spec and job.spec.template else None
        container = template.containers[0] if template and template.containers else None
        argv = [*(container.command or []), *(container.args or [])] if container else []
        status, message = status_from_job(job, pods)
        return JobInfo(
            jid=JobId((meta.annotations or {}).get(ANNOTATION_JID, name)),
            image=(container.image or "") if container else "",
            cmd=shlex.join(_unescape(a) for a in argv),
            status=status,
            message=message,
            timestamp=_timestamp(job, status),
            logs=logs,
            exit_code=_exit_code(status, pods),
        )


def _owner_uids(pod: V1Pod) -> set[str]:
    refs = (pod.metadata.owner_references if pod.metadata else None) or []
    return {r.uid for r in refs if r.kind == "Job" and r.controller}


def _pod_order(pod: V1Pod) -> tuple[str, str]:
    meta = pod.metadata or V1ObjectMeta()
    return _iso(meta.creation_timestamp), str(meta.name or "")


def _tolerations(items: list[dict[str, Any]]) -> list[V1Toleration]:
    """``kubernetes_tolerations`` as models; BackendError naming a malformed entry."""
    known = set(V1Toleration.attribute_map) | set(V1Toleration.attribute_map.values())
    tolerations = []
    for i, item in enumerate(items):
        unknown = sorted(set(item) - known)
        if unknown:
            raise BackendError(
                f"PMAN_KUBERNETES_TOLERATIONS[{i}]: unknown field(s) {', '.join(unknown)}"
            )
        try:
            toleration = V1Toleration.from_dict(item)
        except (pydantic.ValidationError, TypeError) as exc:
            raise BackendError(f"PMAN_KUBERNETES_TOLERATIONS[{i}]: {exc}") from exc
        if toleration is not None:
            tolerations.append(toleration)
    return tolerations
