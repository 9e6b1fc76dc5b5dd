"""The supervisor process of one local job: ``python -I -S local_runner.py <statedir>``.

pman starts this runner (in a new session, with stdout and stderr appended
to ``<statedir>/logs``) instead of the plugin itself, so that the job's
outcome is recorded even when pman is not running: the runner

1. reads ``<statedir>/job.json`` (:class:`RunnerJob`),
2. writes its pid to ``<statedir>/pid``,
3. runs the argv (a list; no shell) with the job's environment, its output
   going to the logs it inherited,
4. kills the job's process group when it exceeds ``max_run_seconds``,
5. writes ``<statedir>/message`` (optional) and then ``<statedir>/exit_code``,
   each atomically (temporary file + rename), and exits.

pman reads those files; ``exit_code`` appearing means the job is over. An
exit status from a signal is recorded as ``128 + signal``, as shells and
Docker do.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

# Only what the job needs: the runner starts once per job, as
# ``python -I -S <this file> <statedir>`` (no site, no package lookup), and
# dataclasses, pathlib and typing would each cost more than the rest of its
# start (dataclasses alone imports inspect and ast).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

JOB_FILE = "job.json"
PID_FILE = "pid"
LOG_FILE = "logs"
EXIT_CODE_FILE = "exit_code"
MESSAGE_FILE = "message"

#: Exit code recorded when the argv cannot be executed at all (as shells do).
CANNOT_EXECUTE = 127


class RunnerJob:
    """What the runner runs (``job.json``), written by the local backend.

    ``argv`` and ``env`` of the job; ``max_run_seconds`` (0: unlimited);
    ``kill_grace_seconds`` between SIGTERM and SIGKILL when it runs past
    that; ``memory_limit_bytes`` for RLIMIT_AS (None: no limit);
    ``max_run_message``, recorded when it is killed for its run time (pman's
    words, :data:`pman.backends.vocabulary.MAX_RUN_MESSAGE`, written by the backend).
    """

    __slots__ = (
        "argv",
        "env",
        "kill_grace_seconds",
        "max_run_message",
        "max_run_seconds",
        "memory_limit_bytes",
    )

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        max_run_seconds: float = 0,
        kill_grace_seconds: float = 10,
        memory_limit_bytes: int | None = None,
        max_run_message: str = "",
    ) -> None:
        self.argv = argv
        self.env = {} if env is None else env
        self.max_run_seconds = max_run_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.max_run_message = max_run_message

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunnerJob) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"RunnerJob({self.as_dict()!r})"

    def to_json(self) -> str:
        """This job as ``job.json`` text."""
        return json.dumps(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> RunnerJob:
        """Parse ``job.json`` text.

        Raises:
            ValueError: not a valid job (bad JSON, missing or mistyped fields).
        """
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("job.json must hold an object")
        try:
            job = cls(**data)
        except TypeError as exc:
            raise ValueError(f"invalid job.json: {exc}") from exc
        if (
            not isinstance(job.argv, list)
            or not job.argv
            or not all(isinstance(a, str) for a in job.argv)
        ):
            raise ValueError("job.json: argv must be a non-empty list of strings")
        return job


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that readers see all of it or nothing.

    Raises:
        OSError: the file could not be written.
    """
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it (``-9`` becomes ``137``)."""
    return 128 - returncode if returncode < 0 else returncode


def _record(statedir: str, code: int, message: str | None) -> None:
    # the message goes first: pman treats exit_code as "the job is over"
    if message:
        write_atomic(os.path.join(statedir, MESSAGE_FILE), message)
    write_atomic(os.path.join(statedir, EXIT_CODE_FILE), f"{code}\n")


def _limit_memory(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def run(statedir: str | os.PathLike[str]) -> int:
    """Run the job of ``statedir`` to its end and record the outcome; returns the exit code.

    Raises:
        OSError, ValueError: the state dir is unusable (nothing can be
            recorded then; pman reports the job as lost).
    """
    statedir = os.fspath(statedir)
    with open(os.path.join(statedir, JOB_FILE), encoding="utf-8") as fh:
        job = RunnerJob.from_json(fh.read())
    write_atomic(os.path.join(statedir, PID_FILE), f"{os.getpid()}\n")

    terminating = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # pman stops a job by signalling our whole process group; the runner
        # survives SIGTERM so that it can still record how the job ended
        nonlocal terminating
        if not terminating:
            terminating = True
            os.killpg(0, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        proc = subprocess.Popen(
            job.argv,
            env=job.env,
            cwd=statedir,
            stdin=subprocess.DEVNULL,
            preexec_fn=(_limit_memory(job.memory_limit_bytes) if job.memory_limit_bytes else None),
        )
    except OSError as exc:
        print(f"pman: cannot execute {job.argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        _record(statedir, CANNOT_EXECUTE, f"cannot execute {job.argv[0]!r}: {exc.strerror}")
        return CANNOT_EXECUTE

    if terminating:  # a stop request arrived while the job was being started
        os.killpg(0, signal.SIGTERM)
    returncode = _wait(proc, job.max_run_seconds or None)
    message: str | None = None
    if returncode is None:
        message = job.max_run_message
        print(f"pman: {message} ({job.max_run_seconds:g} s)", file=sys.stderr, flush=True)
        terminating = True  # our own group signal must not be forwarded again
        os.killpg(0, signal.SIGTERM)
        returncode = _wait(proc, job.kill_grace_seconds)
        if returncode is None:
            # SIGKILL reaches the runner too, so the outcome is recorded first
            _record(statedir, exit_status(-signal.SIGKILL), message)
            os.killpg(0, signal.SIGKILL)
            returncode = proc.wait()  # not reached: SIGKILL ends this process too
    code = exit_status(returncode)
    _record(statedir, code, message)
    return code


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -I -S local_runner.py <statedir>`` (or ``-m``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -I -S {__file__} <statedir>", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(args[0]))


if __name__ == "__main__":
    main()
