"""The emphysema path of ``chris demo``: a synthetic chest CT through ``emphysema-v1``.

Steps (:func:`run_emphysema_demo`): build a phantom with a known
emphysematous fraction (:mod:`ct_phantom`), write it as a DICOM CT series,
upload it, make a feed of it with pl-dircopy, run the ``emphysema-v1``
pipeline (pl-dcm2nifti → pl-lung-emphysema) as a workflow on that feed, wait
for it, download the report and compare its %LAA-950 with the phantom's
truth. Used by the ``demo`` command and by the end-to-end test; it prints
nothing (the command does).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cube.client import CubeClient
from cube.schema import InstanceStatus, PluginInstance

#: Pipeline the demo runs (registered by ``Stack.bootstrap``).
PIPELINE = "emphysema-v1"
#: |reported − true| %LAA-950 allowed, in percentage points: the tolerance the
#: plugin's tests hold the accurate method to (tests/sdk/test_lung_emphysema.py).
LAA_TOLERANCE = 0.5
#: The phantom's emphysematous fraction (before noise) and seed.
FRACTION = 0.18
SEED = 7
REPORT = "emphysema-report.json"

#: How to wait for an instance: (client, instance id, feed id) → its final state.
Waiter = Callable[[CubeClient, int, int], Awaitable[PluginInstance]]


class EmphysemaDemoError(RuntimeError):
    """The pipeline did not finish, or produced no report."""


class LaaMeasurement:
    """A demo's %LAA-950, measured by the pipeline (``report``), against the
    phantom's truth: shared by the results of both demo paths."""

    __slots__ = ()
    true_laa950_percent: float
    report: dict[str, Any]

    @property
    def measured_laa950_percent(self) -> float:
        return float(self.report["laa950_percent"])

    @property
    def error(self) -> float:
        """|measured − true| %LAA-950, percentage points."""
        return abs(self.measured_laa950_percent - self.true_laa950_percent)


@dataclass(frozen=True, slots=True)
class EmphysemaDemoResult(LaaMeasurement):
    """What the demo measured against what the phantom holds."""

    feed_id: int
    workflow_id: int
    instances: list[PluginInstance]
    true_laa950_percent: float
    report: dict[str, Any]
    report_fname: str  #: the report's path in CUBE's storage
    report_local: Path  #: where it was downloaded

    @property
    def ok(self) -> bool:
        return self.error <= LAA_TOLERANCE and all(
            i.status == InstanceStatus.FINISHED_SUCCESSFULLY for i in self.instances
        )


async def wait_plain(c: CubeClient, inst_id: int, feed_id: int) -> PluginInstance:
    """The :data:`Waiter` without a display: the instance's final state, within 900 s."""
    return await c.wait(inst_id, timeout=900.0)


async def run_emphysema_demo(
    c: CubeClient,
    workdir: Path,
    upload_folder: str,
    *,
    title: str = "emphysema demo",
    fast: bool = False,
    wait: Waiter = wait_plain,
) -> EmphysemaDemoResult:
    """Run the emphysema path (module docstring); ``upload_folder`` is a CUBE
    path under the user's ``uploads``; local files go under ``workdir``.

    Raises :class:`EmphysemaDemoError` when the workflow fails or gives no
    report, and ``CubeClientError`` for API errors.
    """
    from ct_phantom import PhantomSpec, make_phantom, write_series

    phantom = make_phantom(PhantomSpec(emphysema_fraction=FRACTION, seed=SEED))
    series = write_series(phantom, workdir / "dicom")
    for path in series:
        await c.upload(path, f"{upload_folder}/{path.name}")
    dircopy = await c.plugin_by_name("pl-dircopy")
    root = await c.create_instance(dircopy.id, {"dir": upload_folder}, title=title)
    pipeline = await c.pipeline_by_name(PIPELINE)
    nodes_info: list[Mapping[str, Any]] = []
    if fast:
        for piping in await c.pipeline_pipings(pipeline.id):
            if piping.title == "emphysema":
                nodes_info.append(
                    {"piping_id": piping.id, "plugin_parameter_defaults": {"fast": True}}
                )
    workflow = await c.create_workflow(
        pipeline.id, root.id, title=title, nodes_info=nodes_info or None
    )
    members = await c.workflow_instances(workflow.id)
    [last] = [i for i in members if i.plugin_name == "pl-lung-emphysema"]
    final = await wait(c, last.id, root.feed_id)
    instances = await c.feed_instances(root.feed_id)
    if final.status != InstanceStatus.FINISHED_SUCCESSFULLY:
        states = ", ".join(f"{i.plugin_name} {i.status.value}" for i in instances)
        raise EmphysemaDemoError(f"workflow {workflow.id} did not finish: {states}")
    files = await c.instance_files(last.id)
    reports = [f for f in files if f.fname.endswith(f"/{REPORT}")]
    if not reports:
        raise EmphysemaDemoError(f"instance {last.id} wrote no {REPORT}")
    local = workdir / REPORT
    await c.download(reports[0].file_resource, local)
    return EmphysemaDemoResult(
        feed_id=root.feed_id,
        workflow_id=workflow.id,
        instances=instances,
        true_laa950_percent=phantom.laa950_percent,
        report=json.loads(local.read_text()),
        report_fname=reports[0].fname,
        report_local=local,
    )
