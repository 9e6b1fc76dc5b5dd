"""The local backend: plugin jobs as host processes (the embedded default).

Each job has a state directory ``<data_dir>/jobs/<jid>/`` that is the only
record of it, so a restarted pman finds every job again:

==============  =================================================================
``spec.json``   the :class:`~pman.schema.JobSpec`, written before anything runs
``job.nul``     the resolved argv and environment (:class:`~pman.backends.local_runner.RunnerJob`;
                NUL-separated, so that the runner parses it without ``json``;
                the ``job.json`` of older versions is still read)
``pid``         the pid of the job's runner (also its process group id) and its
                start time, which tells it from a later process with its pid
                (``"<pid> <start time>"``; older versions wrote the pid only)
``logs``        stdout and stderr of the job (and of the runner)
``message``     why the job ended, when the runner knows more than the exit code
``exit_code``   written last, atomically: the job is over
==============  =================================================================

How a job starts: pman writes ``spec.json`` and ``job.nul`` and asks its fork
server (:mod:`pman.backends.local_forkserver`: one ``python -I -S`` per
backend, started at the first job, with the runner module imported) for a
runner; the fork server forks one, which leaves its session, sends its
output to ``logs``, drops every inherited descriptor and runs the job
(:mod:`pman.backends.local_runner`). pman gets the runner's pid, start time
and a pidfd. A fork costs well under a millisecond of CPU where a new
interpreter per job costs about 18 ms. Where the fork server cannot be used
(``PMAN_LOCAL_FORKSERVER=false``, no pidfds, or it cannot be started even
once again), the runner is spawned as a new interpreter with
``posix_spawn``. Either way the runner is no child of pman, or outlives it,
and records the outcome itself.

Jobs run under :mod:`pman.backends.local_runner` in their own session, with
``incoming``/``outgoing`` as absolute paths under the storebase, the job's
state directory as working directory and ``HOME``, and an environment of only
the spec's ``env`` pairs plus ``PATH`` and ``HOME``. Unlike the container
backends, which mount ``incoming`` read-only, nothing stops a local job from
writing to its input dir: it runs with pman's own rights. Where the input is
not a private copy (an in-network site gives jobs the originals, or hard
links to them), use a container backend for plugins not trusted with it.

GPUs: a job with ``gpu_limit > 0`` gets that many of the host's GPUs
(``local_gpus``, by default those ``nvidia-smi`` lists) to itself, through
``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES``; the GPUs of running
jobs are read back from their job file, so a restarted pman knows them.
A job without GPUs sees none (``CUDA_VISIBLE_DEVICES`` empty) on a host that
has some. When all GPUs are taken, the job is refused with 503 and CUBE
submits it again later.

Status changes are pushed, not polled: pman watches each runner through a
pidfd (Linux ≥ 5.3) and wakes long-polls when it exits; without pidfd support
it falls back to checking every 0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from pman.backends import local_forkserver, local_runner
from pman.backends.base import Backend
from pman.backends.local_forkserver import ForkServer, ForkServerError
from pman.backends.local_runner import (
    EXIT_CODE_FILE,
    JOB_FILE,
    LOG_FILE,
    MESSAGE_FILE,
    PID_FILE,
    RunnerJob,
    parse_pid,
    pid_line,
    process_start_time,
    read_job,
    write_atomic,
)
from pman.backends.vocabulary import MAX_RUN_MESSAGE
from pman.errors import (
    BackendError,
    InvalidJob,
    JobConflict,
    JobNotFound,
    PmanError,
    PmanUnavailable,
)
from pman.schema import JobId, JobInfo, JobSpec, JobStatus, build_command
from pman.settings import BackendName, PmanSettings

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
#: Recorded when the runner vanished without recording an exit code.
LOST_MESSAGE = "process lost"
#: Interval of the fallback exit check when pidfds are not available, in seconds.
FALLBACK_POLL_SECONDS = 0.2
#: Upper bound on the bytes read for a logs tail (long lines), in bytes.
MAX_TAIL_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024
#: The runner's command (``python -I -S -c <this> <statedir>``): its module
#: imported from its directory, not run as a script, so that it comes from its
#: cached bytecode (a script is compiled at every start: a quarter of the
#: runner's CPU). The directory goes last on the path, so that the other
#: modules there never shadow the standard library's (``-I`` leaves out
#: the current directory).
_RUNNER_CODE = (
    f"import sys; sys.path.append({os.path.dirname(local_runner.__file__)!r}); "
    "from local_runner import main; main()"
)


# -- executable resolution ----------------------------------------------------


def search_path(local_path: list[Path], env_path: str | None) -> list[str]:
    """The directories executables are looked up in: ``local_path``, then ``env_path``."""
    dirs = [str(p) for p in local_path]
    dirs += [d for d in (env_path or "").split(os.pathsep) if d]
    # keep the first occurrence of each directory, in order
    return list(dict.fromkeys(dirs))


def detect_gpus() -> list[str]:
    """The UUIDs of the NVIDIA GPUs ``nvidia-smi`` lists; none without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=uuid", "--format=csv,noheader"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed, no GPUs for local jobs: %s", exc)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _which(name: str, dirs: list[str]) -> str | None:
    return shutil.which(name, path=os.pathsep.join(dirs)) if dirs else None


