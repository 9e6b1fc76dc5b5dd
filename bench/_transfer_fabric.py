"""A compute site of the fabric (pman, pfioh, pfcon) as real processes, for the benchmark.

Each service runs as ``python -m <service> serve`` on a free loopback port,
with its own directories under one root, wired together as
``cube/cli/stack.py`` does (the ``PFIOH_*``, ``PMAN_*``, ``PFCON_*``
environment). The process started is the Python interpreter itself (no
console-script wrapper in between), so its ``/proc/<pid>/status`` is the
service's own.

:func:`push` and :func:`pull` move a dataset through pfcon the way CUBE's
scheduler does (``cube/scheduler.py``: ``_submit`` and ``_register``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from pfcon.client import PfconClient
from pfcon.schema import JobDescriptor, JobInfo, JobStatus, PluginType
from pfioh.archive import aiter_sync, iter_tree, zip_stream

#: The services of a site, in start order (pfcon needs the other two).
SERVICES = ("pfioh", "pman", "pfcon")
#: The job run between push and pull: the reference ds plugin, whose default
#: (empty) ``--prefix`` copies its input to its output unchanged.
JOB_ENTRYPOINT = ["simpledsapp"]
JOB_IMAGE = "chris-fabric/pl-simpledsapp:1.0.0"


class SiteError(RuntimeError):
    """A service did not start, or a job did not finish successfully."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident set size (``VmHWM``) of a live process, in MiB; None if unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return None


