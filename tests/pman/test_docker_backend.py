"""pman's API with the docker backend, against a real Docker engine.

Uses a local busybox image (no registry); every container carries a label
unique to this test session, by which the fixture removes them all, even
when a test fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from chris_sdk.descriptor import PluginType

from pman.client import PmanClient
from pman.errors import InvalidJob, JobConflict, JobNotFound
from pman.schema import JobSpec, JobStatus
from pman.settings import BackendName, PmanSettings
from tests.pman.conftest import running_pman, wait_terminal
from tests.pman.engine_jobs import SESSION, TEST_LABEL, busybox_job, engine_settings
from tests.support.busybox import ensure_busybox_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine(docker_engine: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The engine; removes this session's containers afterwards."""
    yield docker_engine
    for container in docker_engine.containers.list(
        all=True, filters={"label": f"{TEST_LABEL}={SESSION}"}
    ):
        container.remove(force=True)


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> str:
    return ensure_busybox_image(engine)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., PmanSettings]:
    def make(**overrides: Any) -> PmanSettings:
        return engine_settings(tmp_path, BackendName.DOCKER, **overrides)

    return make


@pytest.fixture
async def client(
    make_settings: Callable[..., PmanSettings], engine: docker.DockerClient
) -> AsyncIterator[PmanClient]:
    async with running_pman(make_settings()) as url, PmanClient(url) as c:
        yield c


def _jid(name: str) -> str:
    return f"pmantest-{SESSION}-{name}"


def sh_spec(name: str, image: str, script: str, **fields: Any) -> JobSpec:
    return busybox_job(_jid(name), image, script, **fields)


async def test_success_with_files_in_outgoing(
    client: PmanClient, image: str, make_settings: Callable[..., PmanSettings]
) -> None:
    storebase = make_settings().storebase
    # ds: $0 is /share/incoming, $1 is /share/outgoing
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


async def test_args_arrive_verbatim(
    client: PmanClient, image: str, make_settings: Callable[..., PmanSettings]
) -> None:
    tricky = "; rm -rf x  and $HOME `id`"
    spec = sh_spec("args", image, 'printf "%s" "$0" > "$1/arg.txt"', args=[tricky])
    await client.schedule(spec)
    assert (await wait_terminal(client, spec.jid)).exit_code == 0
    outgoing = make_settings().storebase / spec.output_dir
    assert (outgoing / "arg.txt").read_text() == tricky


async def test_failure_exit_code_and_readonly_input(client: PmanClient, image: str) -> None:
    spec = sh_spec(
        "fail", image, "touch /share/incoming/x 2>/dev/null && exit 9; echo oops >&2; exit 3"
    )
    await client.schedule(spec)
    info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.exit_code == 3
    assert "oops" in info.logs


async def test_out_of_memory(client: PmanClient, image: str) -> None:
    spec = sh_spec("oom", image, "head -c 200m /dev/zero | tail", memory_limit=16)
    await client.schedule(spec)
    info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.message == "out of memory (OOMKilled)"


