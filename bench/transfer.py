"""Benchmark of data transfers through pfcon → pfioh on loopback.

For each dataset (default: 200 MiB of 50 × 4 MiB random files, and 1 GiB of
1,000 files of mixed sizes, half of them compressible; see
``_transfer_data.py``) it measures, in one run:

* **raw sink / raw source**: the dataset's bytes, concatenated, POSTed to a
  minimal aiohttp sink that discards them (and, for information, GOT from a
  minimal source): the yardstick (``_transfer_raw.py``), best of at least 3;
* **push**: a job submitted to pfcon with the dataset as its input zip, built
  on the fly as CUBE builds it; timed until pfcon answers, when pfioh has
  unpacked the input (``_transfer_fabric.py``);
* **pull**: after the job (``simpledsapp``, copying input to output, not
  timed), its output fetched from pfcon and unpacked into a new directory,
  timed until the last file is written; the tree is then checked against the
  dataset (every file's SHA-256, not timed);
* the same push and pull with the original pfioh 2.2.0.8 and pfurl, when they
  can be installed (``_transfer_original.py``);
* the peak RSS (``VmHWM``) of each service process, fresh processes per
  dataset.

It prints a table of seconds, throughput (MiB/s of dataset bytes) and ratios
(to the raw sink upload; ours to the original), then the peak RSS of each
service. The targets of the issue are push and pull ≥ 50 % of the raw sink's
throughput and every service ≤ 100 MiB peak RSS at 1 GiB. The last line
printed is, for the 1 GiB dataset (else the largest run)::

    push_ratio=<x> pull_ratio=<y> peak_rss_mib=<z>

Run: ``.venv/bin/python bench/transfer.py [--sizes 200M,1G] [--repeat N]
[--quick] [--workdir DIR] [--keep] [--no-original] [--markdown] [--check]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import _transfer_raw as raw
from _transfer_data import MIB, Dataset, DatasetSpec, ensure_dataset, parse_spec, tree_mismatches
from _transfer_fabric import (
    Site,
    SiteError,
    free_port,
    pull,
    push,
    stop_process,
    unpack_method,
    wait_finished,
    wait_for_http,
)
from _transfer_original import OriginalPfioh, OriginalUnavailable, prepare

#: The issue's targets.
TARGET_RATIO = 0.50
TARGET_RSS_MIB = 100.0
#: The dataset the machine-readable last line is about.
HEADLINE = "1G"
#: The raw transfers take a second or less, so one run is at the mercy of TCP
#: slow start and the scheduler; they are repeated at least this often.
RAW_REPEAT = 3
QUICK_SIZES = "16M:random,32M"

# Names of the measured paths, in table order.
RAW_UP = "raw sink (upload)"
RAW_DOWN = "raw source (download)"
OURS_PUSH = "ours push"
OURS_PULL = "ours pull"
ORIG_PUSH = "original push"
ORIG_PULL = "original pull"
PATHS = (RAW_UP, RAW_DOWN, OURS_PUSH, OURS_PULL, ORIG_PUSH, ORIG_PULL)


class BenchError(RuntimeError):
    """A measurement went wrong (e.g. the pulled tree differs from the dataset)."""


@dataclass
class Measure:
    """The best (shortest) of the repeats of one path on one dataset."""

    seconds: float
    payload_bytes: int
    wire_bytes: int | None

    @property
    def mib_s(self) -> float:
        """Throughput in MiB of dataset bytes per second."""
        return self.payload_bytes / MIB / self.seconds


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    dataset: Dataset
    measures: dict[str, Measure] = field(default_factory=dict)
    rss: dict[str, float | None] = field(default_factory=dict)
    original_client_rss: float | None = None

    def keep_best(self, path: str, seconds: float, wire_bytes: int | None) -> None:
        """Record one repeat, keeping the fastest."""
        best = self.measures.get(path)
        if best is None or seconds < best.seconds:
            self.measures[path] = Measure(seconds, self.dataset.nbytes, wire_bytes)

    def ratio(self, path: str) -> float | None:
        """Throughput of ``path`` over the raw sink's (same bytes, so a ratio of times)."""
        m, base = self.measures.get(path), self.measures.get(RAW_UP)
        return base.seconds / m.seconds if m and base else None

    def versus_original(self, path: str) -> float | None:
        """Throughput of ours over the original's for the same direction."""
        other = {OURS_PUSH: ORIG_PUSH, OURS_PULL: ORIG_PULL}.get(path)
        m, o = self.measures.get(path), self.measures.get(other or "")
        return o.seconds / m.seconds if m and o else None

    def peak_rss(self) -> float | None:
        """The largest peak RSS of our services (MiB)."""
        values = [v for k, v in self.rss.items() if k != "original pfioh" and v is not None]
        return max(values) if values else None


