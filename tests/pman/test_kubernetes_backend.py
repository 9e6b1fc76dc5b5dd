"""pman's kubernetes backend, against a schema-checking fake API server.

The backend talks through the official client to :class:`~tests.support.fake_kube.FakeKube`
on a loopback socket; the fake checks every body against the API schema the
client's models describe, so a Job the backend builds wrongly fails here
with 422 as it would on a cluster. The fake's own validator is tested first,
so that it cannot pass anything silently.

:class:`TestRealCluster` runs a tiny job on a real cluster, only when
``KUBECONFIG`` is set.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import urllib3
from chris_sdk.descriptor import PluginType
from kubernetes.client import ApiClient, ApiException, Configuration

from pman.backends.kubernetes import (
    ANNOTATION_JID,
    DEFAULT_UID,
    LABEL_JID,
    LABEL_MANAGED_BY,
    MAX_RUN_MESSAGE,
    OOM_MESSAGE,
    KubernetesBackend,
    job_name,
    parse_user,
)
from pman.backends.registry import create_backend
from pman.client import PmanClient
from pman.errors import BackendError, InvalidJob, JobConflict, JobNotFound
from pman.schema import JobId, JobInfo, JobSpec, JobStatus
from pman.settings import BackendName, PmanSettings
from tests.pman.conftest import running_pman, wait_terminal
from tests.support.components import free_port
from tests.support.fake_kube import FakeKube, dns_label_errors, job_errors, schema_errors

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as fake:
        yield fake


@pytest.fixture
def make_settings(tmp_path: Path, kube: FakeKube) -> Callable[..., PmanSettings]:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")

    def make(**overrides: Any) -> PmanSettings:
        values: dict[str, Any] = {
            "backend": BackendName.KUBERNETES,
            "storebase": tmp_path / "store",
            "data_dir": tmp_path / "pman",
            "kubeconfig": kubeconfig,
            "kubernetes_namespace": kube.namespace,
            "job_labels": {"team": "neuro"},
            "kill_grace_seconds": 5,
            "max_wait_seconds": 30,
        }
        values.update(overrides)
        return PmanSettings(**values)

    return make


@pytest.fixture
async def make_backend(
    make_settings: Callable[..., PmanSettings],
) -> AsyncIterator[Callable[..., Any]]:
    """Start backends on settings overrides; closes them afterwards."""
    started: list[KubernetesBackend] = []

    async def make(**overrides: Any) -> KubernetesBackend:
        backend = KubernetesBackend(make_settings(**overrides))
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


@pytest.fixture
async def backend(make_backend: Callable[..., Any]) -> KubernetesBackend:
    b: KubernetesBackend = await make_backend()
    return b


def job_spec(jid: str = "chris-jid-1", **fields: Any) -> JobSpec:
    values: dict[str, Any] = {
        "jid": jid,
        "image": "ghcr.io/fnndsc/pl-dircopy:2.1.1",
        "entrypoint": ["dircopy"],
        "args": ["--verbose"],
        "type": PluginType.DS,
        "input_dir": f"key-{jid}/incoming",
        "output_dir": f"key-{jid}/outgoing",
        "cpu_limit": 500,
        "memory_limit": 64,
        "env": ["CHRIS_JID=" + jid],
    }
    values.update(fields)
    return JobSpec(**values)


def posted_job(kube: FakeKube) -> dict[str, Any]:
    """The body of the last Job creation, as it went over the wire."""
    body: dict[str, Any] = kube.requests_to("POST", "/jobs")[-1].body
    return body


def wire(model: Any) -> dict[str, Any]:
    """A model as the client sends it."""
    with ApiClient(Configuration()) as api:
        body: dict[str, Any] = api.sanitize_for_serialization(model)
    return body


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


# -- the fake's validator -------------------------------------------------------------


def test_built_jobs_are_schema_valid(make_settings: Callable[..., PmanSettings]) -> None:
    backend = KubernetesBackend(
        make_settings(kubernetes_tolerations=[GPU_TOLERATION], shm_size_mib=64)
    )
    body = wire(backend.build_job(job_spec(gpu_limit=1)))
    assert job_errors(body, "chris") == []


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda j: pod_spec(j)["containers"][0].update(bogus=1), ".containers[0].bogus", "NotSupp"),
        (lambda j: j["spec"].update(backoffLimit="0"), "spec.backoffLimit", "TypeInvalid"),
        (lambda j: j["spec"].update(activeDeadlineSeconds=True), "activeDeadline", "TypeInvalid"),
        (
            lambda j: pod_spec(j)["containers"][0]["resources"]["limits"].update(cpu=1),
            "resources.limits[cpu]",
            "TypeInvalid",
        ),
        (lambda j: pod_spec(j).update(containers={"name": "x"}), "spec.containers", "TypeInvalid"),
        (lambda j: j["metadata"].update(labels=["a=b"]), "metadata.labels", "TypeInvalid"),
        (lambda j: pod_spec(j).update(tolerations=[[]]), "tolerations[0]", "TypeInvalid"),
        (lambda j: pod_spec(j)["containers"][0].pop("name"), "containers[0].name", "Required"),
        (lambda j: j["spec"].pop("template"), "spec.template", "Required"),
        (
            lambda j: pod_spec(j)["containers"][0]["env"][0].pop("name"),
            "env[0].name",
            "Required",
        ),
    ],
)
def test_schema_rejects_malformed_bodies(
    make_settings: Callable[..., PmanSettings],
    mutate: Callable[[dict[str, Any]], Any],
    field: str,
    reason: str,
) -> None:
    body = wire(KubernetesBackend(make_settings()).build_job(job_spec()))
    mutate(body)
    causes = job_errors(body, "chris")
    assert causes, "the fake accepted a malformed Job"
    assert any(field in c.field and reason in c.reason for c in causes), causes


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda j: j["metadata"].update(name="Chris_Jid"), "metadata.name"),
        (lambda j: j["metadata"].update(name="x" * 64), "metadata.name"),
        (lambda j: j["metadata"]["labels"].update(jid="a_"), "metadata.labels[jid]"),
        (lambda j: j["metadata"]["labels"].update({"bad key!": "x"}), "metadata.labels"),
        (lambda j: pod_spec(j).update(restartPolicy="Always"), "restartPolicy"),
        (lambda j: pod_spec(j)["volumes"].pop(), "volumeMounts[1].name"),
        (
            lambda j: pod_spec(j)["containers"][0]["resources"]["limits"].update(memory="64MB"),
            "limits[memory]",
        ),
        (lambda j: pod_spec(j).update(tolerations=[{"operator": "Maybe"}]), "operator"),
    ],
)
def test_server_side_checks_reject_invalid_jobs(
    make_settings: Callable[..., PmanSettings], mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    body = wire(KubernetesBackend(make_settings()).build_job(job_spec()))
    mutate(body)
    causes = job_errors(body, "chris")
    assert any(field in c.field for c in causes), causes


def test_schema_walks_every_shape() -> None:
    assert schema_errors({"items": []}, "V1JobList") == []
    assert [c.field for c in schema_errors({}, "V1JobList")] == ["items"]
    assert schema_errors({"metadata": {"continue": "3"}, "items": []}, "V1JobList") == []
    causes = schema_errors(
        {"items": [{"status": {"conditions": [{"type": "Complete"}]}}]}, "V1JobList"
    )
    assert [c.field for c in causes] == ["items[0].status.conditions[0].status"]
    assert schema_errors({"startTime": "yesterday"}, "V1JobStatus")[0].field == "startTime"
    assert schema_errors({"labels": {"a": 1}}, "V1ObjectMeta")[0].field == "labels[a]"
    assert schema_errors(None, "V1Job")[0].reason == "FieldValueTypeInvalid"
    # null counts as absent, as for the API server
    assert schema_errors({"active": None}, "V1JobStatus") == []


async def test_fake_answers_malformed_bodies_422(kube: FakeKube) -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x", "bogus": True},
        "spec": {"template": {"spec": {"containers": [{"image": "busybox"}]}}},
    }
    headers = {"Authorization": f"Bearer {kube.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        url = f"{kube.url}/apis/batch/v1/namespaces/{kube.namespace}/jobs"
        async with http.post(url, json=body) as resp:
            assert resp.status == 422
            status = await resp.json()
        async with http.get(url) as resp:
            assert (await resp.json())["items"] == []
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    assert status["message"].startswith('Job.batch "x" is invalid: ')
    fields = {c["field"] for c in status["details"]["causes"]}
    assert fields == {"metadata.bogus", "spec.template.spec.containers[0].name"}


# -- the Job built ------------------------------------------------------------------------


async def test_job_spec(make_backend: Callable[..., Any], kube: FakeKube, tmp_path: Path) -> None:
    backend = await make_backend(
        kubernetes_tolerations=[GPU_TOLERATION],
        kubernetes_node_selector={"accelerator": "nvidia"},
        kubernetes_image_pull_secret="regcred",
        max_run_seconds=90.5,
        kubernetes_ttl_seconds=600,
        shm_size_mib=256,
    )
    spec = job_spec(gpu_limit=2)
    (tmp_path / "store").mkdir()
    info = await backend.schedule(spec)
    assert info.jid == spec.jid
    assert info.status is JobStatus.NOT_STARTED
    assert info.cmd == "dircopy --verbose /share/incoming /share/outgoing"
    assert kube.requests_to("POST", "/jobs")[-1].query["fieldValidation"] == "Strict"

    job = posted_job(kube)
    meta = job["metadata"]
    assert meta["name"] == "chris-jid-1"
    assert meta["namespace"] == kube.namespace
    assert meta["labels"] == {"team": "neuro", LABEL_JID: "chris-jid-1", LABEL_MANAGED_BY: "pman"}
    assert meta["annotations"] == {ANNOTATION_JID: "chris-jid-1"}
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["activeDeadlineSeconds"] == 91
    assert job["spec"]["template"]["metadata"]["labels"] == meta["labels"]

    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["tolerations"] == [GPU_TOLERATION]
    assert pod["nodeSelector"] == {"accelerator": "nvidia"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 5
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": DEFAULT_UID,
        "runAsGroup": DEFAULT_UID,
        "fsGroup": DEFAULT_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == spec.image
    assert container["command"] == ["dircopy", "--verbose", "/share/incoming", "/share/outgoing"]
    assert "args" not in container
    assert container["env"] == [{"name": "CHRIS_JID", "value": "chris-jid-1"}]
    assert container["resources"] == {
        "limits": {"cpu": "500m", "memory": "64Mi", "nvidia.com/gpu": "2"},
        "requests": {"cpu": "500m", "memory": "64Mi"},
    }
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    store = tmp_path / "store"
    assert pod["volumes"] == [
        {
            "name": "incoming",
            "hostPath": {"path": f"{store}/key-chris-jid-1/incoming", "type": "DirectoryOrCreate"},
        },
        {
            "name": "outgoing",
            "hostPath": {"path": f"{store}/key-chris-jid-1/outgoing", "type": "DirectoryOrCreate"},
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
    ]
    assert container["volumeMounts"] == [
        {"name": "incoming", "mountPath": "/share/incoming", "readOnly": True},
        {"name": "outgoing", "mountPath": "/share/outgoing"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    # pman shares the storebase here: it made the dirs, so kubelet does not make them as root
    assert (store / spec.output_dir).is_dir()


async def test_engine_storebase_and_gpu_resource_name(
    make_backend: Callable[..., Any], kube: FakeKube
) -> None:
    backend = await make_backend(
        storebase_host_path=Path("/srv/chris/store"), kubernetes_gpu_resource="amd.com/gpu"
    )
    await backend.schedule(job_spec(gpu_limit=1))
    pod = pod_spec(posted_job(kube))
    assert pod["volumes"][0]["hostPath"]["path"] == "/srv/chris/store/key-chris-jid-1/incoming"
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in limits


async def test_pvc_storage(make_backend: Callable[..., Any], kube: FakeKube) -> None:
    backend = await make_backend(kubernetes_storage="pvc", kubernetes_pvc_name="storebase-claim")
    await backend.schedule(job_spec())
    pod = pod_spec(posted_job(kube))
    assert pod["volumes"] == [
        {"name": "storebase", "persistentVolumeClaim": {"claimName": "storebase-claim"}}
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {
            "name": "storebase",
            "mountPath": "/share/incoming",
            "subPath": "key-chris-jid-1/incoming",
            "readOnly": True,
        },
        {
            "name": "storebase",
            "mountPath": "/share/outgoing",
            "subPath": "key-chris-jid-1/outgoing",
        },
    ]


async def test_limits_off_no_deadline_no_ttl(
    make_backend: Callable[..., Any], kube: FakeKube
) -> None:
    backend = await make_backend(ignore_limits=True, max_run_seconds=0, kubernetes_ttl_seconds=0)
    await backend.schedule(job_spec(gpu_limit=1))
    job = posted_job(kube)
    assert "resources" not in pod_spec(job)["containers"][0]
    assert "activeDeadlineSeconds" not in job["spec"]
    # 0 would make the cluster delete the Job before pfcon reads its outcome
    assert "ttlSecondsAfterFinished" not in job["spec"]


async def test_parallel_workers_and_reserved_jids(
    backend: KubernetesBackend, kube: FakeKube
) -> None:
    await backend.schedule(job_spec(number_of_workers=3))
    spec = posted_job(kube)["spec"]
    assert spec["parallelism"] == spec["completions"] == 3
    with pytest.raises(InvalidJob, match="reserved"):
        await backend.schedule(job_spec("jobs"))


@pytest.mark.parametrize(
    ("user", "expected"),
    [(None, (DEFAULT_UID, DEFAULT_UID)), ("2000", (2000, 2000)), ("2000:3000", (2000, 3000))],
)
async def test_container_user(
    make_backend: Callable[..., Any],
    kube: FakeKube,
    user: str | None,
    expected: tuple[int, int],
) -> None:
    assert parse_user(user) == expected
    backend = await make_backend(container_user=user)
    await backend.schedule(job_spec())
    security = pod_spec(posted_job(kube))["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == expected
    assert security["fsGroup"] == expected[1]
    assert security["runAsNonRoot"] is True


def test_settings_that_cannot_work(make_settings: Callable[..., PmanSettings]) -> None:
    with pytest.raises(BackendError, match="PMAN_KUBERNETES_PVC_NAME"):
        KubernetesBackend(make_settings(kubernetes_storage="pvc"))
    with pytest.raises(BackendError, match="non-root"):
        KubernetesBackend(make_settings(container_user="0:0"))
    with pytest.raises(BackendError, match=r"TOLERATIONS\[1\]: unknown field"):
        KubernetesBackend(make_settings(kubernetes_tolerations=[GPU_TOLERATION, {"kee": "x"}]))
    with pytest.raises(BackendError, match=r"TOLERATIONS\[0\]"):
        KubernetesBackend(make_settings(kubernetes_tolerations=[{"tolerationSeconds": "soon"}]))
    # the registry's factory builds this backend
    assert isinstance(create_backend(make_settings()), KubernetesBackend)


def test_job_names() -> None:
    assert job_name("chris-jid-42") == "chris-jid-42"
    names = {job_name(j) for j in ("Chris_Jid", "chris-jid", "chris_jid", "CHRIS_JID", "x" * 128)}
    assert len(names) == 5
    for jid in ("Chris_Jid", "a.b", "x" * 128, "jid-", "A" * 64, "9_", "Z"):
        name = job_name(jid)
        assert dns_label_errors(name, "metadata.name") == [], name
        assert name == job_name(jid)  # deterministic
    assert job_name("x" * 128).startswith("x" * 40)


async def test_jids_that_are_no_dns_names(backend: KubernetesBackend, kube: FakeKube) -> None:
    jid = JobId("Chris_Jid.7-" + "x" * 70)
    await backend.schedule(job_spec(jid))
    meta = posted_job(kube)["metadata"]
    assert meta["name"] == job_name(jid) != jid
    assert meta["annotations"][ANNOTATION_JID] == jid
    assert meta["labels"][LABEL_JID] == meta["name"]
    assert (await backend.info(jid)).jid == jid
    assert [j.jid for j in await backend.list_jobs()] == [jid]
    # a jid differing only in case is another job
    with pytest.raises(JobNotFound):
        await backend.info(JobId(jid.lower()))


async def test_argv_and_env_reach_the_plugin_verbatim(
    backend: KubernetesBackend, kube: FakeKube
) -> None:
    tricky = "$(HOME) costs $$5; `id`"
    info = await backend.schedule(job_spec(args=[tricky], env=["GREETING=$(USER) says hi=there"]))
    container = pod_spec(posted_job(kube))["containers"][0]
    # Kubernetes expands $(VAR) and $$: every $ is doubled so none of that happens
    assert container["command"][1] == "$$(HOME) costs $$$$5; `id`"
    assert container["env"] == [{"name": "GREETING", "value": "$$(USER) says hi=there"}]
    assert tricky in info.cmd


# -- status ----------------------------------------------------------------------------------


async def test_status_sequence_to_success(backend: KubernetesBackend, kube: FakeKube) -> None:
    spec = job_spec()
    await backend.schedule(spec)
    info = await backend.info(spec.jid)
    assert (info.status, info.message) == (JobStatus.NOT_STARTED, "waiting for its pod")

    kube.pending(spec.jid, "ErrImagePull", "pull access denied")
    info = await backend.info(spec.jid)
    assert info.status is JobStatus.NOT_STARTED
    assert info.message == "pending: ErrImagePull: pull access denied"
    assert info.logs == ""

    kube.running(spec.jid, logs="step 1\n")
    info = await backend.info(spec.jid)
    assert (info.status, info.message, info.exit_code) == (JobStatus.STARTED, "running", None)
    assert info.logs == "step 1\n"
    assert info.timestamp

    kube.succeed(spec.jid, logs="step 1\nstep 2\n")
    info = await backend.info(spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY
    assert info.exit_code == 0
    assert info.logs == "step 1\nstep 2\n"
    assert info.timestamp == kube.job(spec.jid)["status"]["completionTime"].replace("Z", "+00:00")


async def test_unschedulable_gpu_pod_is_not_started(
    backend: KubernetesBackend, kube: FakeKube
) -> None:
    await backend.schedule(job_spec(gpu_limit=1))
    why = "0/3 nodes are available: 3 node(s) had untolerated taint {nvidia.com/gpu: }."
    kube.unschedulable("chris-jid-1", why)
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.NOT_STARTED
    assert info.message == f"pending: Unschedulable: {why}"


async def test_failure_exit_code(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1")
    kube.fail("chris-jid-1", exit_code=3, logs="oops\n")
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert (info.exit_code, info.message, info.logs) == (3, "exited with code 3", "oops\n")


async def test_start_error_names_the_reason(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec(entrypoint=["/no/such/program"]))
    why = 'exec: "/no/such/program": stat /no/such/program: no such file or directory'
    kube.fail("chris-jid-1", exit_code=128, reason="StartError", message=why)
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.message == f"exited with code 128 (StartError: {why})"


async def test_deadline_exceeded(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1")
    kube.exceed_deadline("chris-jid-1")
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.message == MAX_RUN_MESSAGE
    assert info.exit_code is None  # the controller deleted the pod


async def test_out_of_memory(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1")
    kube.oom_kill("chris-jid-1", logs="allocating")
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.message == OOM_MESSAGE
    assert info.exit_code == 137
    assert info.logs == f"allocating\n{OOM_MESSAGE}\n"
    (listed,) = await backend.list_jobs()
    assert listed.message == OOM_MESSAGE


_T = "2025-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("job_status", "pod", "expected"),
    [
        # pman #225: finished, yet no condition and `active` absent
        ({"succeeded": 1, "startTime": _T, "completionTime": _T}, None, "success"),
        ({"succeeded": 1}, None, "success"),
        # the Complete condition with every counter None
        ({"conditions": [FakeKube.condition("Complete")]}, None, "success"),
        # Kubernetes 1.31+: SuccessCriteriaMet before Complete, pods still terminating
        (
            {"active": 1, "conditions": [FakeKube.condition("SuccessCriteriaMet")]},
            "Running",
            "success",
        ),
        ({"conditions": [FakeKube.condition("FailureTarget", "DeadlineExceeded")]}, None, "error"),
        ({"failed": 1}, "Failed", "error"),
        # the Job's status lags behind its pod's
        ({}, "Succeeded", "success"),
        ({}, "Failed", "error"),
        ({}, "Running", "started"),
        ({"active": 1}, None, "started"),
        ({"active": 1, "ready": 1}, "Running", "started"),
        # a false condition decides nothing
        ({"active": 1, "conditions": [{"type": "Failed", "status": "False"}]}, None, "started"),
        ({}, None, "notStarted"),
    ],
)
async def test_never_undefined(
    backend: KubernetesBackend,
    kube: FakeKube,
    job_status: dict[str, Any],
    pod: str | None,
    expected: str,
) -> None:
    await backend.schedule(job_spec())
    if pod is not None:
        states: dict[str, dict[str, Any]] = {
            "Running": {"running": {}},
            "Succeeded": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            "Failed": {"terminated": {"exitCode": 2, "reason": "Error"}},
        }
        kube.add_pod("chris-jid-1", phase=pod, state=states[pod])
    kube.set_job_status("chris-jid-1", job_status)
    info = await backend.info(JobId("chris-jid-1"))
    wanted = {
        "success": JobStatus.FINISHED_SUCCESSFULLY,
        "error": JobStatus.FINISHED_WITH_ERROR,
        "started": JobStatus.STARTED,
        "notStarted": JobStatus.NOT_STARTED,
    }[expected]
    assert info.status is wanted, info
    if wanted is JobStatus.FINISHED_SUCCESSFULLY:
        assert info.exit_code == 0
    if job_status.get("conditions", [{}])[0].get("reason") == "DeadlineExceeded":
        assert info.message == MAX_RUN_MESSAGE


async def test_long_poll_sees_the_change(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1")
    waiter = asyncio.create_task(
        backend.wait_for_change(JobId("chris-jid-1"), JobStatus.STARTED, 20)
    )
    await asyncio.sleep(0.2)
    assert not waiter.done()
    kube.succeed("chris-jid-1", logs="done\n")
    async with asyncio.timeout(5):
        info = await waiter
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY
    assert info.logs == "done\n"


# -- logs ----------------------------------------------------------------------------------


async def test_logs_tail_raw_bytes_and_json_lines(
    make_backend: Callable[..., Any], kube: FakeKube
) -> None:
    backend = await make_backend(job_logs_tail=2)
    await backend.schedule(job_spec())
    kube.succeed("chris-jid-1", logs=b'one\n{"two": 2}\nthree \xff\n')
    info = await backend.info(JobId("chris-jid-1"))
    # a JSON line stays as printed; bytes that are not UTF-8 do not break the answer
    assert info.logs == '{"two": 2}\nthree \ufffd\n'
    assert kube.requests_to("GET", "/log")[-1].query == {"container": "plugin", "tailLines": "2"}


async def test_logs_of_several_workers(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec(number_of_workers=2))
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    first = kube.add_pod("chris-jid-1", phase="Succeeded", state=done, logs="a\n")
    second = kube.add_pod("chris-jid-1", phase="Running", state={"running": {}}, logs="b\n")
    kube.set_job_status("chris-jid-1", {"active": 1, "ready": 1, "succeeded": 1})
    info = await backend.info(JobId("chris-jid-1"))
    assert info.status is JobStatus.STARTED  # one of two completions
    assert f"--- pod {first} ---\na\n" in info.logs
    assert f"--- pod {second} ---\nb\n" in info.logs


async def test_no_logs_requested(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1", logs="x\n")
    assert (await backend.info(JobId("chris-jid-1"), logs=False)).logs == ""
    assert kube.requests_to("GET", "/log") == []


# -- remove, list, restart -----------------------------------------------------------------


async def test_remove(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    kube.running("chris-jid-1")
    uid = kube.job("chris-jid-1")["metadata"]["uid"]
    waiter = asyncio.create_task(
        backend.wait_for_change(JobId("chris-jid-1"), JobStatus.STARTED, 20)
    )
    await asyncio.sleep(0.1)
    await backend.remove(JobId("chris-jid-1"))
    (delete,) = kube.requests_to("DELETE")
    assert delete.body == {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    assert kube.jobs == {} and kube.pods == {}
    with pytest.raises(JobNotFound):
        async with asyncio.timeout(5):
            await waiter
    with pytest.raises(JobNotFound):
        await backend.info(JobId("chris-jid-1"))
    with pytest.raises(JobNotFound):
        await backend.remove(JobId("chris-jid-1"))


async def test_list_jobs_and_a_fresh_backend_finds_them(
    make_backend: Callable[..., Any], kube: FakeKube
) -> None:
    first = await make_backend()
    await first.schedule(job_spec("chris-jid-1"))
    await first.schedule(job_spec("chris-jid-2"))
    kube.running("chris-jid-1")
    kube.fail("chris-jid-2", exit_code=4)
    await first.close()

    fresh = await make_backend()
    listed = {j.jid: j for j in await fresh.list_jobs()}
    assert set(listed) == {"chris-jid-1", "chris-jid-2"}
    assert listed[JobId("chris-jid-1")].status is JobStatus.STARTED
    assert listed[JobId("chris-jid-2")].status is JobStatus.FINISHED_WITH_ERROR
    assert listed[JobId("chris-jid-2")].exit_code == 4
    assert kube.requests_to("GET", "/jobs")[-1].query["labelSelector"] == (
        "org.chrisproject.managed-by=pman"
    )
    assert (await fresh.info(JobId("chris-jid-2"))).exit_code == 4


async def test_list_pages(
    make_backend: Callable[..., Any], kube: FakeKube, monkeypatch: Any
) -> None:
    monkeypatch.setattr("pman.backends.kubernetes.LIST_LIMIT", 2)
    backend = await make_backend()
    for i in range(5):
        await backend.schedule(job_spec(f"chris-jid-{i}"))
    assert len(await backend.list_jobs()) == 5
    assert any("continue" in r.query for r in kube.requests_to("GET", "/jobs"))


async def test_foreign_jobs_are_not_jobs(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec("chris-jid-9"))
    job = kube.job("chris-jid-9")
    del job["metadata"]["labels"][LABEL_MANAGED_BY]
    with pytest.raises(JobNotFound, match="not managed by pman"):
        await backend.info(JobId("chris-jid-9"))
    assert await backend.list_jobs() == []
    with pytest.raises(JobConflict, match="already exists"):
        await backend.schedule(job_spec("chris-jid-9"))
    with pytest.raises(JobNotFound):
        await backend.remove(JobId("chris-jid-9"))
    assert kube.requests_to("DELETE") == []


async def test_duplicate_jid_is_a_conflict(backend: KubernetesBackend) -> None:
    await backend.schedule(job_spec())
    with pytest.raises(JobConflict):
        await backend.schedule(job_spec())


# -- errors -------------------------------------------------------------------------------


async def test_refused_job_is_invalid(make_backend: Callable[..., Any], kube: FakeKube) -> None:
    backend = await make_backend(job_labels={"team": "neuro science!"})
    with pytest.raises(InvalidJob) as err:
        await backend.schedule(job_spec())
    assert "metadata.labels[team]" in err.value.message
    assert err.value.status == 422
    assert kube.jobs == {}


@pytest.mark.parametrize(
    ("code", "method", "error"),
    [
        (409, "POST", JobConflict),
        (500, "POST", BackendError),
        (422, "POST", InvalidJob),
        (400, "POST", InvalidJob),
        (403, "GET", BackendError),
        (500, "GET", BackendError),
        (404, "GET", JobNotFound),
        # on create, a 404 says the namespace is missing: the site's fault, not the job's
        (404, "POST", BackendError),
    ],
)
async def test_api_errors_are_translated(
    backend: KubernetesBackend, kube: FakeKube, code: int, method: str, error: type[Exception]
) -> None:
    if method == "GET":
        await backend.schedule(job_spec())
    kube.fail_next(code, "the fake says no", method=method)
    with pytest.raises(error) as err:
        if method == "POST":
            await backend.schedule(job_spec())
        else:
            await backend.info(JobId("chris-jid-1"))
    assert "the fake says no" in str(err.value) or (code, method) == (404, "GET")
    assert isinstance(err.value.__cause__, ApiException)


async def test_unreachable_api_server(
    make_settings: Callable[..., PmanSettings], kube: FakeKube, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    kubeconfig = kube.write_kubeconfig(tmp_path / "closed", url=closed)
    backend = KubernetesBackend(make_settings(kubeconfig=kubeconfig))
    with pytest.raises(BackendError, match="unreachable") as err:
        await backend.start()
    assert isinstance(err.value.__cause__, urllib3.exceptions.HTTPError)


async def test_api_server_going_away(backend: KubernetesBackend, kube: FakeKube) -> None:
    await backend.schedule(job_spec())
    await kube.close()
    with pytest.raises(BackendError, match="unreachable"):
        await backend.info(JobId("chris-jid-1"))


async def test_start_refused(make_settings: Callable[..., PmanSettings], kube: FakeKube) -> None:
    kube.fail_next(403, 'jobs.batch is forbidden: User "pman" cannot list resource "jobs"')
    backend = KubernetesBackend(make_settings())
    with pytest.raises(BackendError, match="forbidden"):
        await backend.start()
    kube.token = "rotated"
    with pytest.raises(BackendError, match="401"):
        await backend.start()


async def test_configuration_sources(
    make_settings: Callable[..., PmanSettings],
    kube: FakeKube,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(BackendError, match="is not a file"):
        await KubernetesBackend(make_settings(kubeconfig=tmp_path / "missing")).start()
    # no setting: $KUBECONFIG
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "from-env")))
    backend = KubernetesBackend(make_settings(kubeconfig=None))
    await backend.start()
    await backend.close()
    # neither: ~/.kube/config, else the in-cluster service account
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(BackendError, match=r"set PMAN_KUBECONFIG or \$KUBECONFIG"):
        await KubernetesBackend(make_settings(kubeconfig=None)).start()
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    kube.write_kubeconfig(tmp_path / "home" / ".kube" / "config")
    backend = KubernetesBackend(make_settings(kubeconfig=None))
    await backend.start()
    await backend.close()


async def test_used_before_start(make_settings: Callable[..., PmanSettings]) -> None:
    with pytest.raises(BackendError, match="before start"):
        await KubernetesBackend(make_settings()).info(JobId("x"))


# -- pman's HTTP API with this backend -------------------------------------------------------


async def test_pman_api_end_to_end(
    make_settings: Callable[..., PmanSettings], kube: FakeKube
) -> None:
    async with running_pman(make_settings()) as url, PmanClient(url) as client:
        assert (await client.server_info()).container_env == "kubernetes"
        spec = job_spec()
        info = await client.schedule(spec)
        assert info.status is JobStatus.NOT_STARTED
        kube.running(spec.jid, logs="working\n")
        info = await client.get(spec.jid, wait=5, known=JobStatus.NOT_STARTED)
        assert info.status is JobStatus.STARTED
        assert info.logs == "working\n"

        async def finish_soon() -> None:
            await asyncio.sleep(0.3)
            kube.succeed(spec.jid, logs="working\ndone\n")

        finisher = asyncio.create_task(finish_soon())
        info = await wait_terminal(client, spec.jid, limit=10)
        await finisher
        assert (info.status, info.exit_code) == (JobStatus.FINISHED_SUCCESSFULLY, 0)
        assert [j.jid for j in await client.list_jobs()] == [spec.jid]
        with pytest.raises(JobConflict):
            await client.schedule(spec)
        with pytest.raises(InvalidJob):
            await client.schedule(job_spec("jobs"))
        await client.delete(spec.jid)
        with pytest.raises(JobNotFound):
            await client.get(spec.jid)


# -- a real cluster, only when KUBECONFIG is set ------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="needs a Kubernetes cluster: set KUBECONFIG (and optionally "
    "PMAN_TEST_KUBERNETES_NAMESPACE, PMAN_TEST_KUBERNETES_IMAGE)",
)
class TestRealCluster:
    """A tiny job on the cluster ``$KUBECONFIG`` names (opt-in; never in CI without it)."""

    async def test_tiny_job(self, tmp_path: Path) -> None:
        settings = PmanSettings(
            backend=BackendName.KUBERNETES,
            storebase=tmp_path / "store",
            kubernetes_namespace=os.environ.get("PMAN_TEST_KUBERNETES_NAMESPACE", "default"),
            kubernetes_ttl_seconds=300,
            max_run_seconds=120,
            kill_grace_seconds=1,
        )
        backend = KubernetesBackend(settings)
        await backend.start()
        jid = JobId(f"pman-test-{uuid.uuid4().hex[:8]}")
        spec = JobSpec(
            jid=jid,
            image=os.environ.get("PMAN_TEST_KUBERNETES_IMAGE", "busybox:1.36"),
            entrypoint=["sh", "-c", 'echo "hello from $0"'],
            type=PluginType.FS,
            input_dir=f"key-{jid}/incoming",
            output_dir=f"key-{jid}/outgoing",
            cpu_limit=100,
            memory_limit=32,
        )
        try:
            await backend.schedule(spec)
            info: JobInfo = await backend.info(jid)
            async with asyncio.timeout(110):
                while not info.status.is_terminal:
                    info = await backend.wait_for_change(jid, info.status, 10)
            assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
            assert info.exit_code == 0
            assert "hello from /share/outgoing" in info.logs
            assert jid in {j.jid for j in await backend.list_jobs()}
        finally:
            try:
                await backend.remove(jid)
            finally:
                await backend.close()
