"""The original pfioh (PyPI ``pfioh==2.2.0.8``, with ``pfurl``) as the benchmark's baseline.

:func:`prepare` makes a virtual environment for it (``<workdir>/orig-venv``,
reused when already there) with ``pip install pfioh==2.2.0.8 pfurl``, or
says why it cannot. :class:`OriginalPfioh` runs the original server the way
pfcon 3's deployments did (``pfioh --forever --createDirsAsNeeded
--storeBase ...``) and moves a dataset with ``pfurl`` through
``_transfer_pfurl_driver.py``, run by the original's interpreter.

Between push and pull the job is simulated by copying ``incoming/`` to
``outgoing/`` on the server's store (not timed), as the fabric's job
(``simpledsapp``) copies its input.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _transfer_fabric import free_port, peak_rss_mib, stop_process, tail

#: What is installed, as the issue names it.
REQUIREMENTS = ("pfioh==2.2.0.8", "pfurl")
#: Seconds allowed for creating the venv and installing into it.
INSTALL_TIMEOUT = 900.0
DRIVER = Path(__file__).with_name("_transfer_pfurl_driver.py")
_STAMP = ".bench-installed"


def _env() -> dict[str, str]:
    """The environment for the original's processes: without PYTHONPATH, which may
    point at the fabric's own ``pfioh`` package and would shadow the original."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class OriginalUnavailable(RuntimeError):
    """The original could not be installed or started; the message says why."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def prepare(venv: Path) -> Path:
    """The interpreter of a venv holding the original pfioh and pfurl (made if needed).

    Raises :class:`OriginalUnavailable` with a one-line reason when the venv
    cannot be made, the packages cannot be installed (no index reachable,
    no wheel or build for this Python), or they do not import (the server
    needs ``distutils``, gone in Python 3.12, and ``cgi``, gone in 3.13).
    """
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *REQUIREMENTS],
        ]  # fmt: skip
        deadline = time.monotonic() + INSTALL_TIMEOUT
        for cmd in steps:
            try:
                done = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    env=_env(),
                    timeout=max(1.0, deadline - time.monotonic()),
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OriginalUnavailable(f"{cmd[2]} failed: {exc}") from exc
            if done.returncode != 0:
                raise OriginalUnavailable(
                    f"`{' '.join(cmd[2:4])}` failed: {_last_line(done.stderr or done.stdout)}"
                )
        stamp.write_text(" ".join(REQUIREMENTS) + "\n")
    check = subprocess.run(
        [str(python), "-c", "import pfurl, pfioh.mount_dir, cgi, distutils.sysconfig"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=venv,  # `-c` imports from the working directory first
    )
    if check.returncode != 0:
        raise OriginalUnavailable(f"installed but does not import: {_last_line(check.stderr)}")
    return python


@dataclass
class Transfer:
    """One timed transfer of the original: seconds, zip bytes, the client's peak RSS (MiB)."""

    seconds: float
    zip_bytes: int | None
    client_peak_rss_mib: float


@dataclass
class OriginalPfioh:
    """An original pfioh server with its store under ``root``, driven by pfurl."""

    python: Path
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    client_peak_rss_mib: float = 0.0
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.root / "logs" / "pfioh-original.log"

    @property
    def store(self) -> Path:
        """The server's ``--storeBase``."""
        return self.root / "store"

    async def start(self) -> None:
        """Start the server; raise :class:`OriginalUnavailable` if it does not listen."""
        self.store.mkdir(parents=True, exist_ok=True)
        self._log.parent.mkdir(parents=True, exist_ok=True)
        (self.root / "client").mkdir(exist_ok=True)
        self.port = free_port()
        script = self.python.parent / "pfioh"
        with self._log.open("ab") as out:
            # the interpreter itself is the process, so /proc/<pid> is the server's
            self.proc = subprocess.Popen(
                [str(self.python), str(script), "--forever", "--createDirsAsNeeded",
                 "--storeBase", str(self.store), "--ip", "127.0.0.1",
                 "--port", str(self.port), "--verbosity", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(),
                cwd=self.root,
                start_new_session=True,
            )  # fmt: skip
        # it has no health route: wait until the port accepts connections
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise OriginalUnavailable(
                    f"the original pfioh exited with {self.proc.returncode}: "
                    f"{_last_line(tail(self._log))}"
                )
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                if time.monotonic() > deadline:
                    await self.stop()
                    raise OriginalUnavailable(
                        "the original pfioh did not listen within 60 s"
                    ) from exc
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def _drive(self, verb: str, key: str, path: Path) -> Transfer:
        """Run the pfurl driver; raise :class:`OriginalUnavailable` if the transfer failed."""
        url = f"127.0.0.1:{self.port}/api/v1/cmd"
        cmd = [
            str(self.python),
            str(DRIVER),
            verb,
            "--http",
            url,
            "--key",
            key,
            "--path",
            str(path),
        ]
        # pfurl writes its zip to the working directory
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=self.root / "client",
            env=_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        try:
            summary = json.loads(_last_line(out.decode(errors="replace")))
        except ValueError:
            summary = {"ok": False, "error": _last_line(err.decode(errors="replace"))}
        if not summary.get("ok"):
            raise OriginalUnavailable(f"original {verb} failed: {summary.get('error')}")
        rss = float(summary["client_peak_rss_mib"])
        self.client_peak_rss_mib = max(self.client_peak_rss_mib, rss)
        return Transfer(float(summary["seconds"]), summary.get("zip_bytes"), rss)

    async def push(self, key: str, src: Path) -> Transfer:
        """``pushPath`` of ``src`` as job ``key`` (timed inside the driver)."""
        return await self._drive("push", key, src)

    async def run_job(self, key: str) -> None:
        """The simulated job: copy ``incoming/`` to ``outgoing/`` (not timed)."""
        base = self.store / f"key-{key}"
        await asyncio.to_thread(
            shutil.copytree, base / "incoming", base / "outgoing", dirs_exist_ok=True
        )

    async def pull(self, key: str, dest: Path) -> Transfer:
        """``pullPath`` of job ``key``'s output into the new directory ``dest``."""
        return await self._drive("pull", key, dest)

    async def discard(self, key: str) -> None:
        """Remove what is left of job ``key`` in the store (pullPath's cleanup removes most)."""
        await asyncio.to_thread(shutil.rmtree, self.store / f"key-{key}", True)

    def peak_rss_mib(self) -> float | None:
        """The server's peak RSS so far (MiB)."""
        return peak_rss_mib(self.proc.pid) if self.proc is not None else None

    async def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None:
            # its SIGTERM handler can take seconds to join request threads, and it
            # keeps no state worth a clean close
            await stop_process(self.proc, grace=2.0)
            self.proc = None
