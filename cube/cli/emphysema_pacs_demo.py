"""The PACS path of ``chris demo``: a chest CT from a PACS through ``emphysema-v1`` and back.

Steps (:func:`run_emphysema_pacs_demo`), with a running Orthanc
(:mod:`cube.cli.orthanc`) as the PACS and the fabric's DICOM bridge:

1. build the phantom of :mod:`cube.cli.emphysema_demo` (fresh UIDs, so a
   reused ``CHRIS_HOME`` never sees the series as a duplicate) and store it in
   Orthanc through its REST API (no DCMTK needed);
2. register the bridge as an Orthanc modality and have Orthanc C-STORE the
   series to it, as a PACS forwarding rule would;
3. wait for the bridge's routing record: the rule :data:`RULES` (which the
   stack must run with, ``PACS_BRIDGE_RULES``) turned the series into a feed
   running ``emphysema-v1``;
4. wait for pl-lung-emphysema, download its report, compare %LAA-950 with
   the phantom's truth (:data:`~cube.cli.emphysema_demo.LAA_TOLERANCE`);
5. export the Secondary Capture back to Orthanc through the bridge's REST
   API (:class:`~pacs_bridge.client.PacsBridgeClient`) and look it up in
   Orthanc: it must be in the phantom's study.

Used by ``chris demo`` and by the end-to-end test; it prints nothing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs_bridge.client import PacsBridgeClient
from pacs_bridge.schema import PacsService, RoutedSeries, RouteState

from cube.cli.emphysema_demo import (
    FRACTION,
    LAA_TOLERANCE,
    PIPELINE,
    REPORT,
    SEED,
    EmphysemaDemoError,
    LaaMeasurement,
    Waiter,
    wait_plain,
)
from cube.cli.orthanc import Orthanc
from cube.client import CubeClient
from cube.schema import InstanceStatus, PluginInstance

#: The Secondary Capture pl-lung-emphysema writes beside its report.
SC_FILE = "emphysema-sc.dcm"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
#: Short names of the SOP classes the summary shows.
CLASS_NAMES = {CT_CLASS: "CT", SC_CLASS: "SC"}
#: The routing rule the stack runs with for this path (``PACS_BRIDGE_RULES``):
#: CT series named like the phantom's, sent by Orthanc (its AE title), run the pipeline.
RULES: list[dict[str, str]] = [
    {
        "calling_aet": "ORTHANC",
        "modality": "CT",
        "series_description": "^Chest phantom",
        "pipeline": PIPELINE,
        "feed_title": "{PatientID} {SeriesDescription}",
    }
]
#: Orthanc's name for the bridge, and the bridge's name for Orthanc.
BRIDGE_MODALITY = "chris"
PACS_SERVICE = "demo-orthanc"
#: How long the bridge may take from the C-STORE to a started workflow (s): it
#: waits for the series to be complete, registers it in CUBE, then routes it.
ROUTE_TIMEOUT = 180.0
ROUTE_POLL = 0.5


def rules_env() -> dict[str, str]:
    """The stack's extra environment for this path (``StackConfig.extra_env``)."""
    return {"PACS_BRIDGE_RULES": json.dumps(RULES)}


@dataclass(frozen=True, slots=True)
class PacsDemoResult(LaaMeasurement):
    """What came back from the PACS path, against the phantom's truth."""

    study_uid: str
    series_uid: str
    route: RoutedSeries
    instances: list[PluginInstance]
    true_laa950_percent: float
    report: dict[str, Any]
    report_local: Path
    sc_uid: str  #: the exported Secondary Capture's SOPInstanceUID
    #: SOPClassUIDs of the series Orthanc holds in the phantom's study after the export
    study_classes: list[str]

    @property
    def feed_id(self) -> int:
        assert self.route.feed_id is not None  # a started route has its feed
        return self.route.feed_id

    @property
    def sc_in_study(self) -> bool:
        """Whether Orthanc's study holds the CT and the SC, as two series."""
        return sorted(self.study_classes) == sorted([CT_CLASS, SC_CLASS])

    @property
    def ok(self) -> bool:
        return (
            self.error <= LAA_TOLERANCE
            and self.sc_in_study
            and all(i.status == InstanceStatus.FINISHED_SUCCESSFULLY for i in self.instances)
        )


