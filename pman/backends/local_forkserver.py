"""pman's side of the local backend's fork server (:func:`.local_runner.serve_forks`).

The fork server is one ``python -I -S`` process per backend, with
:mod:`.local_runner` imported, that forks a ready runner for every job: a
fork of that small interpreter costs well under a millisecond of CPU, where
starting a new one per job costs about 18 ms. It is started lazily, at the
first launch, with :func:`os.posix_spawn` in its own session and one end of
a ``socketpair`` as descriptor :data:`FORK_SERVER_FD`; pman keeps the other
end. Lazily rather than at backend start: a pman that runs no job (or runs
another backend's) has no extra process; the first start is the same code
path as the start after the fork server died, which is then exercised by
every pman; and the app's start-up does not wait for an interpreter (the
first job does, about 30 ms, in a worker thread).

A request is a state dir; the reply the runner's pid, start time and pidfd
(:mod:`.local_runner` has the format). The fork server reaps its own
children and exits on EOF, so closing pman's end (or pman dying) ends it
without touching the runners.

:meth:`ForkServer.launch` never starts a job twice and reports a failure
only when nothing was started: when the fork server dies or answers wrongly
after the request went out, it is killed and pman reads its end of the
socket until EOF. Every runner forked writes its ``pid`` file before it
closes its inherited copy of the fork server's end, so at EOF the ``pid``
file says whether a runner was forked for the request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pman.backends import local_runner
from pman.backends.local_runner import (
    FORK_REQUEST_END,
    FORK_SERVER_READY,
    PID_FILE,
    parse_pid,
)

log = logging.getLogger(__name__)

#: The descriptor the fork server finds its end of the socket pair at.
FORK_SERVER_FD = 3
#: Seconds the fork server has to start, to answer, or to let go of its socket.
TIMEOUT_SECONDS = 30.0
#: Seconds after a launch that fell back to spawning runners before the fork
#: server is tried again: each try costs an interpreter start.
RETRY_SECONDS = 60.0
#: The fork server's code (``python -I -S -c <this> <fd>``); see ``_RUNNER_CODE``
#: in :mod:`.local` for why the runner module is imported this way.
_FORK_SERVER_CODE = (
    f"import sys; sys.path.append({os.path.dirname(local_runner.__file__)!r}); "
    "from local_runner import serve_forks; serve_forks(int(sys.argv[1]))"
)


class ForkServerError(Exception):
    """A launch through the fork server that started nothing (a fallback may start it)."""


class ForkServerStuck(OSError):
    """The fork server failed after a request and whether it forked a runner
    cannot be told (its socket is still held): the job must not be started again."""


@dataclass(frozen=True)
class Launched:
    """A runner the fork server started."""

    pid: int
    #: :func:`.local_runner.process_start_time` of the runner; ``None`` without ``/proc``.
    start_time: int | None
    #: A pidfd of the runner (close-on-exec; the caller owns it), when the
    #: reply carried one; ``None`` when the runner was found from its pid file.
    pidfd: int | None


def supported() -> bool:
    """Whether this host can run the fork server: fork, pidfds and fd passing."""
    if not (hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # Linux < 5.3, or a sandbox refusing it
        return False
    return True


def fork_server_command(fd: int) -> list[str]:
    """The fork server's argv, given the descriptor of its socket."""
    return [sys.executable, "-I", "-S", "-c", _FORK_SERVER_CODE, str(fd)]


