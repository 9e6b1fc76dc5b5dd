"""The local job runner on its own: its job file, and real runs as pman starts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pman.backends import local, local_runner
from pman.backends.local_runner import (
    CANNOT_EXECUTE,
    EXIT_CODE_FILE,
    JOB_FILE,
    LEGACY_JOB_FILE,
    LOG_FILE,
    MESSAGE_FILE,
    PID_FILE,
    RunnerJob,
    read_job,
    write_atomic,
)

#: Enough for any job here; low enough to be seen in the job's own rlimit.
MEMORY_LIMIT = 8 * 2**30


class TestJobFile:
    def test_roundtrip(self) -> None:
        job = RunnerJob(
            argv=["/bin/x", "a b", "", "=", "caf\u00e9", "bad\udcff"],
            env={"K": "V=W", "EMPTY": "", "PATH": "/bin"},
            max_run_seconds=2.5,
            kill_grace_seconds=0,
            memory_limit_bytes=123456789,
            max_run_message="too long",
        )
        back = RunnerJob.from_bytes(job.to_bytes())
        assert back == job
        assert list(back.env) == ["K", "EMPTY", "PATH"]  # order kept
        assert isinstance(back.memory_limit_bytes, int)
        assert RunnerJob.from_bytes(RunnerJob(argv=["x"]).to_bytes()) == RunnerJob(argv=["x"])
        assert RunnerJob.from_bytes(RunnerJob(argv=["x"]).to_bytes()).memory_limit_bytes is None

    def test_the_format_is_nul_separated_name_value_pairs(self) -> None:
        data = RunnerJob(argv=["/bin/true", "-x"], env={"A": "1"}).to_bytes()
        assert data.startswith(b"format\0pman-runner-job/1\0argv\0/bin/true\0argv\0-x\0env\0A=1\0")
        assert data.endswith(b"max_run_message\0\0")

    @pytest.mark.parametrize(
        "job",
        [
            RunnerJob(argv=[]),
            RunnerJob(argv=["a\0b"]),
            RunnerJob(argv=["a"], env={"K": "a\0"}),
            RunnerJob(argv=["a"], env={"K=L": "v"}),
            RunnerJob(argv=["a"], env={"": "v"}),
            RunnerJob(argv=["a"], max_run_message="\0"),
        ],
    )
    def test_unrunnable_jobs_are_not_written(self, job: RunnerJob) -> None:
        with pytest.raises(ValueError):
            job.to_bytes()

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"format\0pman-runner-job/1\0",  # no argv
            b"format\0pman-runner-job/2\0argv\0x\0",
            b"argv\0x\0format\0pman-runner-job/1\0",
            b"format\0pman-runner-job/1\0argv\0x",  # not NUL-terminated
            b"format\0pman-runner-job/1\0argv\0",  # a name without its value
            b"format\0pman-runner-job/1\0argv\0x\0colour\0red\0",
            b"format\0pman-runner-job/1\0argv\0x\0max_run_seconds\0soon\0",
            b"format\0pman-runner-job/1\0argv\0x\0memory_limit_bytes\0 1.5\0",
            b"format\0pman-runner-job/1\0argv\0x\0max_run_seconds\01\0max_run_seconds\02\0",
            b"format\0pman-runner-job/1\0argv\0x\0env\0NOVALUE\0",
            b"format\0pman-runner-job/1\0argv\0x\0env\0=v\0",
            b'{"argv": ["x"]}',
        ],
    )
    def test_bad_files_are_refused(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            RunnerJob.from_bytes(data)

    def test_json_of_older_versions_is_still_read(self, tmp_path: Path) -> None:
        job = RunnerJob(argv=["a", "b"], env={"CUDA_VISIBLE_DEVICES": "1"}, max_run_seconds=3)
        legacy = {
            "argv": ["a", "b"],
            "env": {"CUDA_VISIBLE_DEVICES": "1"},
            "kill_grace_seconds": 10,
            "max_run_message": "",
            "max_run_seconds": 3,
            "memory_limit_bytes": None,
        }
        (tmp_path / LEGACY_JOB_FILE).write_text(json.dumps(legacy))
        assert read_job(tmp_path) == job
        # the current file wins where both exist
        newer = RunnerJob(argv=["new"])
        write_atomic(tmp_path / JOB_FILE, newer.to_bytes())
        assert read_job(tmp_path) == newer

    def test_no_job_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError) as err:
            read_job(tmp_path)
        assert err.value.filename == str(tmp_path / JOB_FILE)

    def test_write_atomic_takes_text_and_bytes(self, tmp_path: Path) -> None:
        write_atomic(tmp_path / "t", "caf\u00e9")
        write_atomic(tmp_path / "b", b"\0\xff")
        assert (tmp_path / "t").read_bytes() == "caf\u00e9".encode()
        assert (tmp_path / "b").read_bytes() == b"\0\xff"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "t"]


def start_runner(statedir: Path, job: RunnerJob) -> subprocess.Popen[bytes]:
    """Start the runner of ``job`` as pman does (own session, output to the logs)."""
    statedir.mkdir(exist_ok=True)
    write_atomic(statedir / JOB_FILE, job.to_bytes())
    with open(statedir / LOG_FILE, "ab") as logs:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", local._RUNNER_CODE, str(statedir)],
            stdin=subprocess.DEVNULL,
            stdout=logs,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the runner signals its whole process group
        )


def run_job(statedir: Path, job: RunnerJob, timeout: float = 30) -> int:
    """Run ``job`` under the runner to its end; the exit code it recorded."""
    runner = start_runner(statedir, job)
    # not reaped before the wait: still its process (a zombie at worst)
    start_time = local_runner.process_start_time(runner.pid)
    assert start_time is not None
    # the runner exits with the code it recorded (killed with the job after SIGKILL)
    assert local_runner.exit_status(runner.wait(timeout)) == int(
        (statedir / EXIT_CODE_FILE).read_text()
    )
    assert (statedir / PID_FILE).read_text() == f"{runner.pid} {start_time}\n"
    return int((statedir / EXIT_CODE_FILE).read_text())


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture(params=[None, MEMORY_LIMIT], ids=["posix_spawn", "fork-rlimit"])
def memory_limit(request: pytest.FixtureRequest) -> int | None:
    """Both ways the runner starts a job: without and with a memory limit."""
    limit: int | None = request.param
    return limit


class TestRuns:
    def test_exit_codes(self, tmp_path: Path, memory_limit: int | None) -> None:
        for i, (argv, code) in enumerate(
            [
                (["/bin/true"], 0),
                (["/bin/sh", "-c", "exit 7"], 7),
                (["/bin/sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
                (["/bin/sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
            ]
        ):
            statedir = tmp_path / f"j{i}"
            job = RunnerJob(argv=argv, env={}, memory_limit_bytes=memory_limit)
            assert run_job(statedir, job) == code, argv
            assert not (statedir / MESSAGE_FILE).exists()

    def test_what_the_job_gets(self, tmp_path: Path, memory_limit: int | None) -> None:
        code = (
            "import json, os, resource, signal, sys;"
            "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd(),"
            " 'stdin': sys.stdin.read(), 'pgid': os.getpgid(0), 'ppid': os.getppid(),"
            " 'sigterm': int(signal.getsignal(signal.SIGTERM)),"
            " 'rlimit': resource.getrlimit(resource.RLIMIT_AS)}))"
        )
        statedir = tmp_path / "job"
        env = {"ONE": "1", "TWO": "a=b", "PYTHONIOENCODING": "utf-8"}
        job = RunnerJob(argv=[*py(code), "x y", ""], env=env, memory_limit_bytes=memory_limit)
        runner = start_runner(statedir, job)
        assert runner.wait(30) == 0
        seen = json.loads((statedir / LOG_FILE).read_text())
        assert seen["argv"] == ["x y", ""]
        # only the job's own environment (Python may add LC_CTYPE when coercing the C locale)
        assert {k: v for k, v in seen["env"].items() if k != "LC_CTYPE"} == env
        assert seen["cwd"] == str(statedir)
        assert seen["stdin"] == ""
        assert seen["pgid"] == runner.pid  # the runner's group: pman stops both with one signal
        assert seen["ppid"] == runner.pid
        assert seen["sigterm"] == signal.SIG_DFL
        limits = list(own_memory_rlimit()) if memory_limit is None else [memory_limit] * 2
        assert seen["rlimit"] == limits

    def test_signals_are_at_their_defaults(self, tmp_path: Path, memory_limit: int | None) -> None:
        # Python ignores SIGPIPE and SIGXFSZ, and the runner catches and (with
        # a memory limit, around the fork) blocks others: the job has none of it
        statedir = tmp_path / "job"
        job = RunnerJob(argv=["/bin/cat", "/proc/self/status"], memory_limit_bytes=memory_limit)
        assert run_job(statedir, job) == 0
        status = dict(
            line.split(":\t", 1) for line in (statedir / LOG_FILE).read_text().splitlines()
        )
        # glibc's posix_spawn leaves its own internal signals 32 and 33 (below
        # SIGRTMIN, no program's to use; glibc sets them up again in the job)
        # ignored; they cannot be named in setsigdef
        glibc_internal = 1 << 31 | 1 << 32
        for field in ("SigBlk", "SigIgn", "SigCgt"):
            assert int(status[field], 16) & ~glibc_internal == 0, field

    def test_bare_names_are_looked_up_on_the_jobs_path(self, tmp_path: Path) -> None:
        bindir = tmp_path / "bin"
        bindir.mkdir()
        tool = bindir / "only-here"
        tool.write_text("#!/bin/sh\necho found >ran\n")
        tool.chmod(0o755)
        (bindir / "not-executable").write_text("#!/bin/sh\n")
        statedir = tmp_path / "job"
        assert run_job(statedir, RunnerJob(argv=["only-here"], env={"PATH": str(bindir)})) == 0
        assert (statedir / "ran").read_text() == "found\n"
        statedir = tmp_path / "job2"
        job = RunnerJob(argv=["not-executable"], env={"PATH": str(bindir)})
        assert run_job(statedir, job) == CANNOT_EXECUTE

    @pytest.mark.parametrize("argv0", ["/no/such/program", "no-such-program", "broken"])
    def test_cannot_execute(self, tmp_path: Path, memory_limit: int | None, argv0: str) -> None:
        broken = tmp_path / "bin" / "broken"
        broken.parent.mkdir()
        broken.write_text("#!/no/such/interpreter\n")
        broken.chmod(0o755)
        statedir = tmp_path / "job"
        job = RunnerJob(
            argv=[argv0], env={"PATH": str(broken.parent)}, memory_limit_bytes=memory_limit
        )
        assert run_job(statedir, job) == CANNOT_EXECUTE
        message = (statedir / MESSAGE_FILE).read_text()
        assert message == f"cannot execute {argv0!r}: No such file or directory"
        assert "pman: cannot execute" in (statedir / LOG_FILE).read_text()

    def test_memory_limit_is_enforced(self, tmp_path: Path) -> None:
        code = "b = bytearray(300 * 2**20)"
        job = RunnerJob(argv=py(code), env={}, memory_limit_bytes=100 * 2**20)
        assert run_job(tmp_path / "job", job) == 1
        assert "MemoryError" in (tmp_path / "job" / LOG_FILE).read_text()

    @pytest.mark.parametrize(
        ("code", "exit_code"),
        [
            ("import time; time.sleep(60)", 128 + signal.SIGTERM),
            (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open('ready', 'w').close(); time.sleep(60)",
                128 + signal.SIGKILL,
            ),
        ],
    )
    def test_max_run_time(
        self, tmp_path: Path, memory_limit: int | None, code: str, exit_code: int
    ) -> None:
        job = RunnerJob(
            argv=py(code),
            env={},
            max_run_seconds=0.5,
            kill_grace_seconds=0.5,
            memory_limit_bytes=memory_limit,
            max_run_message="exceeded max run time",
        )
        start = time.monotonic()
        assert run_job(tmp_path / "job", job) == exit_code
        assert time.monotonic() - start < 10
        assert (tmp_path / "job" / MESSAGE_FILE).read_text() == "exceeded max run time"
        assert "pman: exceeded max run time (0.5 s)" in (tmp_path / "job" / LOG_FILE).read_text()

    def test_a_quick_job_is_not_held_by_its_time_limit(self, tmp_path: Path) -> None:
        job = RunnerJob(argv=["/bin/true"], env={}, max_run_seconds=60)
        start = time.monotonic()
        assert run_job(tmp_path / "job", job) == 0
        assert time.monotonic() - start < 10

    def test_group_sigterm_is_recorded(self, tmp_path: Path, memory_limit: int | None) -> None:
        statedir = tmp_path / "job"
        job = RunnerJob(
            argv=["/bin/sh", "-c", "touch started; exec sleep 30"],
            env={"PATH": "/usr/bin:/bin"},
            memory_limit_bytes=memory_limit,
        )
        runner = start_runner(statedir, job)
        deadline = time.monotonic() + 20
        while not (statedir / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(runner.pid, signal.SIGTERM)  # as pman's DELETE does
        assert runner.wait(20) == 128 + signal.SIGTERM
        assert (statedir / EXIT_CODE_FILE).read_text() == f"{128 + signal.SIGTERM}\n"

    def test_relative_state_dir(self, tmp_path: Path) -> None:
        (tmp_path / "job").mkdir()
        write_atomic(tmp_path / "job" / JOB_FILE, RunnerJob(argv=["/bin/pwd"], env={}).to_bytes())
        with open(tmp_path / "job" / LOG_FILE, "wb") as logs:
            code = subprocess.run(
                [sys.executable, "-I", "-S", "-c", local._RUNNER_CODE, "job"],
                cwd=tmp_path,
                stdout=logs,
                start_new_session=True,
                timeout=30,
            ).returncode
        assert code == 0
        assert (tmp_path / "job" / LOG_FILE).read_text() == f"{tmp_path / 'job'}\n"

    def test_the_runner_imports_little(self, tmp_path: Path) -> None:
        # its start-up is paid once per job: no json, re, enum, subprocess
        statedir = tmp_path / "job"
        statedir.mkdir()
        write_atomic(statedir / JOB_FILE, RunnerJob(["/bin/true"]).to_bytes())
        out = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                "-X",
                "importtime",
                "-c",
                local._RUNNER_CODE,
                str(statedir),
            ],
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
        assert "local_runner" in imported
        assert not imported & {"json", "re", "enum", "subprocess", "typing", "signal"}


def own_memory_rlimit() -> tuple[int, int]:
    """This process's RLIMIT_AS, which a job without a memory limit inherits."""
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)


class TestWaiterWithoutPidfd:
    def test_polls_for_the_end(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "sleep 0.3; exit 4"], {})
        waiter = local_runner._Waiter(pid)
        assert waiter.pidfd is None
        assert waiter.wait(0.05) is None
        assert waiter.wait(20) == 4
        assert waiter.reap() == 4  # reaped once, answered again