async def wait_routed(
    bridge: PacsBridgeClient, series_uid: str, timeout: float = ROUTE_TIMEOUT
) -> RoutedSeries:
    """The bridge's routing record of ``series_uid`` once it has left ``running``.

    Polled: the bridge's status is the only place the routing shows.
    Raises :class:`EmphysemaDemoError` when it is not routed in time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        routing = (await bridge.status()).routing
        for record in [*routing.routed, *routing.failures]:
            if record.series == series_uid and record.state != RouteState.RUNNING:
                return record
        await asyncio.sleep(ROUTE_POLL)
    raise EmphysemaDemoError(f"the bridge did not route series {series_uid} within {timeout} s")


async def _study_classes(orthanc: Orthanc, study_uid: str) -> list[str]:
    study = await asyncio.to_thread(orthanc.lookup, study_uid, "Study")
    if study is None:
        return []
    classes = []
    for series in (await asyncio.to_thread(orthanc.rest, "GET", f"/studies/{study}"))["Series"]:
        instances = await asyncio.to_thread(orthanc.rest, "GET", f"/series/{series}/instances")
        tags = await asyncio.to_thread(
            orthanc.rest, "GET", f"/instances/{instances[0]['ID']}/simplified-tags"
        )
        classes.append(str(tags["SOPClassUID"]))
    return classes


async def run_emphysema_pacs_demo(
    c: CubeClient,
    bridge: PacsBridgeClient,
    orthanc: Orthanc,
    workdir: Path,
    *,
    wait: Waiter = wait_plain,
    route_timeout: float = ROUTE_TIMEOUT,
) -> PacsDemoResult:
    """Run the PACS path (module docstring); local files go under ``workdir``.

    The bridge must run :data:`RULES` and listen on 127.0.0.1 (Orthanc sends
    to the AE title and port its status reports).

    Raises :class:`EmphysemaDemoError` when the series is not routed, the
    workflow fails, or there is no report or SC; ``OrthancError``,
    ``PacsBridgeError`` and ``CubeClientError`` for their services' errors.
    """
    from ct_phantom import PhantomSpec, make_phantom, write_series
    from pydicom.uid import generate_uid

    phantom = make_phantom(PhantomSpec(emphysema_fraction=FRACTION, seed=SEED))
    study_uid, series_uid = generate_uid(), generate_uid()
    files = write_series(phantom, workdir / "dicom", study_uid=study_uid, series_uid=series_uid)
    for file in files:
        await asyncio.to_thread(orthanc.upload, file)
    series = await asyncio.to_thread(orthanc.lookup, series_uid, "Series")
    if series is None:
        raise EmphysemaDemoError(f"Orthanc does not hold series {series_uid} after the upload")

    status = await bridge.status()
    await asyncio.to_thread(
        orthanc.add_modality, BRIDGE_MODALITY, status.ae_title, status.dicom_port
    )
    await asyncio.to_thread(
        orthanc.rest,
        "POST",
        f"/modalities/{BRIDGE_MODALITY}/store",
        {"Resources": [series], "Synchronous": True},
    )

    route = await wait_routed(bridge, series_uid, route_timeout)
    if route.state != RouteState.STARTED or route.workflow_id is None or route.feed_id is None:
        raise EmphysemaDemoError(f"the bridge did not start {PIPELINE}: {route.error or route}")
    members = await c.workflow_instances(route.workflow_id)
    [last] = [i for i in members if i.plugin_name == "pl-lung-emphysema"]
    final = await wait(c, last.id, route.feed_id)
    instances = await c.feed_instances(route.feed_id)
    if final.status != InstanceStatus.FINISHED_SUCCESSFULLY:
        states = ", ".join(f"{i.plugin_name} {i.status.value}" for i in instances)
        raise EmphysemaDemoError(f"workflow {route.workflow_id} did not finish: {states}")
    outputs = {f.fname.rsplit("/", 1)[-1]: f for f in await c.instance_files(last.id)}
    if REPORT not in outputs or SC_FILE not in outputs:
        raise EmphysemaDemoError(f"instance {last.id} wrote no {REPORT} or no {SC_FILE}")
    local = workdir / REPORT
    await c.download(outputs[REPORT].file_resource, local)
    report = json.loads(local.read_text())

    service = PacsService(
        name=PACS_SERVICE, aet=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    await bridge.put_service(service)
    exported = await bridge.export(PACS_SERVICE, [outputs[SC_FILE].fname])
    if exported.failed or len(exported.stored) != 1:
        raise EmphysemaDemoError(f"the export of the SC to Orthanc failed: {exported.failed}")
    return PacsDemoResult(
        study_uid=study_uid,
        series_uid=series_uid,
        route=route,
        instances=instances,
        true_laa950_percent=phantom.laa950_percent,
        report=report,
        report_local=local,
        sc_uid=exported.stored[0],
        study_classes=await _study_classes(orthanc, study_uid),
    )
