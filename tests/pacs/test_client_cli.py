"""The REST client and ``chris pacs`` against a real ``pacs-bridge serve`` and a real Orthanc.

The bridge runs as its own process (as ``chris up`` starts it) on free ports,
receiving on the port Orthanc knows as CHRIS; it is stopped and started again
to show that retrieve history survives a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pacs_bridge.client import PacsBridgeClient
from pacs_bridge.errors import BridgeUnreachable, DicomNetworkError, InvalidRequest, NotFound
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.schema import (
    PacsService,
    QueryLevel,
    RetrieveIn,
    RetrieveMethod,
    RetrieveState,
    RetrieveStatus,
)

from tests.pacs.conftest import Pacs
from tests.support.components import free_port

ROOT = Path(__file__).resolve().parents[2]


def _pythonpath() -> str:
    return os.pathsep.join(
        [
            str(ROOT),
            str(ROOT / "plugins"),
            str(ROOT / "pacs-bridge"),
            os.environ.get("PYTHONPATH", ""),
        ]
    )


@dataclass
class BridgeProcess:
    """``pacs-bridge serve`` with its state under ``home``; :meth:`start` and :meth:`stop` it."""

    home: Path
    dicom_port: int
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    @property
    def registry(self) -> JsonlRegistry:
        return JsonlRegistry(self.home / "registrations.jsonl")

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": _pythonpath(),
            "PACS_BRIDGE_STORAGE_ROOT": str(self.home / "storage"),
            "PACS_BRIDGE_SERVICES_FILE": str(self.home / "services.json"),
            "PACS_BRIDGE_REGISTRY_FILE": str(self.home / "registrations.jsonl"),
            "PACS_BRIDGE_DICOM_HOST": "127.0.0.1",
            "PACS_BRIDGE_DICOM_PORT": str(self.dicom_port),
            "PACS_BRIDGE_API_PORT": str(self.api_port),
            "PACS_BRIDGE_ACCEPT_ANY_AET": "true",
            "PACS_BRIDGE_RESERVE_BYTES": "0",
            "PACS_BRIDGE_QUIET_SECONDS": "0.3",
        }
        log = (self.home / "bridge.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacs_bridge", "serve"], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}api/v1/status/", timeout=5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the bridge did not start: {self.log()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(timeout=30) == 0, self.log()
        self.proc = None

    def log(self) -> str:
        return (self.home / "bridge.log").read_text(errors="replace")


@pytest.fixture
def bridge(pacs: Pacs, tmp_path: Path) -> Iterator[BridgeProcess]:
    """A running bridge whose receiver is the CHRIS that Orthanc moves to."""
    process = BridgeProcess(tmp_path / "bridge", pacs.receiver_port)
    process.home.mkdir()
    process.start()
    try:
        yield process
    finally:
        process.stop()


def orthanc_service(pacs: Pacs) -> PacsService:
    return PacsService(
        name="orthanc", aet="ORTHANC", host="127.0.0.1", port=pacs.orthanc.dicom_port
    )


async def registered_series(client: PacsBridgeClient, count: int) -> None:
    """Wait until ``count`` series are registered (after the quiet period)."""
    deadline = time.monotonic() + 20
    while (await client.status()).series_registered < count:
        assert time.monotonic() < deadline, "the series was not registered"
        await asyncio.sleep(0.1)


async def test_client_services_query_retrieve_events_export(
    bridge: BridgeProcess, pacs: Pacs
) -> None:
    a1, a2, b1 = pacs.series
    async with PacsBridgeClient(bridge.url) as client:
        assert await client.services() == []
        await client.put_service(orthanc_service(pacs))
        assert [s.name for s in await client.services()] == ["orthanc"]
        assert (await client.service("orthanc")).port == pacs.orthanc.dicom_port
        await client.echo("orthanc")

        [patient] = await client.query("orthanc", QueryLevel.PATIENT, PatientID="PAT-A")
        assert patient["PatientName"] == "Alpha^Ann"
        studies = await client.query("orthanc", "STUDY", PatientID="PAT-*")
        assert {s["StudyInstanceUID"] for s in studies} == {a1.study_uid, b1.study_uid}
        series = await client.query("orthanc", QueryLevel.SERIES, StudyInstanceUID=a1.study_uid)
        assert {s["SeriesInstanceUID"] for s in series} == {a1.series_uid, a2.series_uid}

        started = await client.retrieve(
            "orthanc", RetrieveIn(StudyInstanceUID=a1.study_uid, SeriesInstanceUID=a1.series_uid)
        )
        assert started.state is RetrieveState.RUNNING
        events = [e async for e in client.retrieve_events(started.id)]
        assert [e.event for e in events[:-1]] == [RetrieveState.RUNNING] * (len(events) - 1)
        final = events[-1].status
        assert events[-1].event is RetrieveState.DONE, final
        assert (final.completed, final.failed, final.remaining) == (len(a1.files), 0, 0)
        done = [e.status.completed for e in events]
        assert done == sorted(done)  # progress only grows
        assert final.SeriesInstanceUID == a1.series_uid and final.ended_at is not None
        assert [r.id for r in await client.retrieves()] == [started.id]
        assert (await client.retrieve_status(started.id)).state is RetrieveState.DONE

        await registered_series(client, 1)
        status = await client.status()
        assert status.files_registered == len(a1.files) and status.ae_title == "CHRIS"
        [reg] = bridge.registry.registrations()
        out = await client.export("orthanc", list(reg.files))
        assert len(out.stored) == len(a1.files) and out.failed == {}

        # errors come back as the bridge's exception classes
        with pytest.raises(NotFound, match="no PACS service 'nope'"):
            await client.echo("nope")
        with pytest.raises(NotFound, match="no retrieve 999"):
            await client.retrieve_status(999)
        with pytest.raises(NotFound):
            await anext(client.retrieve_events(999))
        with pytest.raises(InvalidRequest, match="Bogus"):
            await client.query("orthanc", QueryLevel.STUDY, Bogus="1")
        with pytest.raises(InvalidRequest):
            await client.query("orthanc", "IMAGE")
        with pytest.raises(InvalidRequest, match="inside the storage"):
            await client.export("orthanc", ["../etc/passwd"])
        dead = PacsService(name="dead", aet="DEAD", host="127.0.0.1", port=free_port())
        await client.put_service(dead)
        with pytest.raises(DicomNetworkError, match="dead"):
            await client.echo("dead")
        await client.delete_service("dead")
        with pytest.raises(NotFound):
            await client.delete_service("dead")


async def test_bridge_down_is_unreachable() -> None:
    async with PacsBridgeClient(f"http://127.0.0.1:{free_port()}/") as client:
        with pytest.raises(BridgeUnreachable, match="unreachable"):
            await client.services()
        with pytest.raises(BridgeUnreachable):
            await anext(client.retrieve_events(1))


async def test_answers_not_from_the_api_and_a_stream_cut_short() -> None:
    """A proxy's error page, and an event stream that ends while the retrieve runs."""
    running = RetrieveStatus(id=3, service="pacs", method=RetrieveMethod.MOVE)

    async def proxy_error(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>")

    async def cut_short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"event: running\ndata: {running.model_dump_json()}\n\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/services/", proxy_error)
    app.router.add_get("/api/v1/retrieves/3/events/", cut_short)
    async with TestServer(app) as server, PacsBridgeClient(str(server.make_url("/"))) as client:
        with pytest.raises(BridgeUnreachable, match="answered 502 and not as its API"):
            await client.services()
        events = []
        with pytest.raises(BridgeUnreachable, match="ended early"):
            async for event in client.retrieve_events(3):
                events.append(event)
        assert [e.status for e in events] == [running]


