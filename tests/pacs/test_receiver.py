"""The C-STORE SCP against DCMTK's storescu (and pynetdicom for exact statuses)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from pathlib import Path

import pytest
from pacs_bridge.errors import InvalidRequest
from pacs_bridge.receiver import Receiver, _WaitingSocket
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.settings import BridgeSettings
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.dicom import write_ct_series
from tests.support.pacs import nodelay_env, storescu

pytestmark = pytest.mark.usefixtures("dcmtk")


async def send(rx: Receiver, files: list[Path], aet: str = "STORESCU") -> str:
    """storescu ``files`` to ``rx`` in one association; its output."""
    proc = await asyncio.to_thread(storescu, "127.0.0.1", rx.port, files, aet=aet)
    return proc.stdout + proc.stderr + f"\nrc={proc.returncode}"


def body(path: Path) -> bytes:
    """The encoded dataset after the file meta (it starts at SpecificCharacterSet)."""
    raw = path.read_bytes()
    return raw[raw.index(b"\x08\x00\x05\x00CS") :]


def stored_files(settings: BridgeSettings) -> list[Path]:
    return sorted((settings.storage_root / "SERVICES" / "PACS").rglob("*.dcm"))


async def test_storescu_series_is_stored_raw_and_registered_once(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "in", 5)
    out = await send(receiver, series.files)
    assert "rc=0" in out, out
    regs = await receiver.assembler.wait_for(5, timeout=10)
    assert len(regs) == 1
    reg = regs[0]
    assert reg.pacs_identifier == "STORESCU"
    assert reg.meta.SeriesInstanceUID == series.series_uid
    assert reg.meta.StudyInstanceUID == series.study_uid
    assert reg.meta.PatientID == "PAT001"
    assert reg.meta.PatientName == "Doe^Jane"
    assert reg.meta.PatientBirthDate == "19700101"
    assert reg.meta.PatientSex == "O"
    assert reg.meta.StudyDate == "20240102"
    assert reg.meta.StudyDescription == "Head^Routine"
    assert reg.meta.AccessionNumber == "ACC0001"
    assert reg.meta.SeriesDescription == "AXIAL CT"
    assert reg.meta.Modality == "CT"
    assert len(reg.files) == 5
    first = reg.files[0]
    parts = first.split("/")
    assert parts[:4] == ["SERVICES", "PACS", "STORESCU", "PAT001-Doe_Jane-19700101"]
    assert parts[4] == "Head_Routine-ACC0001-20240102"
    assert parts[5].startswith("00001-AXIAL_CT-")
    assert parts[6] == f"0001-{series.sop_uids[0]}.dcm"
    # the bytes of each dataset are those sent (no decode and re-encode)
    for src, sop in zip(series.files, series.sop_uids, strict=True):
        [dest] = [settings.storage_root / f for f in reg.files if f.endswith(f"-{sop}.dcm")]
        assert body(dest) == body(src)
        assert dcmread(dest).file_meta.MediaStorageSOPInstanceUID == sop
    # the registry file holds the same registration
    registry = JsonlRegistry(settings.resolved_registry_file())
    assert registry.series() == {("STORESCU", series.series_uid): reg.files}
    assert reg.delay_seconds >= settings.quiet_seconds


async def test_rejected_calling_ae(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "in", 1)
    out = await send(receiver, series.files, aet="INTRUDER")
    assert "rc=0" not in out
    assert "Association Rejected" in out or "rejected" in out.lower(), out
    assert stored_files(settings) == []


async def test_accept_any_calling_ae(settings: BridgeSettings, tmp_path: Path) -> None:
    settings.calling_aets = []
    settings.accept_any_aet = True
    series = write_ct_series(tmp_path / "in", 2)
    async with Receiver(settings, JsonlRegistry(tmp_path / "r.jsonl")) as rx:
        assert "rc=0" in await send(rx, series.files, aet="ANYONE")
        [reg] = await rx.assembler.wait_for(2, timeout=10)
    assert reg.pacs_identifier == "ANYONE"


def test_no_calling_ae_is_a_configuration_error(settings: BridgeSettings) -> None:
    settings.calling_aets = []
    with pytest.raises(InvalidRequest, match="CALLING_AETS"):
        Receiver(settings, JsonlRegistry(settings.resolved_registry_file()))


async def test_echo(receiver: Receiver) -> None:
    proc = await asyncio.create_subprocess_exec(
        "echoscu",
        "-aet",
        "STORESCU",
        "-aec",
        "CHRIS",
        "127.0.0.1",
        str(receiver.port),
        env=nodelay_env(),
    )
    assert await proc.wait() == 0


async def test_missing_series_uid_is_rejected(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "in", 2)
    ds = dcmread(series.files[1])
    del ds.SeriesInstanceUID
    ds.save_as(series.files[1])  # last: storescu stops at the first failed C-STORE
    out = await send(receiver, series.files)
    assert "rc=0" not in out, out  # storescu fails when a C-STORE fails
    await receiver.assembler.wait_for(1, timeout=10)
    assert receiver.counts["rejected"] == 1
    assert receiver.counts["stored"] == 1
    assert len(stored_files(settings)) == 1


def _scu_store(port: int, path: Path) -> tuple[int, str]:
    """Send ``path`` as-is (pynetdicom sends a file's dataset bytes raw); its status."""
    ae = AE(ae_title="OTHER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRIS")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))
    finally:
        assoc.release()