def resolve_entrypoint(entrypoint: list[str], dirs: list[str]) -> list[str]:
    """Map a plugin's (container) entrypoint onto executables of this host.

    Rules, in order:

    * ``[interpreter, script, ...]`` whose ``script`` is a path that does not
      exist here (``["python3", "/usr/local/bin/dircopy"]``): the script's
      basename (or its name without ``.py``) found on ``dirs`` runs directly,
      since installed console scripts carry their own interpreter;
    * ``entrypoint[0]`` that exists here is used as is;
    * a path that does not exist here is looked up by basename on ``dirs``;
    * a bare name is looked up on ``dirs``.

    Returns the argv prefix to run (a new list).

    Raises:
        InvalidJob: nothing on this host matches.
    """
    first, rest = entrypoint[0], entrypoint[1:]
    if rest and "/" in rest[0] and not rest[0].startswith("-") and not os.path.exists(rest[0]):
        script = os.path.basename(rest[0])
        candidates = [script]
        if script.endswith(".py"):
            candidates.append(script[: -len(".py")])
        for name in candidates:
            found = _which(name, dirs)
            if found:
                return [found, *rest[1:]]
        raise InvalidJob(
            f"cannot run {shlex.join(entrypoint[:2])!r} locally: the script {rest[0]!r} "
            f"does not exist on this host and {script!r} is not on the search path"
        )
    if "/" in first:
        if _is_executable(first):
            return [first, *rest]
        found = _which(os.path.basename(first), dirs)
    else:
        found = _which(first, dirs)
    if not found:
        raise InvalidJob(
            f"executable {first!r} not found on this host (searched {os.pathsep.join(dirs)!r})"
        )
    return [found, *rest]


# -- reading state ------------------------------------------------------------