class ForkServer:
    """pman's connection to its fork server, started at the first :meth:`launch`.

    Thread-safe: requests are serialised by a lock (the backend launches in
    worker threads).
    """

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        #: ``time.monotonic()`` before which no fork server is started again
        self._retry_at = 0.0
        self._failing = False

    @property
    def pid(self) -> int | None:
        """The running fork server's pid (``None`` while none is running)."""
        return self._pid

    def launch(self, statedir: Path) -> Launched:
        """Fork the runner of ``statedir`` (absolute; its job file written).

        Starts the fork server if it is not running, and starts it again
        once when the request fails.

        Raises:
            ForkServerError: nothing was started (the caller may spawn the
                runner itself); also while failed attempts are recent.
            ForkServerStuck: it cannot be told whether a runner was started.
        """
        with self._lock:
            if time.monotonic() < self._retry_at:
                raise ForkServerError("the fork server failed recently")
            error: ForkServerError | None = None
            for _attempt in range(2):
                try:
                    if self._sock is None:
                        self._start()
                    launched = self._request(statedir)
                except ForkServerError as exc:
                    self._stop()
                    error = exc
                    continue
                except ForkServerStuck:
                    self._stop()
                    raise
                if self._failing:
                    log.info("local backend: the fork server works again")
                    self._failing = False
                return launched
            assert error is not None
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if not self._failing:
                log.warning(
                    "local backend: fork server unusable (%s); runners are spawned "
                    "(about 18 ms of CPU more per job), retrying in %g s",
                    error,
                    RETRY_SECONDS,
                )
                self._failing = True
            raise error

    def close(self) -> None:
        """Close pman's end: the fork server exits (on EOF); its runners run on."""
        with self._lock:
            sock, pid = self._sock, self._pid
            self._sock = None
            self._pid = None
            if sock is not None:
                sock.close()
            if pid is not None:
                _wait_exit(pid, self.timeout)

    # -- internals ----------------------------------------------------------------

    def _start(self) -> None:
        """Start the fork server and wait for it to be ready. Raises ForkServerError."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        src = theirs.fileno()
        extra: int | None = None
        if src == FORK_SERVER_FD:
            # dup2 onto itself would keep close-on-exec: move it out of the way
            src = extra = os.dup(src)
        argv = fork_server_command(FORK_SERVER_FD)
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    # stderr stays pman's: the fork server only writes there if it crashes
                    (os.POSIX_SPAWN_DUP2, src, FORK_SERVER_FD),
                ],
                setsid=True,
                # from a worker thread: whatever its mask, the runners' starts with none blocked
                setsigmask=(),
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start the fork server: {exc}") from exc
        finally:
            theirs.close()
            if extra is not None:
                os.close(extra)
        self._sock, self._pid = ours, pid
        ours.settimeout(self.timeout)
        try:
            ready = ours.recv(len(FORK_SERVER_READY))
        except OSError as exc:  # TimeoutError included
            raise ForkServerError(f"the fork server did not start: {exc}") from exc
        if ready != FORK_SERVER_READY:
            raise ForkServerError(f"the fork server did not start (it said {ready!r})")
        log.debug("local backend: fork server started as pid %d", pid)

    def _request(self, statedir: Path) -> Launched:
        """One launch through the running fork server.

        Raises:
            ForkServerError: nothing was started.
            ForkServerStuck: it cannot be told whether a runner was started.
        """
        assert self._sock is not None
        sock = self._sock
        try:
            sock.sendall(os.fsencode(statedir) + FORK_REQUEST_END)
            reply, fds = _recv_reply(sock)
        except OSError as exc:  # EOF, EPIPE, ECONNRESET, a timeout
            return self._recover(statedir, f"request failed: {exc}")
        try:
            fields = reply.split()
            if fields[:1] == [b"E"] and len(fields) == 2:
                errno = int(fields[1])
                raise ForkServerError(f"the fork server cannot fork: {os.strerror(errno)}")
            if len(fields) != 2:
                raise ValueError(reply)
            pid = int(fields[0])
            start_time = None if fields[1] == b"-" else int(fields[1])
        except ValueError:
            for fd in fds:
                os.close(fd)
            return self._recover(statedir, f"bad reply {reply!r}")
        if len(fds) > 1:  # not what it sends; keep the first
            for fd in fds[1:]:
                os.close(fd)
        return Launched(pid, start_time, fds[0] if fds else None)

    def _recover(self, statedir: Path, why: str) -> Launched:
        """After a failed request: the runner it started, if any, else ForkServerError.

        Raises:
            ForkServerError: no runner was started.
            ForkServerStuck: the socket was not let go of in time.
        """
        sock = self._sock
        assert sock is not None
        self._kill()
        # EOF comes when the fork server and every runner it forked have let
        # go of its end; a runner writes its pid file before it does
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 4, socket.MSG_CMSG_CLOEXEC)
                for fd in fds:
                    os.close(fd)
                if not data:
                    break
        except TimeoutError as exc:
            raise ForkServerStuck(
                f"the fork server failed ({why}) and its socket is still held after "
                f"{self.timeout:g} s"
            ) from exc
        except OSError:
            pass  # ECONNRESET and the like: the peer is gone too
        found = _read_pid(statedir / PID_FILE)
        if found is None:
            raise ForkServerError(f"the fork server failed ({why}); no runner was started")
        pid, start_time = found
        log.warning("local backend: the fork server failed (%s) after starting runner %d", why, pid)
        self._stop()
        return Launched(pid, start_time, None)

    def _kill(self) -> None:
        """Kill the fork server and reap it (its runners, in sessions of their own, run on)."""
        pid = self._pid
        self._pid = None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _stop(self) -> None:
        """Drop the fork server (killed, reaped) and pman's end of its socket."""
        self._kill()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _recv_reply(sock: socket.socket) -> tuple[bytes, list[int]]:
    """A reply line and the descriptors that came with it.

    Raises:
        OSError: the socket failed, or EOF (ConnectionResetError) before a whole line.
    """
    reply = b""
    fds: list[int] = []
    while not reply.endswith(b"\n"):
        try:
            data, more, _flags, _addr = socket.recv_fds(sock, 256, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        fds += more
        if not data:
            for fd in fds:
                os.close(fd)
            raise ConnectionResetError("EOF from the fork server")
        reply += data
    return reply, fds


def _read_pid(path: Path) -> tuple[int, int | None] | None:
    try:
        return parse_pid(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _wait_exit(pid: int, timeout: float) -> None:
    """Reap the fork server once it has exited after EOF; kill it if it does not in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return
        time.sleep(0.005)
