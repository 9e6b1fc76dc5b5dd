"""Benchmark of DICOM ingest: DCMTK storescu into Orthanc and into our receiver, same run.

Two series (default: 100 small CT files of 128×128, and 200 CT slices of
512×512, 0.5 MB each), made with pydicom, are sent with ``storescu`` (one
association per series, ``TCP_NODELAY=1`` as for every DCMTK tool here) to:

* **Orthanc** (Debian's ``orthanc``, its defaults but for storage and ports:
  SQLite index, ``SyncStorageArea`` fsync per file unless ``--no-fsync``, 128 kB PDUs);
* **our receiver**, ``pacs-bridge receive`` as its own process (fsync per
  file, registration into its JSON-lines registry).

Each target is emptied before each send (Orthanc: its studies deleted over
REST; ours: a fresh copy of the series), the two are alternated, and the
best of ``--repeat`` runs is kept.

``register_s`` is what issue 6's target names: the time from the
association's release to the series being registered **in CUBE**. By
default the benchmark starts an embedded CUBE as its own process
(``python -m cube serve --no-scheduler``: SQLite, storage under the work
directory, its default staff user), and the receiver registers into it with
:class:`~pacs_bridge.registrar.CubeRegistrar` (one bulk POST per series);
``--cube-url`` (with ``--cube-storage``, that CUBE's storage root, and
``--cube-user``/``--cube-password``) uses a running CUBE instead, and
``--jsonl`` the receiver's JSON-lines registry (no CUBE). Each send to our
receiver is a fresh copy of the series (new UIDs: CUBE refuses a path
registered twice). The clock starts when storescu exits (it has received
the A-RELEASE-RP, so the receiver has seen the release) and stops when
CUBE's ``pacs/series/search/`` lists the series with all its files in
``pacs/files/search/`` (polled every 20 ms); median and worst over every
send of both series are printed, with the receiver's own figure (from its
log: its release event to CUBE's answer) and CUBE's CPU-ms per
registration.

It prints files/s and MB/s per target, the ratios (ours / Orthanc), each
server's CPU-ms per file (its process's user + system time during each
send, from ``/proc``, median over sends), and last::

    ingest_ratio_small=<x> ingest_ratio_large=<y> register_s=<z>

(``register_s``: the worst over the sends, into CUBE unless ``--jsonl``.)

Run: ``.venv/bin/python bench/pacs.py [--small 100] [--large 200] [--repeat 3] [--keep]
[--jsonl | --cube-url http://127.0.0.1:8000/api/v1/ --cube-storage DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "pacs-bridge")]

from tests.support.components import free_port  # noqa: E402
from tests.support.dicom import Series, write_ct_series  # noqa: E402
from tests.support.pacs import Orthanc, nodelay_env, running_orthanc, storescu  # noqa: E402

#: Seconds between polls of the registry file, and of CUBE (each poll is a request
#: to it, which competes with the registration being measured).
POLL_FILE = 0.005
POLL_CUBE = 0.02
#: How long the receiver may take to answer C-ECHO, and a series to be registered (s).
STARTUP_TIMEOUT = 30.0
REGISTER_TIMEOUT = 30.0


@dataclass
class Result:
    """Best send times per target for one series, and the registration delays."""

    name: str
    files: int
    megabytes: float
    seconds: dict[str, float] = field(default_factory=dict)
    register_s: list[float] = field(default_factory=list)
    #: The receiver's own delays, release event to CUBE's answer (its log), per send.
    bridge_register_s: list[float] = field(default_factory=list)
    #: CUBE's CPU-seconds from the end of each send to the series listed.
    cube_cpu: list[float] = field(default_factory=list)
    #: CPU-seconds each server process used per send (all its threads), every send.
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def record(self, target: str, seconds: float, cpu: float) -> None:
        self.seconds[target] = min(seconds, self.seconds.get(target, float("inf")))
        self.cpu.setdefault(target, []).append(cpu)

    def cpu_ms_per_file(self, target: str) -> float:
        """Median CPU-ms per file of ``target`` over the sends: steadier than wall time."""
        return statistics.median(self.cpu[target]) / self.files * 1000


def cpu_seconds(pid: int) -> float:
    """User plus system CPU-seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of(command_part: str) -> int:
    """The process whose command line contains ``command_part`` (the Orthanc we started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command_part in cmdline and "Orthanc" in cmdline:
                return int(entry.name)
    raise RuntimeError(f"no Orthanc process with {command_part!r} found")


def say(text: str) -> None:
    print(text, flush=True)


class Cube:
    """A CUBE the receiver registers into, polled for the series it registers."""

    def __init__(
        self, url: str, storage: Path, user: str, password: str, pid: int | None = None
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.storage = storage
        self.user = user
        self.password = password
        #: Its process, when the benchmark started it (for its CPU time).
        self.pid = pid
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, path: str) -> dict[str, object]:
        req = urllib.request.Request(
            self.url + path,
            headers={"Authorization": self._auth, "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read()))

    def login(self) -> None:
        """Poll with the user's token: CUBE checks a password (scrypt, ~50 CPU-ms) per
        Basic request, which would compete with the registration being timed."""
        req = urllib.request.Request(
            self.url + "auth-token/",
            data=json.dumps({"username": self.user, "password": self.password}).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            self._auth = "Token " + json.loads(resp.read())["token"]

    def count(self, resource: str, series_uid: str) -> int:
        body = self.get(f"{resource}/search/?SeriesInstanceUID={series_uid}&limit=1")
        return int(body["count"])  # type: ignore[call-overload]

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.pid is not None else float("nan")


def start_cube(workdir: Path) -> tuple[Cube, subprocess.Popen[bytes]]:
    """An embedded CUBE (SQLite, its default staff user) as its own process; waits for it."""
    port = free_port()
    home = workdir / "cube"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    log = (workdir / "cube.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cube",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--home",
            str(home),
            "--no-scheduler",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # the defaults of cube/settings.py: storage under home, staff user chris
    cube = Cube(
        f"http://127.0.0.1:{port}/api/v1/", home / "storage", "chris", "chris1234", proc.pid
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            cube.login()
            return cube, proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"CUBE did not start: {(workdir / 'cube.log').read_text()}"
                ) from None
            time.sleep(0.2)


def start_receiver(
    workdir: Path, port: int, cube: Cube | None, *, fsync: bool
) -> subprocess.Popen[bytes]:
    """``pacs-bridge receive`` on ``port``, accepting any calling AE; waits for C-ECHO."""
    storage = cube.storage if cube else workdir / "bridge" / "storage"
    extra = (
        {
            "PACS_BRIDGE_CUBE_URL": cube.url,
            "PACS_BRIDGE_CUBE_USERNAME": cube.user,
            "PACS_BRIDGE_CUBE_PASSWORD": cube.password,
        }
        if cube
        else {}
    )
    env = {
        **nodelay_env(),
        **extra,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "pacs-bridge")]),
        "PACS_BRIDGE_STORAGE_ROOT": str(storage),
        "PACS_BRIDGE_REGISTRY_FILE": str(workdir / "bridge" / "registrations.jsonl"),
        "PACS_BRIDGE_DICOM_HOST": "127.0.0.1",
        "PACS_BRIDGE_RESERVE_BYTES": str(256 * 1024**2),
        "PACS_BRIDGE_FSYNC": "true" if fsync else "false",
    }
    log = (workdir / "bridge.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacs_bridge",
            "receive",
            "--accept-any-aet",
            "--dicom-port",
            str(port),
            "--log-level",
            "INFO",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (
        subprocess.run(
            ["echoscu", "-aec", "CHRIS", "127.0.0.1", str(port)],
            env=nodelay_env(),
            capture_output=True,
        ).returncode
        != 0
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the receiver did not start: {(workdir / 'bridge.log').read_text()}"
            )
        time.sleep(0.2)
    return proc


def clear_orthanc(orthanc: Orthanc) -> None:
    for study in orthanc.rest("GET", "/studies"):
        orthanc.rest("DELETE", f"/studies/{study}")


def registered_lines(registry: Path) -> list[dict[str, object]]:
    """The complete lines of the registry (the receiver may be appending one right now)."""
    if not registry.is_file():
        return []
    lines = registry.read_text().split("\n")[:-1]  # the text after the last newline: partial
    return [json.loads(line) for line in lines]


def send(port: int, aec: str, series: Series, server_pid: int) -> tuple[float, float]:
    """Seconds storescu takes to send ``series`` in one association, and the server's CPU-s."""
    cpu0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    proc = storescu("127.0.0.1", port, series.files, aet="BENCH", aec=aec)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed: {proc.stdout}{proc.stderr}")
    return elapsed, cpu_seconds(server_pid) - cpu0