async def test_corrupt_dataset_gets_a_failure_status(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the SCU sends the file's dataset bytes as they are, without parsing them
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    series = write_ct_series(tmp_path / "in", 1)
    raw = bytearray(series.files[0].read_bytes())
    start = raw.index(b"\x08\x00\x05\x00CS")
    # the first element claims a value of 2 GB: the dataset is truncated
    raw[start : start + 12] = b"\x08\x00\x05\x00OB\x00\x00\xf0\xff\xff\x7f"
    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(bytes(raw))
    status, comment = await asyncio.to_thread(_scu_store, receiver.port, bad)
    assert status == 0xC000, hex(status)
    assert comment
    assert stored_files(settings) == []


async def test_storage_reserve_refuses_with_out_of_resources(
    settings: BridgeSettings, tmp_path: Path
) -> None:
    settings.reserve_bytes = shutil.disk_usage(tmp_path).total  # never satisfiable
    series = write_ct_series(tmp_path / "in", 1)
    async with Receiver(settings, JsonlRegistry(tmp_path / "r.jsonl")) as rx:
        status, comment = await asyncio.to_thread(_scu_store, rx.port, series.files[0])
        assert rx.counts["refused"] == 1
    assert status == 0xA700
    assert comment == "storage full"
    assert stored_files(settings) == []


async def test_duplicate_is_not_stored_twice(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "in", 3)
    assert "rc=0" in await send(receiver, [*series.files, series.files[0]])
    assert "rc=0" in await send(receiver, series.files[:2])
    regs = await receiver.assembler.wait_for(3, timeout=10)
    await asyncio.sleep(settings.quiet_seconds * 3)
    assert receiver.counts["stored"] == 3
    assert receiver.counts["duplicate"] == 3
    assert len(stored_files(settings)) == 3
    assert sorted(p for r in receiver.assembler.registered for p in r.files) == sorted(
        p for r in regs for p in r.files
    )
    assert sum(len(r.files) for r in receiver.assembler.registered) == 3


async def test_series_split_over_two_associations_registers_once(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    settings_quiet = receiver.assembler.quiet_seconds = 1.5
    series = write_ct_series(tmp_path / "in", 6)
    assert "rc=0" in await send(receiver, series.files[:3])
    assert "rc=0" in await send(receiver, series.files[3:], aet="STORESCU")
    regs = await receiver.assembler.wait_for(6, timeout=10)
    assert len(regs) == 1
    assert len(regs[0].files) == 6
    assert regs[0].delay_seconds >= settings_quiet


async def test_concurrent_associations(
    receiver: Receiver, settings: BridgeSettings, tmp_path: Path
) -> None:
    series = [write_ct_series(tmp_path / f"in{i}", 8, patient_id=f"P{i}") for i in range(6)]
    outs = await asyncio.gather(*(send(receiver, s.files) for s in series))
    assert all("rc=0" in o for o in outs), outs
    regs = await receiver.assembler.wait_for(48, timeout=20)
    assert sorted(r.meta.SeriesInstanceUID for r in regs) == sorted(s.series_uid for s in series)
    assert all(len(r.files) == 8 for r in regs)


def _scu_send_then_abort(port: int, paths: list[Path]) -> list[int]:
    """Send ``paths`` in one association, then abort it instead of releasing it."""
    ae = AE(ae_title="OTHER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRIS")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    assoc.abort()
    return statuses


async def test_acknowledged_instances_of_an_aborted_association_are_registered(
    receiver: Receiver, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "in", 3)
    statuses = await asyncio.to_thread(_scu_send_then_abort, receiver.port, series.files)
    assert statuses == [0, 0, 0]
    # the sender was told they are stored, so they are kept and registered
    [reg] = await receiver.assembler.wait_for(3, timeout=10)
    assert len(reg.files) == 3


async def test_stop_registers_pending_series_at_once(
    settings: BridgeSettings, tmp_path: Path
) -> None:
    settings.quiet_seconds = 3600
    series = write_ct_series(tmp_path / "in", 2)
    registry = JsonlRegistry(tmp_path / "r.jsonl")
    async with Receiver(settings, registry) as rx:
        assert "rc=0" in await send(rx, series.files)
        await asyncio.sleep(0.2)
        assert registry.registrations() == []
        assert rx.assembler.pending == 1
    [reg] = registry.registrations()
    assert len(reg.files) == 2


def test_waiting_socket_reads_whole_pdus_and_what_a_closed_peer_left() -> None:
    # the receiver's reader replaces pynetdicom's 4 kB reads with reads into one
    # buffer: it must still block for the whole length, and return short when the
    # peer closes (pynetdicom then reports the connection closed)
    ours, peer = socket.socketpair()
    reader = object.__new__(_WaitingSocket)  # only .socket is used by recv
    reader.socket = ours
    try:
        payload = bytes(range(256)) * 2048  # 512 kB: many kernel reads
        sender = threading.Thread(target=peer.sendall, args=(payload,))
        sender.start()
        assert reader.recv(len(payload)) == payload
        sender.join()
        peer.sendall(b"tail")
        peer.close()
        assert reader.recv(10) == b"tail"
    finally:
        ours.close()