async def test_retrieve_history_survives_a_restart(bridge: BridgeProcess, pacs: Pacs) -> None:
    b1 = pacs.series[2]
    what = RetrieveIn(StudyInstanceUID=b1.study_uid)
    async with PacsBridgeClient(bridge.url) as client:
        await client.put_service(orthanc_service(pacs))
        first = await client.wait_retrieve((await client.retrieve("orthanc", what)).id)
        assert first.state is RetrieveState.DONE and first.completed == len(b1.files)
        await registered_series(client, 1)

    await asyncio.to_thread(bridge.stop)
    assert (bridge.home / "state.sqlite3").is_file()
    await asyncio.to_thread(bridge.start)

    async with PacsBridgeClient(bridge.url) as client:
        assert [r.model_dump() for r in await client.retrieves()] == [first.model_dump()]
        assert await client.retrieve_status(first.id) == first
        # an ended retrieve's event stream is its one final event
        [event] = [e async for e in client.retrieve_events(first.id)]
        assert event.event is RetrieveState.DONE and event.status == first
        # ids go on from the kept ones; a retrieve that fails is kept as failed
        await client.put_service(
            PacsService(name="dead", aet="DEAD", host="127.0.0.1", port=free_port())
        )
        second = await client.wait_retrieve((await client.retrieve("dead", what)).id)
        assert second.id == first.id + 1
        assert second.state is RetrieveState.FAILED and "dead (DEAD@" in (second.error or "")
        assert [r.id for r in await client.retrieves()] == [first.id, second.id]


# -- chris pacs --------------------------------------------------------------------