def wait_registered(registry: Path, before: int, series: Series, cube: Cube | None) -> float:
    """Seconds until a new registration of ``series`` appears (registry file or CUBE)."""
    t0 = time.perf_counter()
    uid = series.series_uid
    while time.perf_counter() - t0 < REGISTER_TIMEOUT:
        if cube is not None:
            # the series row and its files are committed in one transaction
            if cube.count("pacs/series", uid):
                elapsed = time.perf_counter() - t0
                files = cube.count("pacs/files", uid)
                if files != len(series.files):
                    raise RuntimeError(f"CUBE has {files} files of {len(series.files)}")
                return elapsed
        else:
            lines = registered_lines(registry)[before:]
            if any(r["meta"]["SeriesInstanceUID"] == uid for r in lines):  # type: ignore[index]
                return time.perf_counter() - t0
        time.sleep(POLL_CUBE if cube else POLL_FILE)
    raise RuntimeError(f"series {uid} not registered in {REGISTER_TIMEOUT} s")


#: The receiver's log line for a registration (receiver.SeriesAssembler._register).
REGISTERED_LINE = re.compile(r"registered \d+ files of series (\S+) .* \(([\d.]+) s after")


def bridge_delay(log: Path, series_uid: str) -> float:
    """The receiver's own release-to-registered delay for ``series_uid``, from its log."""
    deadline = time.monotonic() + 2.0
    while True:  # the line is written just after CUBE answers: it may trail the poll
        for match in REGISTERED_LINE.finditer(log.read_text(errors="replace")):
            if match.group(1) == series_uid:
                return float(match.group(2))
        if time.monotonic() > deadline:
            return float("nan")
        time.sleep(POLL_FILE)


