"""GPUs on the local backend: each GPU job gets GPUs of its own, others none.

The host's GPUs are declared with ``local_gpus`` (what ``nvidia-smi`` would
list); the jobs report the ``CUDA_VISIBLE_DEVICES`` they were given.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pman.backends.local_runner import JOB_FILE, LEGACY_JOB_FILE, read_job
from pman.client import PmanClient
from pman.errors import InvalidJob, PmanUnavailable
from pman.schema import JobStatus
from pman.settings import PmanSettings
from tests.pman.conftest import python_spec, running_pman, wait_terminal

#: Writes the GPUs it was given to outgoing/gpus, then waits for $GATE.
GPU_SCRIPT = """
import os, sys, time
out = sys.argv[-1]
os.makedirs(out, exist_ok=True)
seen = [os.environ.get(k, "<unset>") for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")]
with open(os.path.join(out, "gpus"), "w") as f:
    f.write("|".join(seen))
gate = os.environ.get("GATE")
deadline = time.monotonic() + 30
while gate and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def _jid(name: str) -> str:
    return f"gpu-{uuid.uuid4().hex[:8]}-{name}"


def _seen(settings: PmanSettings, jid: str) -> str:
    return (settings.storebase / f"key-{jid}/outgoing" / "gpus").read_text()


async def test_gpu_jobs_get_their_own_gpus(
    make_settings: Callable[..., PmanSettings], tmp_path: Path
) -> None:
    settings = make_settings(local_gpus="GPU-aaa,GPU-bbb,GPU-ccc")
    gate = tmp_path / "gate"
    async with running_pman(settings) as url, PmanClient(url) as c:
        two = python_spec(_jid("two"), GPU_SCRIPT, gpu_limit=2, env=[f"GATE={gate}"])
        one = python_spec(_jid("one"), GPU_SCRIPT, gpu_limit=1, env=[f"GATE={gate}"])
        cpu = python_spec(_jid("cpu"), GPU_SCRIPT)
        await c.schedule(two)
        await c.schedule(one)
        await c.schedule(cpu)
        # all three GPUs are taken now: a fourth GPU job must wait (503), not share
        with pytest.raises(PmanUnavailable) as err:
            await c.schedule(python_spec(_jid("more"), GPU_SCRIPT, gpu_limit=1))
        assert "0 of 3 are free" in err.value.message
        assert (await wait_terminal(c, cpu.jid)).status is JobStatus.FINISHED_SUCCESSFULLY
        gate.touch()
        for spec in (two, one):
            assert (await wait_terminal(c, spec.jid)).status is JobStatus.FINISHED_SUCCESSFULLY
        assert _seen(settings, two.jid) == "GPU-aaa,GPU-bbb|GPU-aaa,GPU-bbb"
        assert _seen(settings, one.jid) == "GPU-ccc|GPU-ccc"
        # a CPU job on a GPU host sees no GPU at all
        assert _seen(settings, cpu.jid) == "|void"
        # ended jobs give their GPUs back
        again = python_spec(_jid("again"), GPU_SCRIPT, gpu_limit=3)
        await c.schedule(again)
        assert (await wait_terminal(c, again.jid)).status is JobStatus.FINISHED_SUCCESSFULLY
        assert _seen(settings, again.jid).startswith("GPU-aaa,GPU-bbb,GPU-ccc|")


async def test_more_gpus_than_the_host_has_is_refused(
    make_settings: Callable[..., PmanSettings],
) -> None:
    async with running_pman(make_settings(local_gpus="0")) as url, PmanClient(url) as c:
        with pytest.raises(InvalidJob) as err:
            await c.schedule(python_spec(_jid("big"), GPU_SCRIPT, gpu_limit=2))
        assert "more than the 1 GPU(s) of this host" in err.value.message
    async with running_pman(make_settings(local_gpus="[]")) as url, PmanClient(url) as c:
        with pytest.raises(InvalidJob):
            await c.schedule(python_spec(_jid("none"), GPU_SCRIPT, gpu_limit=1))
        # no GPUs declared: CPU jobs' environment is left alone
        spec = python_spec(_jid("plain"), GPU_SCRIPT)
        await c.schedule(spec)
        await wait_terminal(c, spec.jid)
        assert _seen(make_settings(), spec.jid) == "<unset>|<unset>"


@pytest.mark.parametrize("legacy", [False, True], ids=["job.nul", "job.json"])
async def test_a_restarted_pman_knows_which_gpus_are_taken(
    make_settings: Callable[..., PmanSettings], tmp_path: Path, legacy: bool
) -> None:
    settings = make_settings(local_gpus="GPU-x")
    gate = tmp_path / "gate"
    held = python_spec(_jid("held"), GPU_SCRIPT, gpu_limit=1, env=[f"GATE={gate}"])
    async with running_pman(settings) as url, PmanClient(url) as c:
        cmd = (await c.schedule(held)).cmd
    if legacy:
        # as a pman of an earlier version left it: the job file in JSON
        statedir = settings.data_dir / "jobs" / held.jid
        job = read_job(statedir)
        (statedir / LEGACY_JOB_FILE).write_text(job.to_json())
        (statedir / JOB_FILE).unlink()
    async with running_pman(settings) as url, PmanClient(url) as c:
        assert (await c.get(held.jid)).cmd == cmd
        with pytest.raises(PmanUnavailable):
            await c.schedule(python_spec(_jid("wants"), GPU_SCRIPT, gpu_limit=1))
        gate.touch()
        await wait_terminal(c, held.jid)
        spec = python_spec(_jid("after"), GPU_SCRIPT, gpu_limit=1)
        await c.schedule(spec)
        assert (await wait_terminal(c, spec.jid)).status is JobStatus.FINISHED_SUCCESSFULLY
