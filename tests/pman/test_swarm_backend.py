"""pman's API with the swarm backend, against a real one-node Docker Swarm.

Uses a local busybox image (no registry); every service carries a label
unique to this test session, by which the fixture removes them all, even
when a test fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from chris_sdk.descriptor import PluginType

from pman.backends.swarm import SwarmBackend, service_name, status_from_task
from pman.backends.vocabulary import OOM_MESSAGE
from pman.client import PmanClient
from pman.errors import BackendError, InvalidJob, JobConflict, JobNotFound
from pman.schema import JobId, JobSpec, JobStatus
from pman.settings import BackendName, PmanSettings
from tests.pman.conftest import running_pman, wait_terminal
from tests.pman.engine_jobs import SESSION, TEST_LABEL, busybox_job, engine_settings
from tests.support.busybox import ensure_busybox_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def swarm(swarm_manager: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The swarm's manager engine; removes this session's services afterwards."""
    yield swarm_manager
    for service in swarm_manager.services.list(filters={"label": f"{TEST_LABEL}={SESSION}"}):
        service.remove()


@pytest.fixture(scope="module")
def image(swarm: docker.DockerClient) -> str:
    return ensure_busybox_image(swarm)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., PmanSettings]:
    def make(**overrides: Any) -> PmanSettings:
        return engine_settings(tmp_path, BackendName.SWARM, **overrides)

    return make


@pytest.fixture
async def client(
    make_settings: Callable[..., PmanSettings], swarm: docker.DockerClient
) -> AsyncIterator[PmanClient]:
    async with running_pman(make_settings()) as url, PmanClient(url) as c:
        yield c


def _jid(name: str) -> str:
    return f"swarmtest-{SESSION}-{name}"


def sh_spec(name: str, image: str, script: str, **fields: Any) -> JobSpec:
    return busybox_job(_jid(name), image, script, **fields)


def _service(engine: docker.DockerClient, jid: str) -> Any:
    found = engine.services.list(filters={"label": f"org.chrisproject.jid={jid}"})
    assert len(found) == 1
    return found[0]


async def wait_status(client: PmanClient, jid: str, status: JobStatus, limit: float = 30) -> Any:
    """Long-poll until ``jid`` reports ``status``."""
    async with asyncio.timeout(limit):
        info = await client.get(jid)
        while info.status is not status:
            info = await client.get(jid, wait=5, known=info.status)
        return info


# -- against the real swarm ----------------------------------------------------------


async def test_success_with_files_in_outgoing(
    client: PmanClient, image: str, make_settings: Callable[..., PmanSettings]
) -> None:
    storebase = make_settings().storebase
    spec = sh_spec("copy", image, 'cp -r "$0"/. "$1"/ && echo copied', type=PluginType.DS)
    incoming = storebase / spec.input_dir
    incoming.mkdir(parents=True)
    (incoming / "a.txt").write_text("alpha")
    info = await client.schedule(spec)
    assert info.image == image
    info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
    assert info.exit_code == 0
    assert "copied" in info.logs
    assert (storebase / spec.output_dir / "a.txt").read_text() == "alpha"
    await client.delete(spec.jid)


