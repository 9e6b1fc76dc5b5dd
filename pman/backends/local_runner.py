"""The supervisor process of one local job, and the fork server that starts them.

A runner is started in one of two ways, both ending in :func:`run`'s steps:

* forked by the fork server (:func:`serve_forks`), the local backend's
  default: one ``python -I -S`` process per pman backend, with this module
  imported, that forks a ready runner for every job (a fork costs a fraction
  of a millisecond; a new interpreter about 18 ms of CPU);
* spawned as ``python -I -S local_runner.py <statedir>``, where the fork
  server cannot be used (pman runs it as ``python -I -S -c "...; from
  local_runner import main; main()" <statedir>``, with this directory on the
  path, so that the module comes from its cached bytecode rather than being
  compiled at every start).

Either way the runner is in a new session (its pid is its process group id),
with stdin from ``/dev/null``, stdout and stderr appended to
``<statedir>/logs`` and no other descriptor of its parent, and it is not
pman's child, so that the job's outcome is recorded even when pman is not
running: the runner

1. reads ``<statedir>/job.nul`` (:class:`RunnerJob`; see :meth:`RunnerJob.to_bytes`),
2. writes its pid and start time to ``<statedir>/pid`` (:func:`pid_line`),
3. runs the argv (a list; no shell) with the job's environment, in the
   state dir, with stdin from ``/dev/null`` and its output going to the logs
   it inherited, in the runner's process group,
4. kills the job's process group when it exceeds ``max_run_seconds``,
5. writes ``<statedir>/message`` (optional) and then ``<statedir>/exit_code``,
   each atomically (temporary file + rename), and exits.

pman reads those files; ``exit_code`` appearing means the job is over. An
exit status from a signal is recorded as ``128 + signal``, as shells and
Docker do.

Where runners are spawned, this module is imported once per job, so its
start-up is kept to a few modules of the standard library that are built in
or small: no ``json`` (``re`` and ``enum`` with it), no ``subprocess``
(``threading``, ``selectors`` ...); what only the fork server needs
(``socket``) is imported by it. The job is started with
:func:`os.posix_spawn` (with a memory limit, which posix_spawn cannot set,
with fork and exec) and waited for with :func:`os.waitpid`, or a pidfd and
:func:`select.poll` when it has a time limit.
"""

import os
import sys

# Only what the job needs: the runner starts as ``python -I -S <this file>
# <statedir>`` (no site, no package lookup), and dataclasses, pathlib and
# typing would each cost more than the rest of its start (dataclasses alone
# imports inspect and ast). Annotations name these types as strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from types import FrameType
    from typing import Any, NoReturn
else:
    try:
        # the built-in module under ``signal``, which only adds enums of the
        # numbers and, with them, imports enum: a third of the runner's start
        import _signal as signal
    except ImportError:  # not CPython
        import signal

JOB_FILE = "job.nul"
#: The job file of earlier versions (JSON); still read, so that a pman
#: restarted on an existing data dir knows the jobs an older one started.
LEGACY_JOB_FILE = "job.json"
PID_FILE = "pid"
LOG_FILE = "logs"
EXIT_CODE_FILE = "exit_code"
MESSAGE_FILE = "message"

#: Exit code recorded when the argv cannot be executed at all (as shells do).
CANNOT_EXECUTE = 127

#: The first field pair of a job file: its format and version.
_FORMAT = ("format", "pman-runner-job/1")
#: Numeric fields of a job file and their parsers.
_NUMBERS = {"max_run_seconds": float, "kill_grace_seconds": float, "memory_limit_bytes": int}
#: Signals Python ignores at start-up; the job gets them at their defaults
#: (as subprocess's ``restore_signals`` did), or a closed pipe would not end it.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
#: Seconds between checks for the job's end where pidfds are not available.
_FALLBACK_POLL_SECONDS = 0.05


