"""pman's API with the local backend: real server, real client, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from chris_sdk.descriptor import PluginType

from pman.client import PmanClient
from pman.errors import (
    InvalidJob,
    JobConflict,
    JobNotFound,
    PmanUnavailable,
    Unauthorized,
)
from pman.schema import JobStatus
from pman.settings import PmanSettings
from tests.pman.conftest import (
    COPY_SCRIPT,
    GATE_SCRIPT,
    Pman,
    process_gone,
    python_spec,
    read_pid,
    running_pman,
    wait_for,
    wait_terminal,
)
from tests.support.components import free_port


async def test_server_info_and_health(pman: Pman) -> None:
    info = await pman.client.server_info()
    assert info.container_env == "local"
    assert info.server_version
    async with aiohttp.ClientSession() as s, s.get(pman.url + "health/") as resp:
        assert resp.status == 200
        assert await resp.json() == {"health": "OK"}


async def test_copy_job_succeeds_and_outputs_appear(pman: Pman) -> None:
    spec = python_spec("copy-1", COPY_SCRIPT, type=PluginType.DS)
    incoming = pman.settings.storebase / spec.input_dir
    (incoming / "sub").mkdir(parents=True)
    (incoming / "a.txt").write_text("alpha")
    (incoming / "sub" / "b.bin").write_bytes(bytes(range(256)))

    created = await pman.client.schedule(spec)
    assert created.jid == "copy-1"
    assert created.status in (JobStatus.NOT_STARTED, JobStatus.STARTED, *_terminal())
    assert str(incoming) in created.cmd

    info = await wait_terminal(pman.client, spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info
    assert info.exit_code == 0
    outgoing = pman.settings.storebase / spec.output_dir
    assert (outgoing / "a.txt").read_text() == "alpha"
    assert (outgoing / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert info.timestamp


def _terminal() -> tuple[JobStatus, ...]:
    return (JobStatus.FINISHED_SUCCESSFULLY, JobStatus.FINISHED_WITH_ERROR)


async def test_failing_job_reports_exit_code_and_logs(pman: Pman) -> None:
    spec = python_spec("fail-3", GATE_SCRIPT, env=["EXIT=3"])
    await pman.client.schedule(spec)
    info = await wait_terminal(pman.client, spec.jid)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.exit_code == 3
    assert "to stdout" in info.logs
    assert "to stderr" in info.logs
    assert "3" in info.message


async def test_long_poll_returns_when_the_process_ends(pman: Pman, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    spec = python_spec("poll-1", GATE_SCRIPT, env=[f"GATE={gate}"])
    await pman.client.schedule(spec)
    info = await pman.client.get(spec.jid)
    assert info.status is JobStatus.STARTED

    poll = asyncio.create_task(pman.client.get(spec.jid, wait=25, known=JobStatus.STARTED))
    # the long-poll must still be waiting while the job runs
    done, _ = await asyncio.wait({poll}, timeout=0.3)
    assert not done
    gate.touch()
    info = await asyncio.wait_for(poll, timeout=20)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY
    assert "to stdout" in info.logs


async def test_long_poll_returns_at_once_when_status_differs(pman: Pman, tmp_path: Path) -> None:
    spec = python_spec("poll-2", GATE_SCRIPT, env=[f"GATE={tmp_path / 'never'}"])
    await pman.client.schedule(spec)
    # the job holds "started" for 30 s; asking with another status answers now
    info = await asyncio.wait_for(
        pman.client.get(spec.jid, wait=25, known=JobStatus.NOT_STARTED), timeout=10
    )
    assert info.status is JobStatus.STARTED
    await pman.client.delete(spec.jid)


async def test_long_poll_wait_is_capped(make_settings: Callable[..., PmanSettings]) -> None:
    settings = make_settings(max_wait_seconds=0.3)
    gate = settings.data_dir.parent / "never"
    async with running_pman(settings) as url, PmanClient(url) as client:
        spec = python_spec("capped", GATE_SCRIPT, env=[f"GATE={gate}"])
        await client.schedule(spec)
        # asks for 25 s, the server caps it at 0.3 s and answers "still started"
        info = await asyncio.wait_for(
            client.get(spec.jid, wait=25, known=JobStatus.STARTED), timeout=10
        )
        assert info.status is JobStatus.STARTED
        await client.delete(spec.jid)


async def test_long_poll_bad_query_is_400(pman: Pman) -> None:
    await pman.client.schedule(python_spec("q-1", "pass"))
    async with aiohttp.ClientSession() as s:
        for query in ("wait=abc", "wait=-1", "wait=1&status=sleeping"):
            async with s.get(f"{pman.url}q-1/?{query}") as resp:
                assert resp.status == 400, query
                body = await resp.json()
                assert body["code"] == "bad_request"
        # the legacy spelling of notStarted is understood
        async with s.get(f"{pman.url}q-1/?wait=0.1&status=notstarted") as resp:
            assert resp.status == 200


async def test_args_arrive_verbatim(pman: Pman) -> None:
    code = (
        "import json, sys, pathlib; "
        "pathlib.Path(sys.argv[-1], 'argv.json').write_text(json.dumps(sys.argv[1:]))"
    )
    tricky = ["--msg", "; rm -rf x", "--name", "two  spaces 'and' \"quotes\" $HOME `id`"]
    spec = python_spec("args-1", code, args=tricky)
    await pman.client.schedule(spec)
    info = await wait_terminal(pman.client, spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
    outgoing = pman.settings.storebase / spec.output_dir
    assert json.loads((outgoing / "argv.json").read_text()) == [*tricky, str(outgoing)]


async def test_path_flags_become_incoming(pman: Pman) -> None:
    code = (
        "import json, sys, pathlib; "
        "pathlib.Path(sys.argv[-1], 'argv.json').write_text(json.dumps(sys.argv[1:]))"
    )
    spec = python_spec(
        "flags-1",
        code,
        type=PluginType.DS,
        args=["--inputdir", "/some/container/path", "--n", "3"],
        args_path_flags=["--inputdir"],
    )
    await pman.client.schedule(spec)
    assert (await wait_terminal(pman.client, spec.jid)).exit_code == 0
    incoming = str(pman.settings.storebase / spec.input_dir)
    outgoing = pman.settings.storebase / spec.output_dir
    argv = json.loads((outgoing / "argv.json").read_text())
    assert argv == ["--inputdir", incoming, "--n", "3", incoming, str(outgoing)]


async def test_environment_is_only_spec_env_path_and_home(
    pman: Pman, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMAN_SECRET_OF_THE_SERVER", "do-not-leak")
    code = (
        "import json, os, sys, pathlib; "
        "pathlib.Path(sys.argv[-1], 'env.json').write_text(json.dumps(dict(os.environ)))"
    )
    spec = python_spec("env-1", code, env=["FOO=bar=baz", "EMPTY="])
    await pman.client.schedule(spec)
    assert (await wait_terminal(pman.client, spec.jid)).exit_code == 0
    env = json.loads((pman.settings.storebase / spec.output_dir / "env.json").read_text())
    env.pop("LC_CTYPE", None)  # Python may set it itself (PEP 538)
    assert set(env) == {"FOO", "EMPTY", "PATH", "HOME"}
    assert env["FOO"] == "bar=baz"
    assert env["EMPTY"] == ""
    assert env["HOME"] == str(pman.settings.data_dir / "jobs" / "env-1")
    assert str(Path(sys.executable).parent) in env["PATH"].split(os.pathsep)


async def test_logs_are_a_tail(make_settings: Callable[..., PmanSettings]) -> None:
    async with running_pman(make_settings(job_logs_tail=5)) as url, PmanClient(url) as client:
        spec = python_spec("tail-1", "for i in range(100): print(f'line {i}')")
        await client.schedule(spec)
        info = await wait_terminal(client, spec.jid)
    assert info.logs.splitlines() == [f"line {i}" for i in range(95, 100)]


async def test_delete_kills_a_running_job(pman: Pman) -> None:
    code = (
        "import os, sys, time, pathlib; "
        "pathlib.Path(sys.argv[-1], 'pid').write_text(str(os.getpid())); "
        "time.sleep(60)"
    )
    spec = python_spec("kill-1", code)
    await pman.client.schedule(spec)
    pid_file = pman.settings.storebase / spec.output_dir / "pid"
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
    pid = int(pid_file.read_text())
    assert not process_gone(pid)

    await pman.client.delete(spec.jid)
    await wait_for(lambda: process_gone(pid))
    assert not (pman.settings.data_dir / "jobs" / spec.jid).exists()
    with pytest.raises(JobNotFound):
        await pman.client.get(spec.jid)
    assert spec.jid not in [j.jid for j in await pman.client.list_jobs()]


async def test_delete_unknown_is_404(pman: Pman) -> None:
    with pytest.raises(JobNotFound) as err:
        await pman.client.delete("nope")
    assert err.value.status == 404
    with pytest.raises(JobNotFound):
        await pman.client.get("nope")


async def test_long_poll_ends_when_job_is_deleted(pman: Pman, tmp_path: Path) -> None:
    spec = python_spec("gone-1", GATE_SCRIPT, env=[f"GATE={tmp_path / 'never'}"])
    await pman.client.schedule(spec)
    poll = asyncio.create_task(pman.client.get(spec.jid, wait=25, known=JobStatus.STARTED))
    done, _ = await asyncio.wait({poll}, timeout=0.2)
    assert not done
    await pman.client.delete(spec.jid)
    # the waiter sees the job end (killed) or, if it looks later, the job gone
    try:
        info = await asyncio.wait_for(poll, timeout=10)
    except JobNotFound:
        pass
    else:
        assert info.status is JobStatus.FINISHED_WITH_ERROR
    with pytest.raises(JobNotFound):
        await pman.client.get(spec.jid, wait=5, known=JobStatus.STARTED)


async def test_duplicate_jid_is_409(pman: Pman) -> None:
    spec = python_spec("dup-1", "pass")
    await pman.client.schedule(spec)
    with pytest.raises(JobConflict) as err:
        await pman.client.schedule(spec)
    assert err.value.status == 409
    # the first job is untouched
    assert (await wait_terminal(pman.client, spec.jid)).status is JobStatus.FINISHED_SUCCESSFULLY


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"gpu_limit": 1}, "gpu_limit"),
        ({"number_of_workers": 2}, "number_of_workers"),
        ({"entrypoint": ["/no/such/dir/not-a-plugin-xyz"]}, "not-a-plugin-xyz"),
        ({"entrypoint": ["python3", "/usr/local/bin/not-a-plugin-xyz"]}, "not-a-plugin-xyz"),
        ({"jid": "jobs"}, "reserved"),
        # no process can take them (and the runner's job file separates with them)
        ({"args": ["a\0b"]}, "NUL"),
        ({"env": ["K=a\0b"]}, "NUL"),
    ],
)
async def test_backend_refusals_are_422(pman: Pman, fields: dict[str, object], needle: str) -> None:
    fields = dict(fields)
    spec = python_spec(str(fields.pop("jid", "refused")), "pass", **fields)
    with pytest.raises(InvalidJob) as err:
        await pman.client.schedule(spec)
    assert err.value.status == 422
    assert needle in err.value.message
    # nothing was created
    assert await pman.client.list_jobs() == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        (b"[]", 422, "invalid job spec"),
        (b'{"jid": "x"}', 422, "image"),
        (
            json.dumps(
                {
                    "jid": "bad dir",
                    "image": "i",
                    "entrypoint": ["true"],
                    "type": "fs",
                    "input_dir": "../etc",
                    "output_dir": "/abs",
                }
            ).encode(),
            422,
            "input_dir",
        ),
    ],
)
async def test_invalid_spec_is_4xx(pman: Pman, body: bytes, status: int, needle: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(pman.url, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        assert resp.status == status
        err = await resp.json()
    assert err["code"] in ("bad_request", "invalid_job")
    assert needle in err["message"]
    assert await pman.client.list_jobs() == []


async def test_list_jobs(pman: Pman) -> None:
    for jid in ("l-1", "l-2"):
        await pman.client.schedule(python_spec(jid, "print('x')"))
    for jid in ("l-1", "l-2"):
        await wait_terminal(pman.client, jid)
    jobs = await pman.client.list_jobs()
    assert sorted(j.jid for j in jobs) == ["l-1", "l-2"]
    assert all(j.logs == "" and j.status is JobStatus.FINISHED_SUCCESSFULLY for j in jobs)


async def test_restarted_pman_finds_finished_and_running_jobs(
    make_settings: Callable[..., PmanSettings], tmp_path: Path
) -> None:
    settings = make_settings()
    gate = tmp_path / "release"
    async with running_pman(settings) as url, PmanClient(url) as client:
        await client.schedule(python_spec("r-done", GATE_SCRIPT, env=["EXIT=5"]))
        await client.schedule(python_spec("r-run", GATE_SCRIPT, env=[f"GATE={gate}"]))
        await client.schedule(python_spec("r-sleep", "import time; time.sleep(60)"))
        assert (await wait_terminal(client, "r-done")).exit_code == 5
        assert (await client.get("r-run")).status is JobStatus.STARTED
    # the first pman is gone; its jobs are not
    pid = read_pid(settings.data_dir / "jobs" / "r-sleep" / "pid")
    assert not process_gone(pid)

    async with running_pman(settings) as url, PmanClient(url) as client:
        done = await client.get("r-done")
        assert done.status is JobStatus.FINISHED_WITH_ERROR
        assert done.exit_code == 5
        assert "to stderr" in done.logs
        assert (await client.get("r-sleep")).status is JobStatus.STARTED
        # a reattached job still wakes long-polls when it ends
        poll = asyncio.create_task(client.get("r-run", wait=25, known=JobStatus.STARTED))
        done_set, _ = await asyncio.wait({poll}, timeout=0.2)
        assert not done_set
        gate.touch()
        info = await asyncio.wait_for(poll, timeout=20)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY
        # and a reattached job can be killed
        await client.delete("r-sleep")
        await wait_for(lambda: process_gone(pid))
        assert sorted(j.jid for j in await client.list_jobs()) == ["r-done", "r-run"]


async def test_lost_process_is_reported(pman: Pman) -> None:
    spec = python_spec("lost-1", "import time; time.sleep(60)")
    await pman.client.schedule(spec)
    pid = read_pid(pman.settings.data_dir / "jobs" / spec.jid / "pid")
    # SIGKILL leaves the runner no chance to record an exit code
    os.killpg(pid, signal.SIGKILL)
    info = await wait_terminal(pman.client, spec.jid, limit=10)
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.message == "process lost"
    assert info.exit_code is None


async def test_max_run_time_kills_the_job(make_settings: Callable[..., PmanSettings]) -> None:
    settings = make_settings(max_run_seconds=0.5, kill_grace_seconds=0.5)
    async with running_pman(settings) as url, PmanClient(url) as client:
        # the job ignores SIGTERM, so the runner has to escalate to SIGKILL
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        await client.schedule(python_spec("slow-1", code))
        await client.schedule(python_spec("slow-2", "import time; time.sleep(60)"))
        for jid, exit_code in (("slow-1", 137), ("slow-2", 143)):
            info = await wait_terminal(client, jid, limit=15)
            assert info.status is JobStatus.FINISHED_WITH_ERROR
            assert info.message == "exceeded max run time"
            assert info.exit_code == exit_code
            assert "exceeded max run time" in info.logs


async def test_interpreter_entrypoint_runs_console_script(
    make_settings: Callable[..., PmanSettings], tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "fakeplugin"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        "pathlib.Path(sys.argv[-1], 'ran').write_text(' '.join(sys.argv[1:-1]))\n"
    )
    script.chmod(0o755)
    settings = make_settings(local_path=[bindir])
    async with running_pman(settings) as url, PmanClient(url) as client:
        spec = python_spec(
            "script-1", "", entrypoint=["python3", "/usr/local/bin/fakeplugin"], args=["--x", "1"]
        )
        created = await client.schedule(spec)
        assert created.cmd.startswith(str(script))
        info = await wait_terminal(client, spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
    assert (settings.storebase / spec.output_dir / "ran").read_text() == "--x 1"


async def test_non_executable_entrypoint_is_422(pman: Pman, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("not a program")
    with pytest.raises(InvalidJob) as err:
        await pman.client.schedule(python_spec("noexec-1", "", entrypoint=[str(data)]))
    assert "data.txt" in err.value.message


async def test_exec_failure_fails_the_job(pman: Pman, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("#!/no/such/interpreter\n")
    broken.chmod(0o755)
    # it exists and is executable, so it is run as is; exec fails in the runner
    await pman.client.schedule(python_spec("noexec-2", "", entrypoint=[str(broken)]))
    info = await wait_terminal(pman.client, "noexec-2")
    assert info.status is JobStatus.FINISHED_WITH_ERROR
    assert info.exit_code == 127
    assert "cannot execute" in info.message
    assert "cannot execute" in info.logs


async def test_token_auth(make_settings: Callable[..., PmanSettings]) -> None:
    settings = make_settings(api_token="s3cret")
    async with running_pman(settings) as url:
        async with PmanClient(url) as anonymous:
            with pytest.raises(Unauthorized) as err:
                await anonymous.server_info()
            assert err.value.status == 401
        async with PmanClient(url, token="wrong") as wrong:
            with pytest.raises(Unauthorized):
                await wrong.list_jobs()
        async with PmanClient(url, token="s3cret") as good:
            assert (await good.server_info()).container_env == "local"
        async with aiohttp.ClientSession() as s, s.get(url + "health/") as resp:
            assert resp.status == 200


async def test_unreachable_pman_is_unavailable() -> None:
    async with PmanClient(f"http://127.0.0.1:{free_port()}/api/v1/") as client:
        with pytest.raises(PmanUnavailable) as err:
            await client.server_info()
    assert err.value.status == 503


async def test_unknown_route_is_json_404(pman: Pman) -> None:
    async with aiohttp.ClientSession() as s, s.get(pman.url + "a/b/c/") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"


async def test_concurrent_duplicates_start_one_job(pman: Pman) -> None:
    spec = python_spec("race-1", "pass")
    results = await asyncio.gather(
        *(pman.client.schedule(spec) for _ in range(6)), return_exceptions=True
    )
    started = [r for r in results if not isinstance(r, BaseException)]
    assert len(started) == 1
    assert all(isinstance(r, JobConflict) for r in results if r not in started)
    info = await wait_terminal(pman.client, spec.jid)
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY


async def test_memory_limit_enforced_only_when_asked(
    make_settings: Callable[..., PmanSettings],
) -> None:
    code = "b = bytearray(300 * 2**20); print('allocated')"
    for enforce, expected in ((True, JobStatus.FINISHED_WITH_ERROR), (False, None)):
        settings = make_settings(local_enforce_memory=enforce)
        async with running_pman(settings) as url, PmanClient(url) as client:
            jid = f"mem-{enforce}".lower()
            await client.schedule(python_spec(jid, code, memory_limit=100))
            info = await wait_terminal(client, jid)
        if expected is None:
            assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        else:
            assert info.status is expected
            assert "MemoryError" in info.logs