@dataclass
class Options:
    """The command line."""

    specs: list[DatasetSpec]
    repeat: int
    workdir: Path | None
    keep: bool
    seed: int
    original: bool
    markdown: bool
    check: bool


def say(text: str) -> None:
    """A progress line (flushed: a full run takes minutes)."""
    print(text, flush=True)


# -- measuring -------------------------------------------------------------------


async def settle() -> None:
    """Flush dirty pages before a timed transfer (not timed).

    A previous step leaves up to gigabytes to write back; the kernel would do
    it during the next measurement, competing for the disk and, on a small
    machine, for the CPUs, which made the raw sink vary threefold between runs.
    """
    await asyncio.to_thread(os.sync)


async def measure_raw(result: DatasetResult, url: str, list_file: str, repeat: int) -> None:
    """Upload the dataset's bytes to the raw sink, and download them from the raw source."""
    paths = result.dataset.paths()
    for _ in range(max(repeat, RAW_REPEAT)):
        await settle()
        seconds, counted = await raw.upload(url, paths)
        if counted != result.dataset.nbytes:
            raise BenchError(f"raw sink counted {counted} bytes, expected {result.dataset.nbytes}")
        result.keep_best(RAW_UP, seconds, counted)
        await settle()
        seconds, received = await raw.download(url, list_file)
        if received != result.dataset.nbytes:
            raise BenchError(f"raw source sent {received} bytes, expected {result.dataset.nbytes}")
        result.keep_best(RAW_DOWN, seconds, received)


async def measure_ours(result: DatasetResult, run_dir: Path, repeat: int) -> None:
    """Push and pull through a fresh site; record times and the services' peak RSS."""
    site = Site(run_dir / "site")
    scratch = run_dir / "client"
    scratch.mkdir(parents=True)
    await site.start()
    try:
        async with site.client() as client:
            await client.login()  # not part of any transfer
            for i in range(repeat):
                jid = f"bench-{result.dataset.spec.label.lower()}-{i}"
                await settle()
                seconds, sent = await push(client, jid, result.dataset.root)
                result.keep_best(OURS_PUSH, seconds, sent)
                await wait_finished(client, jid)
                dest = scratch / f"pulled-{i}"
                await settle()
                seconds, received = await pull(client, jid, dest, scratch)
                result.keep_best(OURS_PULL, seconds, received)
                await _verify(result.dataset, dest, "ours")
                await client.delete(jid)
                await asyncio.to_thread(shutil.rmtree, dest)
        result.rss.update(site.peak_rss_mib())
    finally:
        await site.stop()


async def measure_original(result: DatasetResult, python: Path, run_dir: Path, repeat: int) -> None:
    """Push and pull with the original pfioh and pfurl; record times and its peak RSS.

    Raises :class:`OriginalUnavailable` if its server or a transfer fails.
    """
    server = OriginalPfioh(python, run_dir / "original")
    scratch = run_dir / "original" / "pulled"
    await server.start()
    try:
        for i in range(repeat):
            key = f"bench{result.dataset.spec.label.lower()}{i}"
            await settle()
            done = await server.push(key, result.dataset.root)
            result.keep_best(ORIG_PUSH, done.seconds, done.zip_bytes)
            await server.run_job(key)
            dest = scratch / f"pulled-{i}"
            await settle()
            done = await server.pull(key, dest)
            result.keep_best(ORIG_PULL, done.seconds, done.zip_bytes)
            await _verify(result.dataset, dest, "original")
            await server.discard(key)
            await asyncio.to_thread(shutil.rmtree, dest)
        result.rss["original pfioh"] = server.peak_rss_mib()
        result.original_client_rss = server.client_peak_rss_mib
    finally:
        await server.stop()


async def _verify(dataset: Dataset, tree: Path, who: str) -> None:
    problems = await asyncio.to_thread(tree_mismatches, dataset, tree)
    if problems:
        shown = "; ".join(problems[:5])
        raise BenchError(f"{who}: the pulled tree differs from the dataset ({shown})")


