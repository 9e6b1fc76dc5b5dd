"""Unit tests of pman's pure parts: executable resolution, log tails, status
derivation, settings parsing and the client's error mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pman.backends.docker import MAX_RUN_MESSAGE, OOM_MESSAGE, DockerBackend, status_from_state
from pman.backends.local import resolve_entrypoint, search_path, tail_lines
from pman.backends.local_runner import RunnerJob, exit_status
from pman.client import error_from_response
from pman.errors import (
    BackendError,
    BadRequest,
    InvalidJob,
    JobConflict,
    JobNotFound,
    PmanError,
    PmanUnavailable,
)
from pman.schema import JobSpec, JobStatus
from pman.settings import BackendName, PmanSettings


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


class TestResolveEntrypoint:
    def test_existing_path_is_used_as_is(self, tmp_path: Path) -> None:
        exe = _exe(tmp_path / "opt" / "tool")
        other = _exe(tmp_path / "bin" / "tool")
        assert resolve_entrypoint([str(exe), "-v"], [str(other.parent)]) == [str(exe), "-v"]

    def test_missing_absolute_path_found_by_basename(self, tmp_path: Path) -> None:
        first = _exe(tmp_path / "first" / "dircopy")
        _exe(tmp_path / "second" / "dircopy")
        dirs = [str(tmp_path / "first"), str(tmp_path / "second")]
        # the first directory of the search path wins
        assert resolve_entrypoint(["/usr/local/bin/dircopy", "--x"], dirs) == [str(first), "--x"]

    def test_bare_name_is_looked_up(self, tmp_path: Path) -> None:
        exe = _exe(tmp_path / "bin" / "simpledsapp")
        assert resolve_entrypoint(["simpledsapp"], [str(exe.parent)]) == [str(exe)]

    def test_interpreter_with_missing_script_runs_the_script(self, tmp_path: Path) -> None:
        exe = _exe(tmp_path / "bin" / "dircopy")
        got = resolve_entrypoint(["python3", "/usr/local/bin/dircopy", "--a"], [str(exe.parent)])
        assert got == [str(exe), "--a"]

    def test_interpreter_with_py_script_drops_the_suffix(self, tmp_path: Path) -> None:
        exe = _exe(tmp_path / "bin" / "simpledsapp")
        got = resolve_entrypoint(["python", "/usr/src/app/simpledsapp.py"], [str(exe.parent)])
        assert got == [str(exe)]

    def test_interpreter_with_existing_script_is_kept(self, tmp_path: Path) -> None:
        python = _exe(tmp_path / "bin" / "python3")
        script = tmp_path / "app" / "run.py"
        script.parent.mkdir()
        script.write_text("print()")
        got = resolve_entrypoint(["python3", str(script)], [str(python.parent)])
        assert got == [str(python), str(script)]

    def test_options_are_not_scripts(self, tmp_path: Path) -> None:
        python = _exe(tmp_path / "bin" / "python3")
        got = resolve_entrypoint(["python3", "-c", "print('/a/b')"], [str(python.parent)])
        assert got == [str(python), "-c", "print('/a/b')"]

    @pytest.mark.parametrize(
        "entrypoint",
        [
            ["/usr/local/bin/no-such-tool"],
            ["no-such-tool"],
            ["python3", "/usr/local/bin/no-such-tool"],
        ],
    )
    def test_unresolvable_is_invalid(self, tmp_path: Path, entrypoint: list[str]) -> None:
        _exe(tmp_path / "bin" / "python3")
        with pytest.raises(InvalidJob) as err:
            resolve_entrypoint(entrypoint, [str(tmp_path / "bin")])
        assert err.value.status == 422
        assert "no-such-tool" in err.value.message

    def test_non_executable_file_is_not_found(self, tmp_path: Path) -> None:
        data = tmp_path / "bin" / "tool"
        data.parent.mkdir()
        data.write_text("data")
        with pytest.raises(InvalidJob):
            resolve_entrypoint(["tool"], [str(data.parent)])

    def test_search_path_order_and_dedup(self, tmp_path: Path) -> None:
        a, b = tmp_path / "a", tmp_path / "b"
        got = search_path([a, b], os.pathsep.join([str(b), "/usr/bin", "", str(a)]))
        assert got == [str(a), str(b), "/usr/bin"]


class TestTailLines:
    def test_last_lines(self, tmp_path: Path) -> None:
        log = tmp_path / "logs"
        log.write_text("".join(f"line {i}\n" for i in range(10_000)))
        assert tail_lines(log, 3) == "line 9997\nline 9998\nline 9999\n"

    def test_without_final_newline(self, tmp_path: Path) -> None:
        log = tmp_path / "logs"
        log.write_text("a\nb\nc")
        assert tail_lines(log, 2) == "b\nc"

    def test_fewer_lines_than_asked(self, tmp_path: Path) -> None:
        log = tmp_path / "logs"
        log.write_text("only\n")
        assert tail_lines(log, 100) == "only\n"

    def test_missing_and_zero(self, tmp_path: Path) -> None:
        assert tail_lines(tmp_path / "none", 10) == ""
        (tmp_path / "logs").write_text("x\n")
        assert tail_lines(tmp_path / "logs", 0) == ""

    def test_byte_cap_and_bad_utf8(self, tmp_path: Path) -> None:
        log = tmp_path / "logs"
        log.write_bytes(b"x" * 500_000 + b"\xff\xfe end\n")
        got = tail_lines(log, 10, max_bytes=1000)
        assert got.endswith("\ufffd\ufffd end\n")
        assert len(got) <= 1000


class TestDockerStatus:
    def test_running_and_paused(self) -> None:
        assert status_from_state({"Status": "running", "Running": True}, {})[0] is JobStatus.STARTED
        assert status_from_state({"Status": "paused", "Paused": True}, {})[0] is JobStatus.STARTED

    def test_created(self) -> None:
        assert status_from_state({"Status": "created"}, {})[0] is JobStatus.NOT_STARTED
        status, message = status_from_state({"Status": "created", "Error": "exec failed"}, {})
        assert status is JobStatus.FINISHED_WITH_ERROR
        assert "exec failed" in message

    def test_exited(self) -> None:
        ok = {"Status": "exited", "ExitCode": 0}
        assert status_from_state(ok, {})[0] is JobStatus.FINISHED_SUCCESSFULLY
        status, message = status_from_state({"Status": "exited", "ExitCode": 2}, {})
        assert status is JobStatus.FINISHED_WITH_ERROR
        assert "2" in message

    def test_oom_killed(self) -> None:
        state = {"Status": "exited", "ExitCode": 137, "OOMKilled": True}
        assert status_from_state(state, {}) == (JobStatus.FINISHED_WITH_ERROR, OOM_MESSAGE)

    def test_dead_and_unknown(self) -> None:
        assert status_from_state({"Status": "dead", "Dead": True}, {})[0] is (
            JobStatus.FINISHED_WITH_ERROR
        )
        assert status_from_state({"Status": "removing"}, {})[0] is JobStatus.UNDEFINED

    def test_max_run_time(self) -> None:
        labels = {"org.chrisproject.max-run-seconds": "60"}
        state = {
            "Status": "exited",
            "ExitCode": 137,
            "StartedAt": "2024-01-01T00:00:00.123456789Z",
            "FinishedAt": "2024-01-01T00:01:00.5Z",
        }
        assert status_from_state(state, labels) == (JobStatus.FINISHED_WITH_ERROR, MAX_RUN_MESSAGE)
        quick = {**state, "FinishedAt": "2024-01-01T00:00:30Z"}
        assert status_from_state(quick, labels)[1] != MAX_RUN_MESSAGE


class TestClientErrors:
    @pytest.mark.parametrize(
        ("status", "body", "cls"),
        [
            (404, b'{"message": "m", "code": "job_not_found"}', JobNotFound),
            (409, b'{"message": "m", "code": "job_conflict"}', JobConflict),
            (400, b'{"message": "m", "code": "bad_request"}', BadRequest),
            # the code wins over the status
            (500, b'{"message": "m", "code": "invalid_job"}', InvalidJob),
            # no known code: the status decides
            (422, b'{"message": "m", "code": "whatever"}', InvalidJob),
            (502, b"<html>bad gateway</html>", BackendError),
            (503, b"", PmanUnavailable),
        ],
    )
    def test_mapping(self, status: int, body: bytes, cls: type[PmanError]) -> None:
        err = error_from_response(status, body)
        assert type(err) is cls

    def test_unknown_status_keeps_it(self) -> None:
        err = error_from_response(418, b'{"message": "teapot"}')
        assert type(err) is PmanError
        assert err.status == 418
        assert err.message == "teapot"


class TestSettings:
    def test_env_parsing(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("PMAN_BACKEND", "docker")
        monkeypatch.setenv("PMAN_JOB_LABELS", "team=neuro,site=bch")
        monkeypatch.setenv("PMAN_LOCAL_PATH", os.pathsep.join(["/opt/a", "/opt/b"]))
        monkeypatch.setenv("PMAN_STOREBASE", str(tmp_path / "store"))
        s = PmanSettings()
        assert s.backend is BackendName.DOCKER
        assert s.job_labels == {"team": "neuro", "site": "bch"}
        assert s.local_path == [Path("/opt/a"), Path("/opt/b")]
        assert s.engine_storebase == tmp_path / "store"

    def test_json_forms_and_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PMAN_JOB_LABELS", '{"a": "b"}')
        monkeypatch.setenv("PMAN_LOCAL_PATH", '["/x"]')
        s = PmanSettings(storebase_host_path=Path("/host/store"))
        assert s.job_labels == {"a": "b"}
        assert s.local_path == [Path("/x")]
        assert s.port == 5010
        assert s.backend is BackendName.LOCAL
        assert s.storebase.is_absolute()
        assert s.engine_storebase == Path("/host/store")

    def test_bad_values(self) -> None:
        with pytest.raises(ValueError):
            PmanSettings(container_user="root")
        with pytest.raises(ValueError):
            PmanSettings(job_labels="novalue")  # type: ignore[arg-type]


class TestRunnerPieces:
    def test_exit_status(self) -> None:
        assert exit_status(0) == 0
        assert exit_status(3) == 3
        assert exit_status(-9) == 137
        assert exit_status(-15) == 143

    def test_job_roundtrip_and_errors(self) -> None:
        job = RunnerJob(argv=["a", "b c"], env={"K": "V"}, max_run_seconds=2.5)
        assert RunnerJob.from_json(job.to_json()) == job
        for bad in ("[]", '{"argv": []}', '{"argv": ["x"], "extra": 1}', "{nope"):
            with pytest.raises(ValueError):
                RunnerJob.from_json(bad)

    def test_legacy_status_spelling(self) -> None:
        assert JobStatus("notstarted") is JobStatus.NOT_STARTED
        with pytest.raises(ValueError):
            JobStatus("sleeping")


class TestDockerRunArgs:
    def _spec(self, **fields: object) -> JobSpec:
        values: dict[str, object] = {
            "jid": "chris-jid-7",
            "image": "fnndsc/pl-dircopy",
            "entrypoint": ["python3", "/usr/local/bin/dircopy"],
            "args": ["--dir", "/x"],
            "args_path_flags": ["--dir"],
            "type": "ds",
            "input_dir": "key-chris-jid-7/incoming",
            "output_dir": "key-chris-jid-7/outgoing",
            "memory_limit": 300,
            "cpu_limit": 2000,
        }
        values.update(fields)
        return JobSpec.model_validate(values)

    def test_full(self, tmp_path: Path) -> None:
        settings = PmanSettings(
            storebase=tmp_path / "store",
            storebase_host_path=Path("/srv/store"),
            container_user="1001:1002",
            shm_size_mib=64,
            job_labels={"site": "bch"},
            max_run_seconds=3600,
        )
        args = DockerBackend(settings)._run_args(self._spec(gpu_limit=2))
        assert args["name"] == "chris-jid-7"
        assert args["entrypoint"] == ["python3"]
        assert args["command"] == [
            "/usr/local/bin/dircopy",
            "--dir",
            "/share/incoming",
            "/share/incoming",
            "/share/outgoing",
        ]
        assert args["volumes"] == {
            "/srv/store/key-chris-jid-7/incoming": {"bind": "/share/incoming", "mode": "ro"},
            "/srv/store/key-chris-jid-7/outgoing": {"bind": "/share/outgoing", "mode": "rw"},
        }
        assert args["labels"] == {
            "site": "bch",
            "org.chrisproject.jid": "chris-jid-7",
            "org.chrisproject.managed-by": "pman",
            "org.chrisproject.max-run-seconds": "3600",
        }
        assert args["mem_limit"] == args["memswap_limit"] == "300m"
        assert args["nano_cpus"] == 2_000_000_000
        [request] = args["device_requests"]
        assert request["Count"] == 2
        assert request["Capabilities"] == [["gpu"]]
        assert args["user"] == "1001:1002"
        assert args["shm_size"] == "64m"
        assert args["restart_policy"] == {"Name": "no"}

    def test_ignore_limits_and_no_gpu(self, tmp_path: Path) -> None:
        settings = PmanSettings(storebase=tmp_path, ignore_limits=True)
        args = DockerBackend(settings)._run_args(self._spec(gpu_limit=1))
        for key in ("mem_limit", "memswap_limit", "nano_cpus", "device_requests", "user"):
            assert key not in args
        plain = DockerBackend(PmanSettings(storebase=tmp_path))._run_args(self._spec())
        assert "device_requests" not in plain
        assert next(iter(plain["volumes"])) == str(tmp_path / "key-chris-jid-7/incoming")
