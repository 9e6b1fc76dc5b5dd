"""Benchmark of pman's local backend: the CPU a job start costs, with and without the fork server.

Starts ``--jobs`` trivial jobs (``/bin/true``) through :class:`pman.backends.local.LocalBackend`
twice in one run, with its runners forked by the fork server
(``PMAN_LOCAL_FORKSERVER=true``, the default) and spawned as new interpreters
(``false``), and prints per mode:

* **CPU s/job**: user + system CPU of this process (the backend, on its
  event loop and worker threads) plus its children (the fork server, the
  runners, the jobs), from :func:`resource.getrusage`, divided by the jobs;
  from before the backend starts until it is closed and every child reaped
  (a runner's CPU reaches pman's ``RUSAGE_CHILDREN`` through the fork
  server, which reaps it, when pman reaps the fork server at close);
* **jobs/s**: jobs over the wall time of the same span (each job scheduled
  after the previous one's ``schedule`` returned, as CUBE submits them;
  waited for until all have ended).

Modes alternate, ``--repeat`` times; the best (least CPU) of each is shown,
and the ratio of spawn to fork server. State dirs go to a temporary directory
(``--workdir`` to choose one).

Run: ``.venv/bin/python bench/pman_local.py [--jobs 200] [--repeat 1] [--markdown]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from chris_sdk.descriptor import PluginType  # noqa: E402

from pman.backends.local import LocalBackend  # noqa: E402
from pman.backends.local_runner import reap_children  # noqa: E402
from pman.schema import JobId, JobSpec, JobStatus  # noqa: E402
from pman.settings import PmanSettings  # noqa: E402

MODES = {"fork server": True, "spawn": False}


@dataclass
class Result:
    """One mode's run."""

    mode: str
    jobs: int
    wall_s: float
    self_cpu_s: float
    children_cpu_s: float

    @property
    def cpu_per_job(self) -> float:
        return (self.self_cpu_s + self.children_cpu_s) / self.jobs

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def run_mode(mode: str, jobs: int, workdir: Path) -> Result:
    """Start ``jobs`` ``/bin/true`` jobs in ``mode``; CPU and wall time from start to close."""
    base = Path(tempfile.mkdtemp(prefix="pman-bench-", dir=workdir))
    settings = PmanSettings(
        storebase=base / "store",
        data_dir=base / "pman",
        local_gpus=[],
        local_forkserver=MODES[mode],
    )
    # this process's exited children count in RUSAGE_CHILDREN once reaped
    reap_children()
    self0, children0 = _cpu()
    start = time.perf_counter()
    backend = LocalBackend(settings)
    await backend.start()
    try:
        jids = [JobId(f"bench-{i}") for i in range(jobs)]
        for jid in jids:
            spec = JobSpec(
                jid=jid,
                image="local/true",
                entrypoint=["/bin/true"],
                type=PluginType.FS,
                input_dir=f"{jid}/incoming",
                output_dir=f"{jid}/outgoing",
            )
            await backend.schedule(spec)
        for jid in jids:
            info = await backend.info(jid, logs=False)
            while not info.status.is_terminal:
                info = await backend.wait_for_change(jid, info.status, 30)
            if info.status is not JobStatus.FINISHED_SUCCESSFULLY:
                raise SystemExit(f"{mode}: job {jid} ended {info.status}: {info.message}")
    finally:
        await backend.close()
    reap_children()
    wall = time.perf_counter() - start
    self1, children1 = _cpu()
    return Result(mode, jobs, wall, self1 - self0, children1 - children0)


def table(results: list[Result], markdown: bool) -> str:
    """The results (best of each mode) and the ratio, as text or Markdown."""
    head = ["mode", "jobs", "CPU ms/job", "of which pman", "children", "jobs/s"]
    rows = [
        [
            r.mode,
            str(r.jobs),
            f"{r.cpu_per_job * 1000:.2f}",
            f"{r.self_cpu_s / r.jobs * 1000:.2f}",
            f"{r.children_cpu_s / r.jobs * 1000:.2f}",
            f"{r.jobs_per_s:.1f}",
        ]
        for r in results
    ]
    by_mode = {r.mode: r for r in results}
    fork, spawn = by_mode["fork server"], by_mode["spawn"]
    rows.append(
        [
            "spawn / fork server",
            "",
            f"{spawn.cpu_per_job / fork.cpu_per_job:.2f}x",
            f"{spawn.self_cpu_s / fork.self_cpu_s:.2f}x",
            f"{spawn.children_cpu_s / fork.children_cpu_s:.2f}x",
            f"{spawn.jobs_per_s / fork.jobs_per_s:.2f}x",
        ]
    )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per mode (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; best kept")
    parser.add_argument("--workdir", type=Path, default=None, help="where state dirs go")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        best: dict[str, Result] = {}
        for _ in range(args.repeat):
            for mode in MODES:
                result = await run_mode(mode, args.jobs, Path(tmp))
                if mode not in best or result.cpu_per_job < best[mode].cpu_per_job:
                    best[mode] = result
    print(
        f"host: {platform.node()}, {os.cpu_count()} CPU(s), Linux {platform.release()}, "
        f"Python {platform.python_version()}; best of {args.repeat}"
    )
    print(table(list(best.values()), args.markdown))


if __name__ == "__main__":
    asyncio.run(main())