def tail_lines(path: Path, lines: int, *, max_bytes: int = MAX_TAIL_BYTES) -> str:
    """The last ``lines`` lines of ``path`` (at most ``max_bytes`` bytes), decoded.

    Reads backwards in chunks, so a large log is never read whole. A missing
    file gives ``""``; undecodable bytes are replaced.
    """
    if lines <= 0:
        return ""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return ""
    with fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        # a final newline ends the last line; it does not start another one
        target = lines + 1
        while pos > 0 and newlines < target and end - pos < max_bytes:
            size = min(_CHUNK, pos, max_bytes - (end - pos))
            pos -= size
            fh.seek(pos)
            chunk = fh.read(size)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines(keepends=True)
    return "".join(kept[-lines:])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def _read_pid(path: Path) -> tuple[int, int | None] | None:
    """The pid and start time of a ``pid`` file (start time ``None`` in the
    pid-only files of earlier versions); ``None`` when there is none (yet)."""
    try:
        return parse_pid(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def runner_alive(pid: int, statedir: Path, start_time: int | None = None) -> bool:
    """Whether ``pid`` is the live (not zombie) runner of ``statedir``.

    A reused pid is not mistaken for the runner: with ``start_time`` (from
    the ``pid`` file) the process must have started then; without it (the
    pid files of earlier versions, whose runners were all spawned) its
    command line in ``/proc`` must name ``statedir``. Without ``/proc`` it
    can only check that the pid exists.
    """
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_bytes()
        except OSError:
            return False
        # the state letter follows the parenthesised command name
        fields = stat.rpartition(b")")[2].split()
        if fields[:1] in ([b"Z"], [b"X"]):
            return False
        if start_time is not None:
            return fields[19:20] == [str(start_time).encode()]
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(statedir) in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    # runners this pman spawned must be reaped, or they stay zombies; forked
    # ones (the fork server reaps them) and older pmans' are not our children
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class _State:
    """A snapshot of a job's state directory."""

    spec: JobSpec
    argv: list[str]
    pid: int | None
    start_time: int | None
    exit_code: int | None
    message: str
    timestamp: str
    alive: bool


class LocalBackend(Backend):
    """Runs jobs as host processes supervised by :mod:`pman.backends.local_runner`.

    Refuses ``number_of_workers != 1`` and more GPUs than the host has (422);
    answers 503 while the GPUs asked for are taken. Needs Linux
    (``posix_spawn`` with ``setsid``; pidfds when available, and with them
    runners forked by the fork server, :mod:`pman.backends.local_forkserver`).
    """

    name: ClassVar[BackendName] = BackendName.LOCAL
    #: The runner's exit is pushed through pidfds (or the fallback watcher).
    poll_interval: ClassVar[float | None] = None

    def __init__(self, settings: PmanSettings) -> None:
        super().__init__(settings)
        self.jobs_dir = settings.data_dir / "jobs"
        self._starting: set[JobId] = set()
        self._pidfds: dict[JobId, int] = {}
        self._pollers: dict[JobId, asyncio.Task[None]] = {}
        self.gpus: list[str] = list(settings.local_gpus or [])
        #: started at the first job (see :meth:`_launch`); None: runners are spawned
        self._forkserver: ForkServer | None = (
            ForkServer() if settings.local_forkserver and local_forkserver.supported() else None
        )
        #: held while GPUs are chosen and the job claiming them is written
        self._gpu_lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Create the state directory and watch the runners of jobs still running.

        Raises:
            BackendError: the data directory cannot be created or read.
        """
        try:
            await asyncio.to_thread(self.jobs_dir.mkdir, parents=True, exist_ok=True)
            names = await asyncio.to_thread(self._job_names)
        except OSError as exc:
            raise BackendError(f"cannot use data dir {self.jobs_dir}: {exc}") from exc
        if self.settings.local_gpus is None:
            self.gpus = await asyncio.to_thread(detect_gpus)
        for jid in names:
            found = _read_pid(self._dir(jid) / PID_FILE)
            if found is not None and not (self._dir(jid) / EXIT_CODE_FILE).exists():
                self._watch(jid, *found)
        log.info(
            "local backend: %d job(s) found in %s; GPUs: %s",
            len(names),
            self.jobs_dir,
            ", ".join(self.gpus) or "none",
        )

    async def close(self) -> None:
        """Stop watching runners and let the fork server go (it exits when its
        socket closes); the jobs keep running and are found by the next pman."""
        if self._forkserver is not None:
            await asyncio.to_thread(self._forkserver.close)
        loop = asyncio.get_running_loop()
        for fd in self._pidfds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._pidfds.clear()
        pollers = list(self._pollers.values())
        self._pollers.clear()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)

    # -- Backend API ----------------------------------------------------------------

    def check_spec(self, spec: JobSpec) -> None:
        """The base checks, plus: no more GPUs than this host has (InvalidJob)."""
        super().check_spec(spec)
        if spec.gpu_limit > len(self.gpus):
            raise InvalidJob(
                f"gpu_limit {spec.gpu_limit} is more than the {len(self.gpus)} GPU(s) "
                "of this host (local backend)"
            )

    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Start ``spec`` as a host process.

        Raises:
            InvalidJob: refused spec or no such executable here.
            JobConflict: a job with this id exists.
            BackendError: the state dir or process could not be created.
        """
        self.check_spec(spec)
        dirs = search_path(self.settings.local_path, os.environ.get("PATH"))
        prefix = resolve_entrypoint(spec.entrypoint, dirs)
        incoming = self.settings.storebase / spec.input_dir
        outgoing = self.settings.storebase / spec.output_dir
        argv = build_command(
            spec.model_copy(update={"entrypoint": prefix}), str(incoming), str(outgoing)
        )
        statedir = self._dir(spec.jid)
        env = dict(item.split("=", 1) for item in spec.env)
        # PATH must be the one the executable was resolved on; HOME is private to the job
        env["PATH"] = os.pathsep.join(dirs)
        env["HOME"] = str(statedir)
        if spec.gpu_limit == 0:
            if self.gpus:
                # "" hides every GPU from CUDA; the NVIDIA runtime's word for it is "void"
                env["CUDA_VISIBLE_DEVICES"] = ""
                env["NVIDIA_VISIBLE_DEVICES"] = "void"
            return await self._start(spec, argv, env, statedir, incoming, outgoing)
        # check_spec refused more GPUs than the host has; the lock keeps two
        # jobs from taking the same free GPUs, and only GPU jobs wait for it
        async with self._gpu_lock:
            visible = ",".join(await self._take_gpus(spec))
            env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = visible
            return await self._start(spec, argv, env, statedir, incoming, outgoing)

    async def _take_gpus(self, spec: JobSpec) -> list[str]:
        """``spec.gpu_limit`` GPUs no running job holds (call under the GPU lock).

        Raises:
            PmanUnavailable: not enough free GPUs now.
        """
        busy = await asyncio.to_thread(self._gpus_in_use)
        free = [g for g in self.gpus if g not in busy]
        if len(free) < spec.gpu_limit:
            raise PmanUnavailable(
                f"job {spec.jid!r} needs {spec.gpu_limit} GPU(s); "
                f"{len(free)} of {len(self.gpus)} are free now"
            )
        return free[: spec.gpu_limit]

    def _gpus_in_use(self) -> set[str]:
        """GPUs given to jobs that have not ended (from their job file)."""
        used: set[str] = set()
        for jid in self._job_names():
            statedir = self._dir(jid)
            if (statedir / EXIT_CODE_FILE).exists():
                continue
            try:
                env = read_job(statedir).env
            except (OSError, ValueError):
                continue  # being written or removed: its GPUs are not known yet
            found = _read_pid(statedir / PID_FILE)
            if found is not None and not runner_alive(found[0], statedir, found[1]):
                continue
            used.update(g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g)
        return used

    async def _start(
        self,
        spec: JobSpec,
        argv: list[str],
        env: dict[str, str],
        statedir: Path,
        incoming: Path,
        outgoing: Path,
    ) -> JobInfo:
        job = RunnerJob(
            argv=argv,
            env=env,
            max_run_seconds=self.settings.max_run_seconds,
            kill_grace_seconds=self.settings.kill_grace_seconds,
            memory_limit_bytes=(
                spec.memory_limit * 1024 * 1024 if self.settings.local_enforce_memory else None
            ),
            max_run_message=MAX_RUN_MESSAGE,
        )
        try:
            job_data = job.to_bytes()
        except ValueError as exc:  # a NUL in an argument or variable: no process can take it
            raise InvalidJob(f"job {spec.jid!r} cannot run: {exc}") from exc
        # mkdir is the atomic claim on the jid; done on the loop, together with
        # marking the job as starting, so no reader sees one without the other
        try:
            statedir.mkdir(parents=False, exist_ok=False)
        except FileExistsError as exc:
            raise JobConflict(f"job {spec.jid!r} exists already") from exc
        except OSError as exc:
            raise BackendError(f"cannot create the state dir of {spec.jid!r}: {exc}") from exc
        self._starting.add(spec.jid)
        try:
            pid, start_time, pidfd = await asyncio.to_thread(
                self._launch, spec, job_data, statedir, incoming, outgoing
            )
        except OSError as exc:
            await asyncio.to_thread(shutil.rmtree, statedir, True)
            raise BackendError(f"cannot start job {spec.jid!r}: {exc}") from exc
        finally:
            self._starting.discard(spec.jid)
        self._watch(spec.jid, pid, start_time, pidfd)
        self.notify(spec.jid)
        log.info("job %s started as pid %d: %s", spec.jid, pid, shlex.join(argv))
        return await self.info(spec.jid, logs=False)

    async def info(self, jid: JobId, *, logs: bool = True) -> JobInfo:
        """The job's info from its state dir. Raises JobNotFound, BackendError."""
        try:
            return await asyncio.to_thread(self._info, jid, logs)
        except PmanError:
            raise
        except FileNotFoundError as exc:
            if not self._dir(jid).is_dir():  # removed while being read
                raise JobNotFound(f"no job {jid!r}") from exc
            raise BackendError(f"cannot read the state of job {jid!r}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the state of job {jid!r}: {exc}") from exc

    async def list_jobs(self) -> list[JobInfo]:
        """Every job with a state dir, without logs. Raises BackendError."""
        try:
            names = await asyncio.to_thread(self._job_names)
        except OSError as exc:
            raise BackendError(f"cannot list {self.jobs_dir}: {exc}") from exc
        infos = []
        for jid in names:
            try:
                infos.append(await self.info(jid, logs=False))
            except JobNotFound:  # removed meanwhile
                continue
        return infos

    async def remove(self, jid: JobId) -> None:
        """Kill the job's process group if it runs, then delete its state dir.

        SIGTERM first; SIGKILL after ``kill_grace_seconds``.

        Raises:
            JobNotFound: no such job.
            BackendError: the state dir cannot be removed.
        """
        statedir = self._dir(jid)
        if not statedir.is_dir():
            raise JobNotFound(f"no job {jid!r}")
        found = _read_pid(statedir / PID_FILE)
        if found is not None and runner_alive(found[0], statedir, found[1]):
            await self._terminate(jid, *found)
        self._unwatch(jid)
        try:
            await asyncio.to_thread(shutil.rmtree, statedir)
        except FileNotFoundError:
            pass  # a concurrent DELETE got there first
        except OSError as exc:
            raise BackendError(f"cannot remove the state of job {jid!r}: {exc}") from exc
        finally:
            self.notify(jid)
        log.info("job %s removed", jid)

    # -- helpers --------------------------------------------------------------------

    def _dir(self, jid: str) -> Path:
        return self.jobs_dir / jid

    def _job_names(self) -> list[JobId]:
        if not self.jobs_dir.is_dir():
            return []
        return sorted(JobId(p.name) for p in self.jobs_dir.iterdir() if p.is_dir())

    def _launch(
        self, spec: JobSpec, job_data: bytes, statedir: Path, incoming: Path, outgoing: Path
    ) -> tuple[int, int | None, int | None]:
        """Write the job's files (``job_data``: :meth:`RunnerJob.to_bytes`) and
        start its runner: forked by the fork server, or spawned where that
        cannot be used. Returns the runner's pid, start time and pidfd (the
        caller owns it; ``None``: open one from the pid).

        Raises:
            OSError: nothing was started.
        """
        incoming.mkdir(parents=True, exist_ok=True)
        outgoing.mkdir(parents=True, exist_ok=True)
        write_atomic(statedir / SPEC_FILE, spec.model_dump_json())
        write_atomic(statedir / JOB_FILE, job_data)
        pidfd: int | None = None
        try:
            if self._forkserver is None:
                raise ForkServerError("not used")
            launched = self._forkserver.launch(statedir)
        except ForkServerError:
            pid = self._spawn_runner(statedir)
            # not reaped before this (pman reaps it after its exit), so the pid is still its own
            start_time = process_start_time(pid)
        else:
            pid, start_time, pidfd = launched.pid, launched.start_time, launched.pidfd
        # the runner writes the same; writing it here as well closes the
        # window in which the job runs but its state says "not started"
        try:
            write_atomic(statedir / PID_FILE, pid_line(pid, start_time))
        except OSError as exc:  # the runner is started: it must not be reported otherwise
            log.warning("job %s: cannot write the pid file of runner %d: %s", spec.jid, pid, exc)
        return pid, start_time, pidfd

    def _spawn_runner(self, statedir: Path) -> int:
        """Start the runner of ``statedir`` as a new interpreter; returns its pid.

        Raises:
            OSError: it could not be started.
        """
        logs = statedir / LOG_FILE
        # isolated, without site: the runner is one stdlib file (a tenth of the
        # start-up CPU of ``-m pman.backends.local_runner``, paid once per job)
        argv = [sys.executable, "-I", "-S", "-c", _RUNNER_CODE, str(statedir)]
        # posix_spawn leaves no Popen object behind, whose finaliser would warn
        # about (and reap) a runner that is meant to outlive this pman
        return os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),  # the runner needs pman's interpreter setup; the job does not get it
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(logs), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )

    def _read_state(self, jid: JobId) -> _State | None:
        """The job's state; ``None`` while its spec is not written yet.

        Raises:
            JobNotFound: no state dir.
            OSError, ValueError: unreadable state (pydantic errors are ValueErrors).
        """
        statedir = self._dir(jid)
        try:
            spec = JobSpec.model_validate_json((statedir / SPEC_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not statedir.is_dir():
                raise JobNotFound(f"no job {jid!r}") from None
            return None
        try:
            argv = read_job(statedir).argv
        except FileNotFoundError:
            argv = [*spec.entrypoint, *spec.args]
        exit_path = statedir / EXIT_CODE_FILE
        exit_code = _read_int(exit_path)
        pid, start_time = _read_pid(statedir / PID_FILE) or (None, None)
        alive = exit_code is None and pid is not None and runner_alive(pid, statedir, start_time)
        if exit_code is None and pid is not None and not alive:
            # the runner writes exit_code before it exits: re-read to close the race
            exit_code = _read_int(exit_path)
        message = ""
        if exit_code is not None:
            with contextlib.suppress(FileNotFoundError):
                message = (statedir / MESSAGE_FILE).read_text(encoding="utf-8").strip()
        stamp_file = exit_path if exit_code is not None else statedir / PID_FILE
        try:
            timestamp = _iso(stamp_file.stat().st_mtime)
        except FileNotFoundError:
            timestamp = _iso(statedir.stat().st_mtime)
        return _State(spec, argv, pid, start_time, exit_code, message, timestamp, alive)

    def _info(self, jid: JobId, logs: bool) -> JobInfo:
        if not self._dir(jid).is_dir():
            raise JobNotFound(f"no job {jid!r}")
        state = self._read_state(jid)
        if state is None:
            if jid in self._starting:
                return JobInfo(jid=jid, image="", cmd="", status=JobStatus.NOT_STARTED)
            # pman stopped between creating the dir and writing the spec
            return JobInfo(
                jid=jid,
                image="",
                cmd="",
                status=JobStatus.FINISHED_WITH_ERROR,
                message="never started (pman stopped first)",
            )
        status: JobStatus
        exit_code = state.exit_code
        if exit_code is not None:
            if exit_code == 0:
                status, message = JobStatus.FINISHED_SUCCESSFULLY, state.message or "finished"
            else:
                status = JobStatus.FINISHED_WITH_ERROR
                message = state.message or f"exited with code {exit_code}"
        elif state.alive:
            status, message = JobStatus.STARTED, "running"
        elif state.pid is None and jid in self._starting:
            status, message = JobStatus.NOT_STARTED, "starting"
        elif state.pid is None:
            status, message = JobStatus.FINISHED_WITH_ERROR, "never started (pman stopped first)"
        else:
            status, message = JobStatus.FINISHED_WITH_ERROR, LOST_MESSAGE
        return JobInfo(
            jid=jid,
            image=state.spec.image,
            cmd=shlex.join(state.argv),
            status=status,
            message=message,
            timestamp=state.timestamp,
            logs=(
                tail_lines(self._dir(jid) / LOG_FILE, self.settings.job_logs_tail) if logs else ""
            ),
            exit_code=exit_code,
        )

    # -- watching runners -------------------------------------------------------------

    def _watch(
        self, jid: JobId, pid: int, start_time: int | None = None, pidfd: int | None = None
    ) -> None:
        """Call :meth:`notify` for ``jid`` when runner ``pid`` exits.

        ``pidfd``: one the fork server sent (taken over: closed here), else
        one is opened from the pid, and checked against ``start_time``.
        """
        self._unwatch(jid)
        if pidfd is None:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                _reap(pid)
                self.notify(jid)
                return
            except (AttributeError, OSError):
                self._pollers[jid] = asyncio.create_task(self._poll_exit(jid, pid, start_time))
                return
            # a pid from a pid file may have been reused since the runner ended
            if not runner_alive(pid, self._dir(jid), start_time):
                os.close(pidfd)
                _reap(pid)
                self.notify(jid)
                return
        self._pidfds[jid] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit, jid, pid, pidfd)

    def _on_exit(self, jid: JobId, pid: int, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        if self._pidfds.get(jid) == fd:
            del self._pidfds[jid]
        _reap(pid)
        self.notify(jid)

    async def _poll_exit(self, jid: JobId, pid: int, start_time: int | None) -> None:
        statedir = self._dir(jid)
        while runner_alive(pid, statedir, start_time):
            _reap(pid)
            await asyncio.sleep(FALLBACK_POLL_SECONDS)
        _reap(pid)
        self._pollers.pop(jid, None)
        self.notify(jid)

    def _unwatch(self, jid: JobId) -> None:
        fd = self._pidfds.pop(jid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        task = self._pollers.pop(jid, None)
        if task is not None:
            task.cancel()

    async def _terminate(self, jid: JobId, pgid: int, start_time: int | None) -> None:
        """Stop the job's process group (its runner's pid is the group id).

        SIGTERM, then up to ``kill_grace_seconds`` for the runner to record
        the end and exit, then SIGKILL for whatever of the group is left.
        """
        loop = asyncio.get_running_loop()
        statedir = self._dir(jid)
        for sig, grace in (
            (signal.SIGTERM, self.settings.kill_grace_seconds),
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            deadline = loop.time() + grace
            while runner_alive(pgid, statedir, start_time) and loop.time() < deadline:
                _reap(pgid)
                # a bounded wait for the runner to exit, not a status poll
                await asyncio.sleep(0.02)
            _reap(pgid)
        if runner_alive(pgid, statedir, start_time):
            log.warning("job %s: runner %d survived SIGKILL", jid, pgid)