class RunnerJob:
    """What the runner runs (``job.nul``), written by the local backend.

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
        argv: "list[str]",
        env: "dict[str, str] | None" = None,
        max_run_seconds: float = 0,
        kill_grace_seconds: float = 10,
        memory_limit_bytes: "int | None" = None,
        max_run_message: str = "",
    ) -> None:
        self.argv = argv
        self.env = {} if env is None else env
        self.max_run_seconds = max_run_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.max_run_message = max_run_message

    def as_dict(self) -> "dict[str, Any]":
        """The fields by name."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunnerJob) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"RunnerJob({self.as_dict()!r})"

    def to_bytes(self) -> bytes:
        """This job as ``job.nul`` data: NUL-terminated ``name``, ``value`` fields.

        The first pair is ``format``, ``pman-runner-job/1``; then one
        ``argv`` pair per argument and one ``env`` pair (``KEY=VALUE``) per
        variable, in order, and the scalars (numbers as Python writes them;
        no ``memory_limit_bytes`` pair for no limit). Text is UTF-8, with
        undecodable file-name bytes kept (surrogateescape). No value can hold
        a NUL, as no argument or variable of a process can: a file that the
        runner parses without ``json`` (and the ``re`` it imports).

        Raises:
            ValueError: an argument or variable holds a NUL, a variable name
                is empty or holds ``=``, or argv is empty.
        """
        if not self.argv:
            raise ValueError("argv must be a non-empty list of strings")
        fields: list[str] = [*_FORMAT]
        for arg in self.argv:
            fields += ("argv", arg)
        for key, value in self.env.items():
            if not key or "=" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
            fields += ("env", f"{key}={value}")
        fields += (
            "max_run_seconds",
            repr(float(self.max_run_seconds)),
            "kill_grace_seconds",
            repr(float(self.kill_grace_seconds)),
        )
        if self.memory_limit_bytes is not None:
            fields += ("memory_limit_bytes", str(int(self.memory_limit_bytes)))
        fields += ("max_run_message", self.max_run_message)
        if any("\0" in f for f in fields):
            raise ValueError("a job's arguments and environment cannot hold NUL characters")
        return "".join(f + "\0" for f in fields).encode("utf-8", "surrogateescape")

    @classmethod
    def from_bytes(cls, data: bytes) -> "RunnerJob":
        """Parse ``job.nul`` data (:meth:`to_bytes`).

        Raises:
            ValueError: not a valid job (wrong format, unknown or repeated
                fields, bad numbers, no argv).
        """
        fields = data.decode("utf-8", "surrogateescape").split("\0")
        # every field ends with a NUL, so the split leaves one empty string last
        if len(fields) < 3 or len(fields) % 2 != 1 or fields.pop():
            raise ValueError("job file: not NUL-terminated name/value pairs")
        if tuple(fields[:2]) != _FORMAT:
            raise ValueError(f"job file: not a {_FORMAT[1]} file")
        job = cls([])
        seen: set[str] = set()
        for i in range(2, len(fields), 2):
            name, value = fields[i], fields[i + 1]
            if name == "argv":
                job.argv.append(value)
            elif name == "env":
                key, sep, val = value.partition("=")
                if not key or not sep:
                    raise ValueError(f"job file: bad environment entry {value!r}")
                job.env[key] = val
            elif name in seen:
                raise ValueError(f"job file: {name} given twice")
            elif name in _NUMBERS:
                setattr(job, name, _NUMBERS[name](value))  # ValueError if malformed
            elif name == "max_run_message":
                job.max_run_message = value
            else:
                raise ValueError(f"job file: unknown field {name!r}")
            seen.add(name)
        if not job.argv:
            raise ValueError("job file: argv must be a non-empty list of strings")
        return job

    def to_json(self) -> str:
        """This job as the ``job.json`` text of earlier versions."""
        import json  # only for old job files: the runner does not read JSON

        return json.dumps(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> "RunnerJob":
        """Parse ``job.json`` text (the job file of earlier versions).

        Raises:
            ValueError: not a valid job (bad JSON, missing or mistyped fields).
        """
        import json  # only for old job files: the runner does not read JSON

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


def read_job(statedir: "str | os.PathLike[str]") -> RunnerJob:
    """The job of ``statedir``: its ``job.nul``, else the ``job.json`` of an older pman.

    Raises:
        FileNotFoundError: neither file exists (yet).
        OSError: unreadable file.
        ValueError: invalid contents.
    """
    statedir = os.fspath(statedir)
    try:
        with open(os.path.join(statedir, JOB_FILE), "rb") as fh:
            return RunnerJob.from_bytes(fh.read())
    except FileNotFoundError:
        try:
            with open(os.path.join(statedir, LEGACY_JOB_FILE), encoding="utf-8") as fh:
                return RunnerJob.from_json(fh.read())
        except FileNotFoundError:
            pass
        raise  # the current file's error: neither exists


def write_atomic(path: "str | os.PathLike[str]", data: "str | bytes") -> None:
    """Write ``data`` (text as UTF-8) to ``path`` so that readers see all of it or nothing.

    Raises:
        OSError: the file could not be written.
    """
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def exit_status(returncode: int) -> int:
    """A Popen-style return code as a shell reports it (``-9`` becomes ``137``)."""
    return 128 - returncode if returncode < 0 else returncode


def _record(statedir: str, code: int, message: "str | None") -> None:
    # the message goes first: pman treats exit_code as "the job is over"
    if message:
        write_atomic(os.path.join(statedir, MESSAGE_FILE), message)
    write_atomic(os.path.join(statedir, EXIT_CODE_FILE), f"{code}\n")


def _executable(name: str, env: "dict[str, str]") -> str:
    """The file to execute for ``argv[0]``: looked up on the job's ``PATH``
    when it has no ``/`` (as subprocess does with an ``env``), else as is.

    Raises:
        FileNotFoundError: no such executable on that ``PATH``.
    """
    if "/" in name:
        return name
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(2, "No such file or directory", name)


def _spawn(job: RunnerJob) -> int:
    """Start the job in the current directory and process group; returns its pid.

    Raises:
        OSError: it cannot be executed.
    """
    path = _executable(job.argv[0], job.env)
    if job.memory_limit_bytes:
        return _fork_exec(path, job, job.memory_limit_bytes)
    return os.posix_spawn(
        path,
        job.argv,
        job.env,
        file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
        setsigdef=_RESTORED_SIGNALS,
    )


def _fork_exec(path: str, job: RunnerJob, limit: int) -> int:
    """:func:`_spawn` with RLIMIT_AS set in the child, which posix_spawn cannot do.

    An exec failure comes back through a close-on-exec pipe as its errno.

    Raises:
        OSError: it cannot be executed.
    """
    import resource

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    # blocked across the fork: the child must not run the runner's handlers
    # before it has reset them; the parent gets what arrived after the fork
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
    read_end, write_end = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # the child
        errno = 0
        try:
            os.close(read_end)
            stdin = os.open(os.devnull, os.O_RDONLY)
            os.dup2(stdin, 0)
            os.close(stdin)
            for sig in (*forwarded, *_RESTORED_SIGNALS):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            os.execve(path, job.argv, job.env)
        except OSError as exc:
            errno = exc.errno or 0
        except BaseException:  # the child must never return into the runner
            pass
        try:
            os.write(write_end, str(errno).encode())
        finally:
            os._exit(CANNOT_EXECUTE)
    os.close(write_end)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        chunks = []
        while chunk := os.read(read_end, 64):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    if chunks:  # the exec failed: the child has exited
        os.waitpid(pid, 0)
        errno = int(b"".join(chunks) or b"0")
        raise OSError(errno, os.strerror(errno) if errno else "failed before exec", path)
    return pid


class _Waiter:
    """Waits for the job's end, with a timeout where one is asked for."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass  # Linux < 5.3 or no pidfd support: checked every 50 ms then

    def wait(self, timeout: "float | None") -> "int | None":
        """The job's return code (:meth:`reap`), or ``None`` when it still runs
        after ``timeout`` seconds (``None``: no limit)."""
        if self.status is None and timeout is not None and not self._ended_within(timeout):
            return None
        return self.reap()

    def reap(self) -> int:
        """Wait for the job's end; its return code as Popen gives it (``-N`` for signal N)."""
        if self.status is None:
            # a stop request's signal interrupts waitpid, which Python then resumes
            self.status = os.waitpid(self.pid, 0)[1]
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return os.waitstatus_to_exitcode(self.status)

    def _ended_within(self, timeout: float) -> bool:
        if self.pidfd is not None:
            import select

            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            # poll resumes with the time left when a signal interrupts it
            return bool(poller.poll(timeout * 1000))
        import time

        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, _FALLBACK_POLL_SECONDS))


