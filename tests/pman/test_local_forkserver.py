"""The local backend's fork server: runners forked from it, and what happens when it fails."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from chris_sdk.descriptor import PluginType

from pman.backends import local_forkserver, local_runner
from pman.backends.local import LocalBackend, runner_alive
from pman.backends.local_runner import (
    JOB_FILE,
    LOG_FILE,
    PID_FILE,
    RunnerJob,
    process_start_time,
    write_atomic,
)
from pman.schema import JobId, JobInfo, JobSpec, JobStatus
from pman.settings import PmanSettings
from tests.pman.conftest import process_gone, python_spec, read_pid, wait_for

pytestmark = pytest.mark.skipif(
    not local_forkserver.supported(), reason="no fork server here (needs fork, pidfds)"
)

#: Waits (at most 30 s) for the file ``release`` in the job's state dir (its
#: working directory), then exits with $1.
GATED = 'i=0; while [ ! -e release ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; exit "$1"'


def sh_spec(jid: str, script: str, *args: str, **fields: Any) -> JobSpec:
    """A JobSpec running ``sh -c script jid args... <outputdir>``."""
    values: dict[str, Any] = {
        "jid": jid,
        "image": "local/sh",
        "entrypoint": ["/bin/sh", "-c", script, jid, *args],
        "type": PluginType.FS,
        "input_dir": f"key-{jid}/incoming",
        "output_dir": f"key-{jid}/outgoing",
    }
    values.update(fields)
    return JobSpec(**values)


@pytest.fixture
async def backend(make_settings: Callable[..., PmanSettings]) -> AsyncIterator[LocalBackend]:
    """A started local backend (fork server on, the default)."""
    b = LocalBackend(make_settings())
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def finished(backend: LocalBackend, jid: str, limit: float = 30) -> JobInfo:
    """The job's info once it has ended, waited for like a long-poll (woken at its end)."""
    job = JobId(jid)
    async with asyncio.timeout(limit):
        info = await backend.info(job)
        while not info.status.is_terminal:
            info = await backend.wait_for_change(job, info.status, 10)
    return await backend.info(job)


def release(backend: LocalBackend, jid: str) -> None:
    (backend.jobs_dir / jid / "release").touch()


def runner_pid(backend: LocalBackend, jid: str) -> int:
    return read_pid(backend.jobs_dir / jid / PID_FILE)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[1])