async def test_labels_limits_and_mounts(
    client: PmanClient, image: str, engine: docker.DockerClient
) -> None:
    spec = sh_spec("limits", image, "sleep 30", env=["GREETING=hi there"])
    await client.schedule(spec)
    attrs = engine.containers.get(spec.jid).attrs
    labels = attrs["Config"]["Labels"]
    assert labels["org.chrisproject.jid"] == spec.jid
    assert labels["org.chrisproject.managed-by"] == "pman"
    assert labels["team"] == "neuro"
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemorySwap"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"]["Name"] == "no"
    assert "GREETING=hi there" in attrs["Config"]["Env"]
    assert attrs["Config"]["Entrypoint"] == ["sh"]
    assert attrs["Config"]["Cmd"] == ["-c", "sleep 30", "/share/outgoing"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/share/incoming"]["RW"] is False
    assert mounts["/share/outgoing"]["RW"] is True
    await client.delete(spec.jid)


async def test_ignore_limits(
    make_settings: Callable[..., PmanSettings], image: str, engine: docker.DockerClient
) -> None:
    async with running_pman(make_settings(ignore_limits=True)) as url, PmanClient(url) as c:
        spec = sh_spec("nolimits", image, "true")
        await c.schedule(spec)
        host = engine.containers.get(spec.jid).attrs["HostConfig"]
        assert host["Memory"] == 0
        assert host["NanoCpus"] == 0
        await c.delete(spec.jid)


async def test_no_pull_when_disabled(
    make_settings: Callable[..., PmanSettings], image: str
) -> None:
    async with running_pman(make_settings(pull_images=False)) as url, PmanClient(url) as c:
        with pytest.raises(InvalidJob) as err:
            await c.schedule(sh_spec("nopull", "chris-test/no-such-image:0", "true"))
        assert "image not found" in err.value.message


async def test_user_and_shm_size(
    make_settings: Callable[..., PmanSettings], image: str, engine: docker.DockerClient
) -> None:
    settings = make_settings(container_user="1234:4321", shm_size_mib=32)
    async with running_pman(settings) as url, PmanClient(url) as c:
        spec = sh_spec("user", image, 'id -u > "$0/uid"; df -k /dev/shm | tail -1 > "$0/shm"')
        await c.schedule(spec)
        attrs = engine.containers.get(spec.jid).attrs
        assert attrs["Config"]["User"] == "1234:4321"
        assert attrs["HostConfig"]["ShmSize"] == 32 * 1024 * 1024
        info = await wait_terminal(c, spec.jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
        outgoing = settings.storebase / spec.output_dir
        assert (outgoing / "uid").read_text().strip() == "1234"
        assert (outgoing / "shm").read_text().split()[1] == str(32 * 1024)
        await c.delete(spec.jid)


async def test_reconciliation_after_restart(
    make_settings: Callable[..., PmanSettings], image: str
) -> None:
    settings = make_settings()
    done, running = sh_spec("r-done", image, "exit 4"), sh_spec("r-run", image, "sleep 300")
    async with running_pman(settings) as url, PmanClient(url) as c:
        await c.schedule(done)
        await c.schedule(running)
        await wait_terminal(c, done.jid)
    async with running_pman(settings) as url, PmanClient(url) as c:
        info = await c.get(done.jid)
        assert info.status is JobStatus.FINISHED_WITH_ERROR
        assert info.exit_code == 4
        assert (await c.get(running.jid)).status is JobStatus.STARTED
        jids = {j.jid for j in await c.list_jobs()}
        assert {done.jid, running.jid} <= jids
        await c.delete(running.jid)
        await c.delete(done.jid)


async def test_delete_removes_the_container(
    client: PmanClient, image: str, engine: docker.DockerClient
) -> None:
    spec = sh_spec("del", image, "sleep 300")
    await client.schedule(spec)
    assert (await client.get(spec.jid)).status is JobStatus.STARTED
    await client.delete(spec.jid)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(spec.jid)
    with pytest.raises(JobNotFound):
        await client.get(spec.jid)
    with pytest.raises(JobNotFound):
        await client.delete(spec.jid)


async def test_refusals(client: PmanClient, image: str) -> None:
    with pytest.raises(InvalidJob) as err:
        await client.schedule(sh_spec("workers", image, "true", number_of_workers=2))
    assert "number_of_workers" in err.value.message
    with pytest.raises(InvalidJob) as err:
        await client.schedule(sh_spec("noimage", "chris-test/no-such-image:0", "true"))
    # the engine tried to pull it (no registry reachable here) and says so
    assert "not found on the engine and cannot be pulled" in err.value.message
    with pytest.raises(InvalidJob) as err:
        await client.schedule(sh_spec("noexec", image, "", entrypoint=["/no/such/program"]))
    assert err.value.status == 422
    with pytest.raises(JobNotFound):
        await client.get(_jid("noexec"))


async def test_duplicate_jid_is_409(client: PmanClient, image: str) -> None:
    spec = sh_spec("dup", image, "sleep 300")
    await client.schedule(spec)
    with pytest.raises(JobConflict):
        await client.schedule(spec)
    await client.delete(spec.jid)


async def test_foreign_container_is_not_a_job(
    client: PmanClient, image: str, engine: docker.DockerClient
) -> None:
    name = _jid("foreign")
    engine.containers.create(image, ["true"], name=name, labels={TEST_LABEL: SESSION})
    with pytest.raises(JobNotFound):
        await client.get(name)
    with pytest.raises(JobConflict):
        await client.schedule(sh_spec("foreign", image, "true"))


async def test_max_run_time(make_settings: Callable[..., PmanSettings], image: str) -> None:
    settings = make_settings(max_run_seconds=1, kill_grace_seconds=0)
    async with running_pman(settings) as url, PmanClient(url) as c:
        spec = sh_spec("slow", image, "sleep 300")
        await c.schedule(spec)
        info = await wait_terminal(c, spec.jid, limit=30)
        assert info.status is JobStatus.FINISHED_WITH_ERROR
        assert info.message == "exceeded max run time"
        await c.delete(spec.jid)