# -- reporting -------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def throughput_rows(results: list[DatasetResult]) -> list[list[str]]:
    """Rows of the throughput table (header first)."""
    rows = [["dataset", "path", "seconds", "MiB/s", "× raw", "× original", "wire MiB"]]
    for r in results:
        for path in PATHS:
            m = r.measures.get(path)
            if m is None:
                continue
            rows.append(
                [
                    r.dataset.spec.label,
                    path,
                    f"{m.seconds:.2f}",
                    f"{m.mib_s:.1f}",
                    _fmt(r.ratio(path), ".2f"),
                    _fmt(r.versus_original(path), ".2f"),
                    _fmt(None if m.wire_bytes is None else m.wire_bytes / MIB, ".1f"),
                ]
            )
    return rows


def rss_rows(results: list[DatasetResult]) -> list[list[str]]:
    """Rows of the peak-RSS table (header first), in MiB."""
    rows = [["dataset", "pfcon", "pfioh", "pman", "original pfioh", "pfurl client"]]
    for r in results:
        rows.append(
            [r.dataset.spec.label]
            + [_fmt(r.rss.get(k), ".1f") for k in ("pfcon", "pfioh", "pman", "original pfioh")]
            + [_fmt(r.original_client_rss, ".1f")]
        )
    return rows