def children_of(pid: int) -> list[tuple[int, str]]:
    """The (pid, state) of every process whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry.name), fields[0].decode()))
    return found


def fork_server_pid(backend: LocalBackend) -> int:
    assert backend._forkserver is not None
    pid = backend._forkserver.pid
    assert pid is not None
    return pid


async def test_runners_are_forked_and_on_their_own(backend: LocalBackend) -> None:
    await backend.schedule(sh_spec("own", GATED, "0"))
    server = fork_server_pid(backend)
    pid = runner_pid(backend, "own")
    assert parent_of(pid) == server
    assert os.getsid(pid) == pid  # its own session, so pman stops it with killpg(pid)
    assert os.getpgid(pid) == pid
    with pytest.raises(ChildProcessError):  # not pman's child
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: it does not wait
    # once the job runs, the runner holds 0, 1, 2 and its job's pidfd: not the
    # fork server's socket nor anything else of its parents
    await wait_for(lambda: children_of(pid) != [])
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert sorted(fds)[:3] == [0, 1, 2]
    assert all("pidfd" in target for fd, target in fds.items() if fd > 2), fds
    assert os.readlink(f"/proc/{pid}/fd/1") == str(backend.jobs_dir / "own" / LOG_FILE)
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    assert (await backend.info(JobId("own"))).status is JobStatus.STARTED
    release(backend, "own")
    info = await finished(backend, "own")
    assert info.status is JobStatus.FINISHED_SUCCESSFULLY
    assert fork_server_pid(backend) == server  # one fork server for every job


@pytest.mark.parametrize(
    ("script", "exit_code"),
    [
        ("echo to stdout; echo to stderr >&2", 0),
        ("echo to stdout; echo to stderr >&2; exit 3", 3),
        ("echo to stdout; echo to stderr >&2; kill -TERM $$", 128 + signal.SIGTERM),
        ("echo to stdout; echo to stderr >&2; kill -KILL $$", 128 + signal.SIGKILL),
    ],
)
async def test_exit_codes_and_logs(backend: LocalBackend, script: str, exit_code: int) -> None:
    await backend.schedule(sh_spec("code", script))
    assert backend._forkserver is not None and backend._forkserver.pid is not None
    info = await finished(backend, "code")
    assert info.exit_code == exit_code
    assert info.status is (
        JobStatus.FINISHED_SUCCESSFULLY if exit_code == 0 else JobStatus.FINISHED_WITH_ERROR
    )
    assert info.logs == "to stdout\nto stderr\n"


@pytest.mark.parametrize("enforce_memory", [False, True], ids=["posix_spawn", "fork-rlimit"])
async def test_the_job_has_default_signals(
    make_settings: Callable[..., PmanSettings], enforce_memory: bool
) -> None:
    # the fork server's SIGCHLD handler and wakeup fd are not the job's, nor
    # what Python ignores or the runner catches
    backend = LocalBackend(make_settings(local_enforce_memory=enforce_memory))
    await backend.start()
    try:
        await backend.schedule(sh_spec("sig", "exec cat /proc/self/status", memory_limit=8192))
        info = await finished(backend, "sig")
        assert fork_server_pid(backend)
    finally:
        await backend.close()
    assert info.exit_code == 0
    status = dict(line.split(":\t", 1) for line in info.logs.splitlines() if ":\t" in line)
    # glibc's posix_spawn leaves its internal signals 32 and 33 ignored (see test_local_runner)
    glibc_internal = 1 << 31 | 1 << 32
    for field in ("SigBlk", "SigIgn", "SigCgt"):
        assert int(status[field], 16) & ~glibc_internal == 0, field


async def test_memory_and_time_limits_hold_for_forked_runners(
    make_settings: Callable[..., PmanSettings],
) -> None:
    settings = make_settings(local_enforce_memory=True, max_run_seconds=0.5, kill_grace_seconds=0.5)
    backend = LocalBackend(settings)
    await backend.start()
    try:
        code = "b = bytearray(300 * 2**20)"
        await backend.schedule(python_spec("mem", code, memory_limit=100))
        await backend.schedule(python_spec("slow", "import time; time.sleep(60)"))
        server = fork_server_pid(backend)
        assert parent_of(runner_pid(backend, "slow")) == server
        mem = await finished(backend, "mem")
        assert mem.exit_code == 1
        assert "MemoryError" in mem.logs
        slow = await finished(backend, "slow")
        assert slow.exit_code == 128 + signal.SIGTERM
        assert slow.message == "exceeded max run time"
    finally:
        await backend.close()


async def test_a_killed_fork_server_leaves_its_jobs_and_is_started_again(
    backend: LocalBackend,
) -> None:
    await backend.schedule(sh_spec("k-1", GATED, "4"))
    server = fork_server_pid(backend)
    pid = runner_pid(backend, "k-1")
    os.kill(server, signal.SIGKILL)
    await wait_for(lambda: process_gone(server))
    assert not process_gone(pid)
    assert (await backend.info(JobId("k-1"))).status is JobStatus.STARTED
    release(backend, "k-1")
    info = await finished(backend, "k-1")
    assert info.exit_code == 4  # recorded by the runner, watched through its pidfd
    # the next job finds the fork server gone and starts another
    await backend.schedule(sh_spec("k-2", "exit 5"))
    assert (await finished(backend, "k-2")).exit_code == 5
    assert fork_server_pid(backend) != server
    # the dead one was reaped
    assert not Path(f"/proc/{server}").exists()


async def test_closed_backend_leaves_jobs_to_the_next_one(
    make_settings: Callable[..., PmanSettings],
) -> None:
    settings = make_settings()
    first = LocalBackend(settings)
    await first.start()
    await first.schedule(sh_spec("r-1", GATED, "0"))
    server = fork_server_pid(first)
    pid = runner_pid(first, "r-1")
    await first.close()
    # the fork server exits on EOF; the job runs on
    assert not Path(f"/proc/{server}").exists()
    assert not process_gone(pid)

    second = LocalBackend(settings)
    await second.start()
    try:
        assert (await second.info(JobId("r-1"))).status is JobStatus.STARTED
        waiter = asyncio.create_task(second.wait_for_change(JobId("r-1"), JobStatus.STARTED, 25))
        done, _ = await asyncio.wait({waiter}, timeout=0.2)
        assert not done
        (settings.data_dir / "jobs" / "r-1" / "release").touch()
        info = await asyncio.wait_for(waiter, 20)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY
        # and the new backend starts jobs with a fork server of its own
        await second.schedule(sh_spec("r-2", "exit 0"))
        assert (await finished(second, "r-2")).exit_code == 0
        assert fork_server_pid(second) != server
    finally:
        await second.close()


async def test_delete_right_after_start_stops_the_job(backend: LocalBackend) -> None:
    # the runner's pid is a process group as soon as schedule returns
    await backend.schedule(sh_spec("d-1", GATED, "0"))
    pid = runner_pid(backend, "d-1")
    await backend.remove(JobId("d-1"))
    await wait_for(lambda: process_gone(pid))


async def test_no_zombies_pile_up_in_the_fork_server(backend: LocalBackend) -> None:
    jids = [f"z-{i}" for i in range(30)]
    for jid in jids:
        await backend.schedule(sh_spec(jid, "exit 0"))
    server = fork_server_pid(backend)
    for jid in jids:
        assert (await finished(backend, jid)).exit_code == 0
    # reaped when SIGCHLD wakes it: nothing of them is left under the fork server
    await wait_for(lambda: children_of(server) == [], limit=5)


def _stub_server_code(behaviour: str) -> str:
    """A fork server that answers ready, reads one request, then misbehaves."""
    return (
        f"import os, socket, sys; sys.path.append({os.path.dirname(local_runner.__file__)!r}); "
        "import local_runner; "
        "sock = socket.socket(fileno=int(sys.argv[1])); sock.sendall(b'R'); data = b''\n"
        "while not data.endswith(b'\\0'):\n"
        "    chunk = sock.recv(4096)\n"
        "    if not chunk: sys.exit(0)\n"
        "    data += chunk\n" + behaviour
    )


#: Forks the runner as the real one does, then dies before it replies.
DIES_AFTER_FORK = (
    "r, w = os.pipe()\n"
    "if os.fork() == 0: local_runner._become_runner(sock, os.fsdecode(data[:-1]), w)\n"
    "os._exit(1)\n"
)
#: Dies with the request read, without forking.
DIES_BEFORE_FORK = "os._exit(1)\n"


def _use_fork_server(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    monkeypatch.setattr(
        local_forkserver,
        "fork_server_command",
        lambda fd: [sys.executable, "-I", "-S", "-c", code, str(fd)],
    )


async def test_fork_server_dying_after_the_fork_starts_the_job_once(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _use_fork_server(monkeypatch, _stub_server_code(DIES_AFTER_FORK))
    with caplog.at_level(logging.WARNING):
        await backend.schedule(sh_spec("once", "echo ran >>ran"))
    info = await finished(backend, "once")
    assert info.exit_code == 0
    assert (backend.jobs_dir / "once" / "ran").read_text() == "ran\n"
    assert "after starting runner" in caplog.text


async def test_fork_server_dying_before_the_fork_falls_back_once(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _use_fork_server(monkeypatch, _stub_server_code(DIES_BEFORE_FORK))
    with caplog.at_level(logging.WARNING):
        await backend.schedule(sh_spec("fb-1", "echo ran >>ran"))
        await backend.schedule(sh_spec("fb-2", "echo ran >>ran"))
    for jid in ("fb-1", "fb-2"):
        assert (await finished(backend, jid)).exit_code == 0
        assert (backend.jobs_dir / jid / "ran").read_text() == "ran\n"
    warnings = [r for r in caplog.records if "fork server unusable" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("command", [["/bin/true"], ["/no/such/program"]])
async def test_jobs_are_spawned_when_the_fork_server_cannot_start(
    backend: LocalBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    command: list[str],
) -> None:
    monkeypatch.setattr(local_forkserver, "fork_server_command", lambda fd: command)
    with caplog.at_level(logging.WARNING):
        await backend.schedule(sh_spec("sp-1", GATED, "0"))
        await backend.schedule(sh_spec("sp-2", "exit 6"))
    pid = runner_pid(backend, "sp-1")
    # spawned: pman's child, named by its command line, in its own session
    assert parent_of(pid) == os.getpid()
    assert str(backend.jobs_dir / "sp-1") in Path(f"/proc/{pid}/cmdline").read_text()
    assert os.getsid(pid) == pid
    release(backend, "sp-1")
    assert (await finished(backend, "sp-1")).exit_code == 0
    assert (await finished(backend, "sp-2")).exit_code == 6
    assert sum("fork server unusable" in r.getMessage() for r in caplog.records) == 1


async def test_jobs_are_spawned_with_the_fork_server_off(
    make_settings: Callable[..., PmanSettings],
) -> None:
    backend = LocalBackend(make_settings(local_forkserver=False))
    await backend.start()
    try:
        assert backend._forkserver is None
        await backend.schedule(sh_spec("off", "exit 2"))
        assert parent_of(runner_pid(backend, "off")) == os.getpid() or process_gone(
            runner_pid(backend, "off")
        )
        assert (await finished(backend, "off")).exit_code == 2
    finally:
        await backend.close()


class TestRunnerIdentity:
    def test_start_time_tells_a_reused_pid(self, tmp_path: Path) -> None:
        proc = subprocess.Popen(["sleep", "30"])
        try:
            start = process_start_time(proc.pid)
            assert start is not None
            assert runner_alive(proc.pid, tmp_path, start)
            # the same pid, another start: a process that reused the runner's pid
            assert not runner_alive(proc.pid, tmp_path, start - 1)
        finally:
            proc.kill()
            proc.wait()
        assert not runner_alive(proc.pid, tmp_path, start)

    def test_pid_only_files_are_checked_by_command_line(self, tmp_path: Path) -> None:
        statedir = tmp_path / "job"
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", str(statedir)]
        )
        try:
            # its command line can read empty for a moment after the exec
            deadline = time.monotonic() + 10
            while not Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert runner_alive(proc.pid, statedir)
            assert not runner_alive(proc.pid, tmp_path / "other")
        finally:
            proc.kill()
            proc.wait()

    def test_pid_file_formats(self) -> None:
        assert local_runner.parse_pid("12 345\n") == (12, 345)
        assert local_runner.parse_pid("12\n") == (12, None)
        assert local_runner.pid_line(12, 345) == "12 345\n"
        assert local_runner.pid_line(12, None) == "12\n"
        for bad in ("", "x", "1 2 3", "1 x"):
            with pytest.raises(ValueError):
                local_runner.parse_pid(bad)

    async def test_a_live_process_of_another_start_is_not_the_runner(
        self, backend: LocalBackend
    ) -> None:
        # a job whose runner is gone, its pid now taken by this test's process
        statedir = backend.jobs_dir / "reused"
        statedir.mkdir(parents=True)
        spec = sh_spec("reused", "exit 0")
        (statedir / "spec.json").write_text(spec.model_dump_json())
        write_atomic(statedir / JOB_FILE, RunnerJob(argv=["/bin/true"]).to_bytes())
        own = process_start_time()
        assert own is not None
        try:
            write_atomic(statedir / PID_FILE, f"{os.getpid()} {own - 1}\n")
            info = await backend.info(JobId("reused"))
            assert info.status is JobStatus.FINISHED_WITH_ERROR
            assert info.message == "process lost"
            # with its start time it is taken for the runner
            write_atomic(statedir / PID_FILE, f"{os.getpid()} {own}\n")
            assert (await backend.info(JobId("reused"))).status is JobStatus.STARTED
        finally:
            # the fixtures kill the process group of every pid file left: not ours
            (statedir / PID_FILE).unlink()