def process_start_time(pid: "int | str" = "self") -> "int | None":
    """When process ``pid`` started, in clock ticks after boot (field 22 of
    ``/proc/<pid>/stat``); ``None`` without ``/proc`` or without that process.

    With the pid it names a process for good: a pid is reused only by a
    process that started later.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the fields after the parenthesised command name (which may hold blanks)
    # start with the state, field 3
    try:
        return int(stat.rpartition(b")")[2].split()[19])
    except (IndexError, ValueError):
        return None


def pid_line(pid: int, start_time: "int | None") -> str:
    """The ``pid`` file's text: ``"<pid> <start time>\n"``, or ``"<pid>\n"``
    where the start time is not known (no ``/proc``)."""
    return f"{pid}\n" if start_time is None else f"{pid} {start_time}\n"


def parse_pid(text: str) -> "tuple[int, int | None]":
    """The pid and start time of a ``pid`` file (:func:`pid_line`); the start
    time is ``None`` in the pid-only files of earlier versions.

    Raises:
        ValueError: not a pid file.
    """
    fields = text.split()
    if len(fields) not in (1, 2):
        raise ValueError(f"not a pid file: {text!r}")
    return int(fields[0]), int(fields[1]) if len(fields) == 2 else None


def _claim(statedir: str) -> RunnerJob:
    """Read the job of ``statedir`` (absolute) and record this process as its runner."""
    job = read_job(statedir)
    pid = os.getpid()
    write_atomic(os.path.join(statedir, PID_FILE), pid_line(pid, process_start_time()))
    return job


def _supervise(statedir: str, job: RunnerJob) -> int:
    """Run ``job`` (already claimed) to its end and record the outcome; returns the exit code."""
    os.chdir(statedir)

    terminating = False

    def on_signal(signum: int, _frame: "FrameType | None") -> None:
        # pman stops a job by signalling our whole process group; the runner
        # survives SIGTERM so that it can still record how the job ended
        nonlocal terminating
        if not terminating:
            terminating = True
            os.killpg(0, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        pid = _spawn(job)
    except OSError as exc:
        print(f"pman: cannot execute {job.argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        _record(statedir, CANNOT_EXECUTE, f"cannot execute {job.argv[0]!r}: {exc.strerror}")
        return CANNOT_EXECUTE

    if terminating:  # a stop request arrived while the job was being started
        os.killpg(0, signal.SIGTERM)
    waiter = _Waiter(pid)
    returncode = waiter.wait(job.max_run_seconds or None)
    message: str | None = None
    if returncode is None:
        message = job.max_run_message
        print(f"pman: {message} ({job.max_run_seconds:g} s)", file=sys.stderr, flush=True)
        terminating = True  # our own group signal must not be forwarded again
        os.killpg(0, signal.SIGTERM)
        returncode = waiter.wait(job.kill_grace_seconds)
        if returncode is None:
            # SIGKILL reaches the runner too, so the outcome is recorded first
            _record(statedir, exit_status(-signal.SIGKILL), message)
            os.killpg(0, signal.SIGKILL)
            returncode = waiter.reap()  # not reached: SIGKILL ends this process too
    code = exit_status(returncode)
    _record(statedir, code, message)
    return code


def run(statedir: "str | os.PathLike[str]") -> int:
    """Run the job of ``statedir`` to its end and record the outcome; returns the exit code.

    Both ways a runner starts come here: spawned (:func:`main`) and forked
    by the fork server (:func:`serve_forks`), which does the same two steps
    with closing its inherited descriptors between them.

    Raises:
        OSError, ValueError: the state dir is unusable (nothing can be
            recorded then; pman reports the job as lost).
    """
    # absolute: the runner works in the state dir, the job's working directory
    statedir = os.path.abspath(os.fspath(statedir))
    return _supervise(statedir, _claim(statedir))


def main(argv: "list[str] | None" = None) -> None:
    """Entry point: ``python -I -S local_runner.py <statedir>`` (or ``-m``, or ``-c``
    importing this module and calling ``main()``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -I -S {__file__} <statedir>", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(args[0]))


# -- the fork server ------------------------------------------------------------

#: Request: a state dir, NUL-terminated. Reply: ``"<pid> <start time>\n"``
#: (``-`` for an unknown start time) with the runner's pidfd attached when
#: there is one, or ``"E <errno>\n"`` when nothing could be forked.
FORK_REQUEST_END = b"\0"
#: The fork server's first message: it is running and listening.
FORK_SERVER_READY = b"R"


def serve_forks(fd: int) -> None:
    """The fork server: fork a runner for every state dir that comes in on socket ``fd``.

    Started once per pman backend (``python -I -S``, this module imported)
    with one end of a socket pair; the runner of a job is then a fork of
    this small, ready interpreter rather than a new one. Single-threaded, as
    forking needs. Each runner (:func:`_become_runner`) is on its own from
    the fork: its own session, the job's logs, none of our descriptors.
    Exited runners are reaped here, woken by SIGCHLD; the server returns on
    EOF (pman closed the socket or died), leaving its runners running.
    """
    # resource and select: the runners' job starts import them; done once here
    import resource  # noqa: F401
    import select
    import socket

    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    # a handler, so that SIGCHLD writes the wakeup fd and ends the poll; the
    # reaping itself is done in the loop, never between a fork and its pidfd_open
    signal.signal(signal.SIGCHLD, _ignore_signal)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    sock.sendall(FORK_SERVER_READY)
    pending = b""
    while True:
        events = dict(poller.poll())
        if wake_r in events:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        reap_children()
        if sock.fileno() not in events:
            continue
        data = sock.recv(65536)
        if not data:
            return  # pman is gone: the runners go on without us
        pending += data
        while FORK_REQUEST_END in pending:
            statedir, _, pending = pending.partition(FORK_REQUEST_END)
            _fork_runner(sock, os.fsdecode(statedir))


def _ignore_signal(_signum: int, _frame: "FrameType | None") -> None:
    pass


def reap_children() -> None:
    """Reap every child of this process that has exited (none is waited for)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def _fork_runner(sock: "Any", statedir: str) -> None:
    """Fork the runner of ``statedir`` and reply with its pid, start time and pidfd."""
    import socket

    try:
        # closed by the child once it has its own session: until then its
        # pid is no process group, which is how pman stops a job
        in_session, leader = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(in_session)
            os.close(leader)
            raise
    except OSError as exc:
        sock.sendall(f"E {exc.errno or 0}\n".encode())
        return
    if pid == 0:
        _become_runner(sock, statedir, leader)
    os.close(leader)
    try:
        while os.read(in_session, 1):  # EOF: setsid done, or the child died
            pass
    finally:
        os.close(in_session)
    # the child is not reaped before this (the loop reaps), so neither the
    # pidfd nor the start time can be those of a process that reused its pid
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    start_time = process_start_time(pid)
    reply = f"{pid} {'-' if start_time is None else start_time}\n".encode()
    try:
        socket.send_fds(sock, [reply], [] if pidfd is None else [pidfd])
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _become_runner(sock: "Any", statedir: str, leader: int) -> "NoReturn":
    """In a freshly forked child of the fork server: become the runner of
    ``statedir`` as if spawned, run the job, and exit.

    ``leader``: a pipe's write end, closed once this process leads its own session.
    """
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.setsid()
        os.close(leader)
        statedir = os.path.abspath(statedir)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        logs = os.open(
            os.path.join(statedir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        os.dup2(logs, 1)
        os.dup2(logs, 2)
        os.close(logs)
        job = _claim(statedir)
        # only now, with the pid file written, is the fork server's socket
        # closed: pman, seeing EOF on it after the fork server died before
        # replying, knows from the pid file whether a runner was forked
        sock.detach()
        os.closerange(3, _max_fd())
        code = _supervise(statedir, job)
    except BaseException:
        # as an uncaught exception ends a spawned runner: a traceback, exit 1
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _max_fd() -> int:
    # one close_range call on Linux whatever the bound; where Python has to
    # close them one by one, the descriptor limit keeps the loop short
    try:
        return max(int(os.sysconf("SC_OPEN_MAX")), 256)
    except (OSError, ValueError):
        return 4096


if __name__ == "__main__":
    main()