async def test_limits_reservations_labels_and_mounts(
    client: PmanClient, image: str, swarm: docker.DockerClient
) -> None:
    spec = sh_spec("limits", image, "sleep 60", env=["GREETING=hi there"])
    await client.schedule(spec)
    attrs = _service(swarm, spec.jid).attrs
    assert attrs["Spec"]["Name"] == spec.jid
    assert attrs["Spec"]["Labels"]["org.chrisproject.managed-by"] == "pman"
    assert attrs["Spec"]["Labels"]["team"] == "neuro"
    assert attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    template = attrs["Spec"]["TaskTemplate"]
    assert template["RestartPolicy"]["Condition"] == "none"
    resources = template["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024}
    assert resources["Reservations"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024}
    container = template["ContainerSpec"]
    assert container["Command"] == ["sh"]
    assert container["Args"] == ["-c", "sleep 60", "/share/outgoing"]
    assert "GREETING=hi there" in container["Env"]
    assert container["Labels"]["org.chrisproject.jid"] == spec.jid
    mounts = {m["Target"]: m for m in container["Mounts"]}
    assert mounts["/share/incoming"]["ReadOnly"] is True
    assert not mounts["/share/outgoing"].get("ReadOnly")
    # the limits reach the running container
    await wait_status(client, spec.jid, JobStatus.STARTED)
    host = swarm.containers.list(filters={"label": f"org.chrisproject.jid={spec.jid}"})[0]
    assert host.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert host.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    await client.delete(spec.jid)


async def test_failure_exit_code_and_readonly_input(client: PmanClient, image: str) -> None:
    spec = sh_spec(
        "fail", image, "touch /share/incoming/x 2>/dev/null && exit 9; echo oops >&2; exit 3"
    )
    await client.schedule(spec)
    info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.exit_code == 3
    assert info.message == "exited with code 3"
    assert "oops" in info.logs
    await client.delete(spec.jid)


async def test_out_of_memory(client: PmanClient, image: str) -> None:
    spec = sh_spec("oom", image, "head -c 200m /dev/zero | tail", memory_limit=16)
    await client.schedule(spec)
    info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.exit_code == 137
    assert info.message == "out of memory (OOMKilled)"
    assert "out of memory" in info.logs
    await client.delete(spec.jid)


async def test_gpu_request_is_a_generic_resource(
    client: PmanClient, image: str, swarm: docker.DockerClient
) -> None:
    # this node advertises no GPUs: the swarm keeps the task pending and says why
    spec = sh_spec("gpu", image, "true", gpu_limit=2)
    await client.schedule(spec)
    reservations = _service(swarm, spec.jid).attrs["Spec"]["TaskTemplate"]["Resources"][
        "Reservations"
    ]
    assert reservations["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    async with asyncio.timeout(20):
        info = await client.get(spec.jid)
        while "no suitable node" not in info.message:
            await asyncio.sleep(0.2)
            info = await client.get(spec.jid)
    assert info.status is JobStatus.NOT_STARTED
    await client.delete(spec.jid)


async def test_constraints_user_and_shm(
    make_settings: Callable[..., PmanSettings], image: str, swarm: docker.DockerClient
) -> None:
    settings = make_settings(
        swarm_constraints=["node.role==manager"], container_user="1234:4321", shm_size_mib=32
    )
    async with running_pman(settings) as url, PmanClient(url) as c:
        spec = sh_spec("user", image, 'id -u > "$0/uid"; df -k /dev/shm | tail -1 > "$0/shm"')
        await c.schedule(spec)
        attrs = _service(swarm, spec.jid).attrs["Spec"]["TaskTemplate"]
        assert attrs["Placement"]["Constraints"] == ["node.role==manager"]
        assert attrs["ContainerSpec"]["User"] == "1234:4321"
        info = await wait_terminal(c, spec.jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
        outgoing = settings.storebase / spec.output_dir
        assert (outgoing / "uid").read_text().strip() == "1234"
        assert (outgoing / "shm").read_text().split()[1] == str(32 * 1024)
        await c.delete(spec.jid)


async def test_unplaceable_constraint_waits_with_reason(
    make_settings: Callable[..., PmanSettings], image: str
) -> None:
    settings = make_settings(swarm_constraints=["node.labels.chris-gpu==yes"])
    async with running_pman(settings) as url, PmanClient(url) as c:
        spec = sh_spec("nowhere", image, "true")
        await c.schedule(spec)
        async with asyncio.timeout(20):
            info = await c.get(spec.jid)
            while "no suitable node" not in info.message:
                await asyncio.sleep(0.2)
                info = await c.get(spec.jid)
        assert info.status is JobStatus.NOT_STARTED
        await c.delete(spec.jid)


async def test_reconciliation_after_restart(
    make_settings: Callable[..., PmanSettings], image: str
) -> None:
    settings = make_settings()
    done = sh_spec("r-done", image, "exit 4")
    running = sh_spec("r-run", image, 'sleep 2; echo late > "$0/late.txt"')
    async with running_pman(settings) as url, PmanClient(url) as c:
        await c.schedule(done)
        await c.schedule(running)
        await wait_terminal(c, done.jid)
        await wait_status(c, running.jid, JobStatus.STARTED)
    # pman is gone while the job runs; a new one finds both jobs by label
    async with running_pman(settings) as url, PmanClient(url) as c:
        info = await c.get(done.jid)
        assert info.status is JobStatus.FINISHED_WITH_ERROR
        assert info.exit_code == 4
        jids = {j.jid for j in await c.list_jobs()}
        assert {done.jid, running.jid} <= jids
        info = await wait_terminal(c, running.jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
        assert (settings.storebase / running.output_dir / "late.txt").read_text() == "late\n"
        await c.delete(running.jid)
        await c.delete(done.jid)


async def test_delete_removes_the_service(
    client: PmanClient, image: str, swarm: docker.DockerClient
) -> None:
    spec = sh_spec("del", image, "sleep 300")
    await client.schedule(spec)
    await client.delete(spec.jid)
    assert swarm.services.list(filters={"label": f"org.chrisproject.jid={spec.jid}"}) == []
    with pytest.raises(JobNotFound):
        await client.get(spec.jid)
    with pytest.raises(JobNotFound):
        await client.delete(spec.jid)


async def test_refusals_and_conflicts(client: PmanClient, image: str) -> None:
    with pytest.raises(InvalidJob) as err:
        await client.schedule(sh_spec("workers", image, "true", number_of_workers=2))
    assert "number_of_workers" in err.value.message
    with pytest.raises(InvalidJob) as err:
        await client.schedule(sh_spec("noimage", "chris-test/no-such-image:0", "true"))
    assert "cannot be pulled" in err.value.message
    spec = sh_spec("dup", image, "sleep 300")
    await client.schedule(spec)
    with pytest.raises(JobConflict):
        await client.schedule(spec)
    await client.delete(spec.jid)


async def test_foreign_service_is_not_a_job(
    client: PmanClient, image: str, swarm: docker.DockerClient
) -> None:
    name = _jid("foreign")
    swarm.services.create(image, ["sleep", "300"], name=name, labels={TEST_LABEL: SESSION})
    with pytest.raises(JobNotFound):
        await client.get(name)
    # its name is taken: the swarm refuses the job's service, and pman says so
    with pytest.raises(JobConflict):
        await client.schedule(sh_spec("foreign", image, "true"))


async def test_jid_that_is_no_service_name(client: PmanClient, image: str) -> None:
    spec = sh_spec("odd.name_with.dots", image, "echo ok")
    assert service_name(spec.jid) != spec.jid
    await client.schedule(spec)
    info = await wait_terminal(client, spec.jid)
    assert info.jid == spec.jid
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY
    await client.delete(spec.jid)


async def test_max_run_time(make_settings: Callable[..., PmanSettings], image: str) -> None:
    settings = make_settings(max_run_seconds=2, kill_grace_seconds=0)
    async with running_pman(settings) as url, PmanClient(url) as c:
        spec = sh_spec("slow", image, "sleep 300")
        await c.schedule(spec)
        info = await wait_terminal(c, spec.jid, limit=40)
        assert info.status is JobStatus.FINISHED_WITH_ERROR
        assert info.message == "exceeded max run time"
        await c.delete(spec.jid)


async def test_not_a_manager_is_refused(make_settings: Callable[..., PmanSettings]) -> None:
    class _NoSwarm:
        def ping(self) -> bool:
            return True

        def info(self) -> dict[str, Any]:
            return {"Swarm": {"LocalNodeState": "inactive"}}

        def close(self) -> None:
            pass

    backend = SwarmBackend(make_settings(), client_factory=lambda: _NoSwarm())  # type: ignore[arg-type,return-value]
    with pytest.raises(BackendError) as err:
        await backend.start()
    assert "docker swarm init" in err.value.message
    await backend.close()


# -- status mapping (no engine) ---------------------------------------------------------


def _task(state: str, exit_code: int | None = None, err: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Err": err}
    if exit_code is not None:
        status["ContainerStatus"] = {"ExitCode": exit_code, "ContainerID": "c1"}
    return {"Status": status}


@pytest.mark.parametrize(
    ("task", "labels", "oom", "expected"),
    [
        (None, {}, None, (JobStatus.NOT_STARTED, "no task yet")),
        (
            None,
            {"org.chrisproject.stopped": "max-run-time"},
            None,
            (JobStatus.FINISHED_WITH_ERROR, "exceeded max run time"),
        ),
        (
            _task("running"),
            {"org.chrisproject.stopped": "max-run-time"},
            None,
            (JobStatus.STARTED, "running"),
        ),
        (
            _task("pending", err="no suitable node (insufficient resources on 1 node)"),
            {},
            None,
            (JobStatus.NOT_STARTED, "pending: no suitable node (insufficient resources on 1 node)"),
        ),
        (_task("preparing"), {}, None, (JobStatus.NOT_STARTED, "preparing")),
        (_task("running"), {}, None, (JobStatus.STARTED, "running")),
        (_task("complete", 0), {}, None, (JobStatus.FINISHED_SUCCESSFULLY, "complete")),
        (_task("failed", 2), {}, None, (JobStatus.FINISHED_WITH_ERROR, "exited with code 2")),
        (_task("failed", 137), {}, None, (JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE)),
        (_task("failed", 137), {}, True, (JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE)),
        (_task("failed", 137), {}, False, (JobStatus.FINISHED_WITH_ERROR, "exited with code 137")),
        (_task("failed", 1), {}, True, (JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE)),
        (_task("failed", 1), {}, None, (JobStatus.FINISHED_WITH_ERROR, "exited with code 1")),
        (
            _task("shutdown", 137),
            {"org.chrisproject.stopped": "max-run-time"},
            None,
            (JobStatus.FINISHED_WITH_ERROR, "exceeded max run time"),
        ),
        (
            _task("rejected", err="No such image: x"),
            {},
            None,
            (JobStatus.FINISHED_WITH_ERROR, "rejected: No such image: x"),
        ),
        (_task("shutdown"), {}, None, (JobStatus.FINISHED_WITH_ERROR, "shutdown")),
    ],
)
def test_status_from_task(
    task: dict[str, Any] | None,
    labels: dict[str, str],
    oom: bool | None,
    expected: tuple[JobStatus, str],
) -> None:
    assert status_from_task(task, labels, oom) == expected


@pytest.mark.parametrize(
    "jid", ["chris-jid-1", "a.b", "x_y", "-" * 3 + "z", "a" * 128, "UPPER.case_mixed-1"]
)
def test_service_names_are_valid_and_distinct(jid: str) -> None:
    import re

    name = service_name(JobId(jid))
    assert len(name) <= 63
    assert re.match(r"^[A-Za-z0-9](?:[-_]*[A-Za-z0-9]+)*$", name)
    assert service_name(JobId(jid)) == name
    assert service_name(JobId(jid + "x")) != name