async def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 60.0
) -> None:
    """Wait until ``url`` answers at all (any status); raise :class:`SiteError` if
    ``proc`` exits first or ``timeout`` (seconds) passes."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc.poll() is not None:
                raise SiteError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url):
                    return
            if time.monotonic() > deadline:
                raise SiteError(f"{name} did not answer at {url}:\n{tail(log)}")
            await asyncio.sleep(0.1)


def tail(log: Path, lines: int = 20) -> str:
    """The last lines of a log file ("" if there is none)."""
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns when the process is gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)


@dataclass
class Site:
    """pfioh, pman (local backend) and pfcon under ``root``, started by :meth:`start`."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    user: str = "bench"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def pfcon_url(self) -> str:
        """pfcon's API root."""
        return f"http://127.0.0.1:{self.ports['pfcon']}/api/v1/"

    def client(self) -> PfconClient:
        """A pfcon client with this site's credentials (CUBE's view of the site)."""
        return PfconClient(self.pfcon_url, username=self.user, password=self.password)

    def _env(self) -> dict[str, str]:
        store = self.root / "store"
        # the plugin's console script lives beside this interpreter; pman's local
        # backend looks executables up on PATH
        bindir = str(Path(sys.executable).parent)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CUBE_", "PFCON_", "PFIOH_", "PMAN_"))
        }
        env.update(
            PATH=os.pathsep.join([bindir, env.get("PATH", "")]),
            PFIOH_PORT=str(self.ports["pfioh"]),
            PFIOH_STOREBASE=str(store),
            PMAN_PORT=str(self.ports["pman"]),
            PMAN_STOREBASE=str(store),
            PMAN_DATA_DIR=str(self.root / "pman"),
            PMAN_BACKEND="local",
            PFCON_PORT=str(self.ports["pfcon"]),
            PFCON_PFCON_USER=self.user,
            PFCON_PFCON_PASSWORD=self.password,
            PFCON_SECRET_KEY=secrets.token_hex(32),
            PFCON_SPOOL_DIR=str(self.root / "pfcon-spool"),
            PFCON_PFIOH_URL=f"http://127.0.0.1:{self.ports['pfioh']}/api/v1/",
            PFCON_PMAN_URL=f"http://127.0.0.1:{self.ports['pman']}/api/v1/",
        )
        return env

    async def start(self) -> None:
        """Start the three services and wait for their health checks.

        Raises :class:`SiteError` (after stopping what started) if one fails.
        """
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (self.root / "pfcon-spool").mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in SERVICES}
        env = self._env()
        try:
            for name in SERVICES:
                log = logs / f"{name}.log"
                with log.open("ab") as out:
                    self.procs[name] = subprocess.Popen(
                        [sys.executable, "-m", name, "serve"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                url = f"http://127.0.0.1:{self.ports[name]}/api/v1/health/"
                await wait_for_http(url, self.procs[name], name, log)
        except BaseException:
            await self.stop()
            raise

    def peak_rss_mib(self) -> dict[str, float | None]:
        """Each service's peak RSS so far (MiB); call before :meth:`stop`."""
        return {name: peak_rss_mib(proc.pid) for name, proc in self.procs.items()}

    async def stop(self) -> None:
        """Stop every service (pfcon first)."""
        for name in reversed(SERVICES):
            proc = self.procs.pop(name, None)
            if proc is not None:
                await stop_process(proc)


def job_descriptor(jid: str) -> JobDescriptor:
    """The benchmark's job: ``simpledsapp`` copying its input to its output."""
    return JobDescriptor(
        jid=jid,
        auid="bench",
        image=JOB_IMAGE,
        entrypoint=JOB_ENTRYPOINT,
        type=PluginType.DS,
        env=[f"CHRIS_JID={jid}"],
    )


@dataclass
class Counted:
    """An async byte stream that counts what passes through it (``nbytes``)."""

    source: AsyncIterable[bytes]
    nbytes: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.source:
            self.nbytes += len(chunk)
            yield chunk


def _zip_body(entries: list[tuple[Path, str]]) -> AsyncIterable[bytes]:
    """The input zip as CUBE's scheduler streams it (with a link meter where the code has one)."""
    try:
        from pfioh.archive import LinkMeter
    except ImportError:  # code from before adaptive compression
        return aiter_sync(zip_stream(entries))
    meter = LinkMeter()
    return aiter_sync(zip_stream(entries, meter=meter), meter=meter)


async def push(client: PfconClient, jid: str, root: Path) -> tuple[float, int]:
    """Submit a job with ``root``'s files as input; return (seconds, zip bytes sent).

    Timed from the start of the submission until pfcon answered, by which
    time pfioh has unpacked the input and pman has started the job. The zip
    is built on the fly from the files, as CUBE's scheduler builds it.
    """
    entries = [(path, name) for path, name in iter_tree(root) if not name.endswith("/")]
    body = Counted(_zip_body(entries))
    started = time.perf_counter()
    await client.submit(job_descriptor(jid), body)
    return time.perf_counter() - started, body.nbytes


async def wait_finished(client: PfconClient, jid: str, timeout: float = 600.0) -> JobInfo:
    """Long-poll the job until it ends; raise :class:`SiteError` unless it succeeded."""
    info = await client.status(jid)
    async with asyncio.timeout(timeout):
        while not info.status.is_terminal:
            info = await client.status(jid, wait=30, known=info.status)
    if info.status is not JobStatus.FINISHED_SUCCESSFULLY:
        raise SiteError(f"job {jid} ended {info.status.value}: {info.message}\n{info.logs}")
    return info


async def pull(client: PfconClient, jid: str, dest: Path, spool_dir: Path) -> tuple[float, int]:
    """Fetch the job's output into the new directory ``dest``; return (seconds, zip bytes).

    Timed from the GET until the whole zip has been received and unpacked.
    """
    chunks = Counted(client.iter_output(jid))
    started = time.perf_counter()
    await _unpack_output(chunks, dest, spool_dir)
    return time.perf_counter() - started, chunks.nbytes


#: An extractor that unpacks a zip stream while it arrives: (chunks, new dir).
StreamExtractor = Callable[[AsyncIterable[bytes], Path], Awaitable[object]]


def streaming_extractor() -> StreamExtractor | None:
    """``pfioh.unzip.extract_async`` where the code measured has it, else None.

    Looked up at run time, so the benchmark runs unchanged on the commits
    before and after the streaming extractor (and type-checks against both).
    """
    try:
        module = importlib.import_module("pfioh.unzip")
    except ImportError:
        return None
    found: StreamExtractor | None = getattr(module, "extract_async", None)
    return found


def unpack_method() -> str:
    """How :func:`pull` unpacks on the client side, in words (for the report)."""
    if streaming_extractor() is not None:
        return "streamed into place (pfioh.unzip.extract_async, as CUBE does)"
    return "spooled to a file, then pfioh.archive.safe_extract (as CUBE does)"


async def _unpack_output(chunks: AsyncIterable[bytes], dest: Path, spool_dir: Path) -> None:
    """Unpack a streamed output zip into the new directory ``dest``, as CUBE does.

    With a streaming extractor (see :func:`streaming_extractor`) the zip is
    unpacked while it arrives. Without one, CUBE's way before it: spool the
    zip to a file (writes off the event loop), then extract it with pfioh's
    safe extractor.
    """
    extract_async = streaming_extractor()
    if extract_async is not None:
        await extract_async(chunks, dest)
        return
    archive = importlib.import_module("pfioh.archive")
    safe_extract: Callable[[Path, Path], object] = archive.safe_extract
    fd, name = tempfile.mkstemp(prefix="pull-", suffix=".zip", dir=spool_dir)
    spool = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(safe_extract, spool, dest)
    finally:
        spool.unlink(missing_ok=True)