def render(rows: list[list[str]], markdown: bool, text_columns: int = 1) -> str:
    """A table as aligned plain text, or as Markdown; the first ``text_columns``
    columns are left-aligned, the numbers after them right-aligned."""
    if markdown:
        marks = ["---" if i < text_columns else "---:" for i in range(len(rows[0]))]
        return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], marks, *rows[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def machine_description(workdir: Path) -> list[str]:
    """Lines describing the machine, the Python and the code measured."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    code = _code_location()
    commit = _git(code, "rev-parse", "--short", "HEAD")
    dirty = _git(code, "status", "--porcelain", "--untracked-files=no", "--", "pfcon", "pfioh")
    return [
        f"machine: {cpu}, {os.cpu_count()} CPUs, {mem} RAM; {platform.platform()}",
        f"python: {platform.python_version()}; workdir {workdir} on {_filesystem(workdir)}",
        f"code: {code} at commit {commit}"
        + (" + uncommitted changes in pfcon/pfioh" if dirty else ""),
        f"client unpack: {unpack_method()}",
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def _code_location() -> Path:
    """Where the fabric's code measured is imported from (PYTHONPATH can point elsewhere)."""
    import pfioh

    return Path(pfioh.__file__).resolve().parent.parent


def _git(where: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() if done.returncode == 0 else "?"


def _filesystem(path: Path) -> str:
    """The device and type of the filesystem holding ``path`` (from /proc/mounts)."""
    best = ("?", "?", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[2]):
                best = (device, fstype, mount)
    return f"{best[0]} ({best[1]})"


def report(results: list[DatasetResult], options: Options, original_note: str) -> int:
    """Print the tables, the targets and the machine-readable last line; the exit status."""
    say("")
    say(render(throughput_rows(results), options.markdown, text_columns=2))
    say("")
    say("peak RSS (VmHWM, MiB) per service process, fresh processes per dataset:")
    say(render(rss_rows(results), options.markdown))
    say("")
    if original_note:
        say(f"original pfioh: {original_note}")
    headline = next((r for r in results if r.dataset.spec.label == HEADLINE), None)
    if headline is None:
        headline = max(results, key=lambda r: r.dataset.nbytes)
        say(f"note: {HEADLINE} was not run; the last line is for {headline.dataset.spec.label}")
    push_ratio = headline.ratio(OURS_PUSH) or 0.0
    pull_ratio = headline.ratio(OURS_PULL) or 0.0
    peak = headline.peak_rss() or 0.0
    met = push_ratio >= TARGET_RATIO and pull_ratio >= TARGET_RATIO and peak <= TARGET_RSS_MIB
    say(
        f"targets ({headline.dataset.spec.label}): push and pull ≥ {TARGET_RATIO:.2f} × raw, "
        f"peak RSS ≤ {TARGET_RSS_MIB:.0f} MiB: {'met' if met else 'NOT met'}"
    )
    print(f"push_ratio={push_ratio:.2f} pull_ratio={pull_ratio:.2f} peak_rss_mib={peak:.1f}")
    return 1 if options.check and not met else 0


# -- the run ---------------------------------------------------------------------


async def run(options: Options) -> int:
    """Generate the datasets, measure every path on each, report; the exit status."""
    # a workdir given is for reuse: its datasets and venv stay, only this run's
    # stores go; a temporary one goes whole (unless --keep)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for line in machine_description(workdir):
        say(line)
    datasets_dir = workdir / "datasets"
    runs_dir = workdir / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    transient = runs_dir if options.workdir else workdir
    raw_proc: subprocess.Popen[bytes] | None = None
    try:
        results = []
        for spec in options.specs:
            started = time.perf_counter()
            dataset = await asyncio.to_thread(ensure_dataset, spec, datasets_dir, options.seed)
            say(
                f"dataset {spec.label}: {len(dataset.files)} files, {dataset.nbytes / MIB:.0f} MiB "
                f"({spec.shape.value}) ready in {time.perf_counter() - started:.1f} s"
            )
            results.append(DatasetResult(dataset))

        python: Path | None = None
        original_note = ""
        if options.original:
            say("original pfioh: preparing its venv (pip install pfioh==2.2.0.8 pfurl) ...")
            try:
                python = await asyncio.to_thread(prepare, workdir / "orig-venv")
            except OriginalUnavailable as exc:
                original_note = f"not installable ({exc})"
                say(f"original pfioh: {original_note}")
        else:
            original_note = "not measured (--no-original)"

        port = free_port()
        raw_log = runs_dir / "raw.log"
        runs_dir.mkdir(parents=True, exist_ok=True)
        with raw_log.open("ab") as out:
            raw_proc = subprocess.Popen(
                [sys.executable, str(Path(raw.__file__)), "--port", str(port),
                 "--root", str(datasets_dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        raw_url = f"http://127.0.0.1:{port}/"
        await wait_for_http(raw_url + "health", raw_proc, "raw sink", raw_log)

        for result in results:
            ds = result.dataset
            label = ds.spec.label
            list_file = f"{ds.spec.name}/files.txt"
            (datasets_dir / list_file).write_text(
                "".join(f"{p.relative_to(datasets_dir).as_posix()}\n" for p in ds.paths())
            )
            say(f"{label}: raw sink and source ...")
            await measure_raw(result, raw_url, list_file, options.repeat)
            say(f"{label}: pfcon → pfioh push and pull ...")
            await measure_ours(result, runs_dir / label, options.repeat)
            if python is not None:
                say(f"{label}: original pfioh push and pull ...")
                try:
                    await measure_original(result, python, runs_dir / label, options.repeat)
                except OriginalUnavailable as exc:
                    original_note = str(exc)
                    say(f"original pfioh: {exc}")
                    python = None
            await asyncio.to_thread(shutil.rmtree, runs_dir / label, True)
        return report(results, options, original_note)
    finally:
        if raw_proc is not None:
            await stop_process(raw_proc)
        if options.keep:
            say(f"(kept {workdir})")
        else:
            await asyncio.to_thread(shutil.rmtree, transient, True)


def parse_args(argv: list[str] | None = None) -> Options:
    """Read the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Benchmark pushes and pulls through pfcon → pfioh against a raw HTTP sink.",
    )
    parser.add_argument("--sizes", default="200M,1G", help="datasets, e.g. 200M,1G,16M:random")
    parser.add_argument("--quick", action="store_true", help=f"small smoke run ({QUICK_SIZES})")
    parser.add_argument("--repeat", type=int, default=1, help="take the best of N (default 1)")
    parser.add_argument("--workdir", type=Path, help="where datasets and stores go")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (datasets, venv)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the datasets")
    parser.add_argument("--no-original", action="store_true", help="skip the original pfioh")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        specs = [parse_spec(t) for t in (QUICK_SIZES if args.quick else args.sizes).split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        specs=specs,
        repeat=args.repeat,
        workdir=args.workdir,
        keep=args.keep,
        seed=args.seed,
        original=not args.no_original,
        markdown=args.markdown,
        check=args.check,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0, or 1 on failure (or missed targets with --check)."""
    options = parse_args(argv)
    try:
        return asyncio.run(run(options))
    except (BenchError, SiteError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