def run(args: argparse.Namespace, workdir: Path) -> int:
    say(f"generating data in {workdir} ...")
    shapes = {"small": (args.small, 128), "large": (args.large, 512)}
    sets = [(name, write_ct_series(workdir / name, n, size)) for name, (n, size) in shapes.items()]
    cube_proc: subprocess.Popen[bytes] | None = None
    cube: Cube | None = None
    if args.cube_url:
        cube = Cube(args.cube_url, args.cube_storage, args.cube_user, args.cube_password)
        cube.login()
    elif not args.jsonl:
        cube, cube_proc = start_cube(workdir)
    copies = 0
    results = [
        Result(name, len(s.files), sum(f.stat().st_size for f in s.files) / 1e6) for name, s in sets
    ]
    bridge_port = free_port()
    registry = workdir / "bridge" / "registrations.jsonl"
    sync = not args.no_fsync
    try:
        with running_orthanc(workdir / "orthanc", {}, SyncStorageArea=sync) as orthanc:
            receiver = start_receiver(workdir, bridge_port, cube, fsync=sync)
            orthanc_pid = pid_of(str(workdir / "orthanc" / "orthanc.json"))
            try:
                for (name, series), result in zip(sets, results, strict=True):
                    for _ in range(args.repeat):
                        clear_orthanc(orthanc)
                        result.record(
                            "orthanc", *send(orthanc.dicom_port, "ORTHANC", series, orthanc_pid)
                        )
                        copies += 1
                        n, size = shapes[name]
                        ours = write_ct_series(workdir / f"copy{copies}", n, size)
                        if cube is None:
                            shutil.rmtree(
                                workdir / "bridge" / "storage" / "SERVICES", ignore_errors=True
                            )
                        before = len(registered_lines(registry))
                        result.record("bridge", *send(bridge_port, "CHRIS", ours, receiver.pid))
                        cpu0 = cube.cpu() if cube else float("nan")
                        result.register_s.append(wait_registered(registry, before, ours, cube))
                        result.cube_cpu.append((cube.cpu() if cube else float("nan")) - cpu0)
                        result.bridge_register_s.append(
                            bridge_delay(workdir / "bridge.log", ours.series_uid)
                        )
                        shutil.rmtree(workdir / f"copy{copies}")
            finally:
                receiver.terminate()
                receiver.wait(timeout=30)
    finally:
        if cube_proc is not None:
            cube_proc.terminate()
            cube_proc.wait(timeout=30)
    into = "CUBE" if cube else "JSON-lines registry"
    say("")
    say(f"each file synced to disk before success: {'yes' if sync else 'no'} (both targets)")
    say(
        f"{'series':<8}{'files':>6}{'MB':>8}  {'target':<9}{'s':>8}{'files/s':>9}{'MB/s':>8}"
        f"{'CPU-ms/file':>13}"
    )
    for r in results:
        for target in ("orthanc", "bridge"):
            s = r.seconds[target]
            say(
                f"{r.name:<8}{r.files:>6}{r.megabytes:>8.1f}  {target:<9}{s:>8.3f}"
                f"{r.files / s:>9.1f}{r.megabytes / s:>8.1f}{r.cpu_ms_per_file(target):>13.2f}"
            )
        say(f"{'':<22}ratio bridge/orthanc: {r.seconds['orthanc'] / r.seconds['bridge']:.2f}")
    say("")
    say(f"release → registered in the {into}, s (every send, both series):")
    every = [x for r in results for x in r.register_s]
    own = [x for r in results for x in r.bridge_register_s]
    for r in results:
        say(
            f"  {r.name:<6} storescu exit → listed: "
            + " ".join(f"{x:.3f}" for x in r.register_s)
            + "; receiver's release event → registered: "
            + " ".join(f"{x:.3f}" for x in r.bridge_register_s)
            + (
                f"; CUBE CPU-ms: {statistics.median(r.cube_cpu) * 1000:.0f} (median)"
                if cube and cube.pid is not None
                else ""
            )
        )
    say(
        f"  median {statistics.median(every):.3f} max {max(every):.3f} "
        f"(receiver's own: median {statistics.median(own):.3f} max {max(own):.3f})"
    )
    small, large = results
    say(
        f"ingest_ratio_small={small.seconds['orthanc'] / small.seconds['bridge']:.2f} "
        f"ingest_ratio_large={large.seconds['orthanc'] / large.seconds['bridge']:.2f} "
        f"register_s={max(every):.3f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100, help="small CT files (128×128)")
    parser.add_argument("--large", type=int, default=200, help="512×512 CT slices")
    parser.add_argument("--repeat", type=int, default=3, help="sends per target; the best counts")
    parser.add_argument("--workdir", type=Path, help="where data and storage go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="neither Orthanc (SyncStorageArea) nor the receiver syncs each file",
    )
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="register into the receiver's JSON-lines registry, not into CUBE",
    )
    parser.add_argument(
        "--cube-url", help="register into this running CUBE (its API root), not an embedded one"
    )
    parser.add_argument("--cube-storage", type=Path, help="that CUBE's storage root")
    parser.add_argument("--cube-user", default="chris", help="a staff user of that CUBE")
    parser.add_argument("--cube-password", default="chris1234", help="its password")
    args = parser.parse_args(argv)
    if shutil.which("storescu") is None or not Path("/usr/sbin/Orthanc").is_file():
        print("bench/pacs.py needs the Debian packages dcmtk and orthanc", file=sys.stderr)
        return 2
    if args.cube_url and not args.cube_storage:
        parser.error("--cube-url needs --cube-storage (the receiver writes into it)")
    if args.cube_url and args.jsonl:
        parser.error("--cube-url and --jsonl exclude each other")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