def chris(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "COLUMNS": "250"}
    env.pop("CHRIS_PACS_URL", None)
    if url is not None:
        env["CHRIS_PACS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "cube.cli.main", "pacs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_chris_pacs_commands(bridge: BridgeProcess, pacs: Pacs) -> None:
    a1, a2, b1 = pacs.series
    url = bridge.url
    port = str(pacs.orthanc.dicom_port)

    out = chris(
        "add", "orthanc", "--aet", "ORTHANC", "--host", "127.0.0.1", "--port", port, url=url
    )
    assert out.returncode == 0, out.stderr
    out = chris("services", url=url)
    assert out.returncode == 0 and "orthanc" in out.stdout and "C-MOVE" in out.stdout
    out = chris("echo", "orthanc", url=url)
    assert out.returncode == 0 and "answered C-ECHO" in out.stdout, out.stderr

    out = chris("query", "orthanc", "--patient-id", "PAT-A", url=url)
    assert out.returncode == 0, out.stderr
    assert a1.study_uid in out.stdout and b1.study_uid not in out.stdout
    assert "1 study match(es)" in out.stdout
    out = chris("query", "orthanc", "--level", "SERIES", "--study-uid", a1.study_uid, url=url)
    assert a1.series_uid in out.stdout and a2.series_uid in out.stdout and "CORONAL" in out.stdout
    assert "SpecificCharacterSet" not in out.stdout  # noise left out of the table
    out = chris(
        "query", "orthanc", "--level", "PATIENT", "-m", "PatientID=PAT-B", "--json", url=url
    )
    assert out.returncode == 0, out.stderr
    [patient] = json.loads(out.stdout)
    assert (patient["PatientID"], patient["PatientName"]) == ("PAT-B", "Beta^Bob")
    # without --url or CHRIS_PACS_URL: the API chris up serves
    out = chris("services", "--help")
    assert "CHRIS_PACS_URL" in out.stdout and "http://127.0.0.1:4005/" in out.stdout

    # the URL as an option instead of the environment
    out = chris(
        "retrieve", "orthanc", "--study-uid", a2.study_uid, "--series-uid", a2.series_uid,
        "--wait", "--url", url,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"retrieve 1 done: {len(a2.files)} completed, 0 failed" in out.stdout
    assert f"{len(a2.files)}/{len(a2.files)}" in out.stdout  # the progress bar's last state
    out = chris("status", "1", url=url)
    assert out.returncode == 0 and "retrieve 1 done" in out.stdout
    out = chris("status", url=url)
    assert out.returncode == 0, out.stderr
    assert "CHRIS receiving on DICOM port" in out.stdout and a2.series_uid in out.stdout

    # the retrieved series, once registered, back to the PACS
    deadline = time.monotonic() + 20
    while not bridge.registry.registrations():
        assert time.monotonic() < deadline, "the retrieved series was not registered"
        time.sleep(0.1)
    [reg] = bridge.registry.registrations()
    out = chris("export", "orthanc", *reg.files, url=url)
    assert out.returncode == 0, out.stderr
    assert f"{len(a2.files)} instance(s) stored on orthanc" in out.stdout

    # errors: one line, exit status 1 (2 for bad input), never a traceback
    failures = {
        "no PACS service 'nope'": chris("echo", "nope", url=url),
        "no retrieve 42": chris("status", "42", url=url),
        "'Bogus' is not a DICOM keyword": chris("query", "orthanc", "-m", "Bogus=1", url=url),
        "not a path inside the storage": chris("export", "orthanc", "../x.dcm", url=url),
        "the PACS bridge at": chris("services", url=f"http://127.0.0.1:{free_port()}/"),
    }
    dead_port = str(free_port())
    chris("add", "dead", "--aet", "DEAD", "--host", "127.0.0.1", "--port", dead_port, url=url)
    failures[f"dead (DEAD@127.0.0.1:{dead_port})"] = chris("echo", "dead", url=url)
    failed = chris("retrieve", "dead", "--study-uid", b1.study_uid, "--wait", url=url)
    assert failed.returncode == 1 and "retrieve 2 failed" in failed.stdout, failed.stdout
    followed = chris("status", "2", "--wait", url=url)
    assert followed.returncode == 1 and "retrieve 2 failed" in followed.stdout
    for message, proc in failures.items():
        assert proc.returncode == 1, (message, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    bad = chris("add", "x", "--aet", "A" * 17, "--host", "h", "--port", "1", url=url)
    assert bad.returncode == 2 and "AE title" in bad.stderr and "Traceback" not in bad.stderr
    bad = chris("query", "orthanc", "-m", "novalue", url=url)
    assert bad.returncode == 2 and "KEYWORD=VALUE" in bad.stderr

    out = chris("rm", "dead", url=url)
    assert out.returncode == 0
    assert json.loads((bridge.home / "services.json").read_text()).keys() == {"orthanc"}
