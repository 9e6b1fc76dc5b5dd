"""The C-STORE SCP: receives instances, files them and registers complete series.

pynetdicom is threaded (one thread per association, handlers run on it, and
the C-STORE-RSP goes out only when the handler returns), so the handler does
the least it can: parse the few filing attributes, write the encoded bytes
as received (no decode and re-encode, unless the route de-identifies) and
hand a note to the asyncio side. :class:`SeriesAssembler` lives on the event
loop: it groups instances into series and registers a series once the last
association that sent to it has ended and ``quiet_seconds`` have passed with
no new instance (a series split over associations is registered once).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import select
import socket
import socketserver
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacs_bridge.deid import deidentify_encoded
from pacs_bridge.errors import (
    InvalidDicom,
    InvalidRequest,
    RegistrationUnavailable,
    StorageFull,
)
from pacs_bridge.registrar import Registrar
from pacs_bridge.schema import SeriesMeta, SeriesRegistration, StoragePath
from pacs_bridge.settings import BridgeSettings
from pacs_bridge.storage import (
    Instance,
    InstanceStore,
    file_header,
    read_instance,
    relative_path,
)

log = logging.getLogger(__name__)

#: Registrations (and failures) kept in memory for status and tests.
KEEP = 1000

#: C-STORE statuses (PS3.4 Annex B.2.3 and GG.4).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class _SharedContexts(list[Any]):
    """Supported presentation contexts shared by every association, not copied.

    pynetdicom deep-copies the server's contexts for each association: with
    every storage SOP class × every transfer syntax (170 × 45 UIDs) that took
    ~0.13 s per association here. Negotiation only reads them
    (``negotiate_as_acceptor`` builds new result contexts).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContexts:
        return self


#: The longest a connection's reader waits for the socket before its other checks
#: (timers, stop flag): pynetdicom's own polling period.
READER_WAIT = 0.001


class _WakingQueue(queue.Queue[Any]):
    """The DUL's queue of primitives to send, which wakes the DUL's wait on each put."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            self._wake.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed (the end)
            pass


class _WaitingSocket(AssociationSocket):
    """pynetdicom's socket wrapper, waiting for data instead of sleeping between polls.

    pynetdicom's DUL thread polls: it sleeps 1 ms whenever the socket has no
    data and no primitive is queued, so each C-STORE may wait up to 1 ms
    before its request is read and again before its response is sent.
    ``ready`` instead waits in ``select`` on the socket and on a wake-up
    socket that :class:`_WakingQueue` writes to whenever the association
    queues a primitive (a response), for at most :data:`READER_WAIT`.
    ``recv`` reads into one buffer with as few calls as the kernel allows
    (pynetdicom reads 4 kB per call: ~130 calls and copies for a 512 kB
    slice, ~20 now). Measured in bench/README.md: the slices gain ~20 %; on
    small files the gain is within the noise.
    """

    _wake_r: socket.socket
    _wake_w: socket.socket

    @classmethod
    def adopt(cls, sock: AssociationSocket) -> None:
        """Turn pynetdicom's wrapper of an accepted connection into this class, in place.

        In place: making a second wrapper would announce the connection twice.
        """
        sock.__class__ = cls
        waiting = cast(_WaitingSocket, sock)
        waiting._wake_r, waiting._wake_w = socket.socketpair()
        waiting._wake_r.setblocking(False)
        waiting._wake_w.setblocking(False)
        dul = sock.assoc.dul
        dul.to_provider_queue = _WakingQueue(waiting._wake_w)
        # the wait is in ``ready`` now; the DUL's own sleep only yields
        dul._run_loop_delay = 0.0001

    @property
    def ready(self) -> bool:  # type: ignore[override]
        """Whether data is waiting; waits up to :data:`READER_WAIT` for it or a wake-up."""
        if self.socket is None or self._is_connected is False:
            return False
        try:
            readable, _, _ = select.select([self.socket, self._wake_r], [], [], READER_WAIT)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except OSError:  # nothing left: another wait drained it
                pass
        return self.socket in readable

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``, blocking; fewer if the peer closes the connection."""
        assert self.socket is not None
        out = bytearray(nr_bytes)
        view = memoryview(out)
        got = 0
        try:
            while got < nr_bytes:
                n = self.socket.recv_into(view[got:])
                if not n:
                    break
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del out[got:]
        return out

    def close(self) -> None:
        """Close the connection and the wake-up sockets."""
        super().close()
        self._wake_w.close()
        self._wake_r.close()


class _WaitingRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, with a :class:`_WaitingSocket`."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        _WaitingSocket.adopt(cast(AssociationSocket, assoc.dul.socket))
        return assoc


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on each accepted connection.

    pynetdicom leaves Nagle's algorithm on: each small C-STORE-RSP then waits
    for the peer's delayed ACK (tens of ms per instance; shared/reference/pacs.md §5).
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def shutdown(self) -> None:
        # AssociationServer.shutdown also unlists itself from AE.start_server's
        # private list, where make_server never put it
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE-RSP status with an ErrorComment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


@dataclass
class _Series:
    meta: SeriesMeta
    pacs: str
    #: The AE title that sent the series' first instance (what routing rules match).
    calling: str = ""
    files: list[StoragePath] = field(default_factory=list)
    associations: set[int] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    ended_at: float = 0.0
    registering: bool = False


class SeriesAssembler:
    """Groups stored instances into series and registers each complete series.

    Call :meth:`stored` and :meth:`ended` on the event loop (the receiver does,
    through ``call_soon_threadsafe``). A registration that fails because the
    registrar is unavailable is retried ``attempts`` times with doubling delays.
    ``on_registered(calling_aet, registration)`` is called after each successful
    registration (routing rules; it must not block).
    """

    def __init__(
        self,
        registrar: Registrar,
        *,
        quiet_seconds: float,
        attempts: int = 5,
        retry_seconds: float = 1.0,
        on_registered: Callable[[str, SeriesRegistration], object] | None = None,
    ) -> None:
        self.registrar = registrar
        self.on_registered = on_registered
        self.quiet_seconds = quiet_seconds
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._series: dict[tuple[str, str], _Series] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        #: The latest registrations, oldest first (bounded: the bridge runs for months).
        self.registered: deque[SeriesRegistration] = deque(maxlen=KEEP)
        #: The latest registrations given up on, with the reason.
        self.failed: deque[tuple[SeriesRegistration, str]] = deque(maxlen=KEEP)
        #: Files registered, and given up on, since the start.
        self.files_registered = 0
        self.files_failed = 0

    def stored(
        self,
        assoc: int,
        pacs: str,
        meta: SeriesMeta,
        path: StoragePath | None,
        calling: str | None = None,
    ) -> None:
        """Note an instance of ``assoc`` (``path`` None: a duplicate, nothing new to register).

        ``calling`` is the sender's AE title (default: ``pacs``).
        """
        key = (pacs, meta.SeriesInstanceUID)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(meta=meta, pacs=pacs, calling=calling or pacs)
        series.associations.add(assoc)
        if series.timer is not None:
            # more data: the quiet period starts again when this association ends
            series.timer.cancel()
            series.timer = None
        if path is not None:
            series.files.append(path)

    def ended(self, assoc: int) -> None:
        """Note the end (release or abort) of ``assoc``; start quiet periods of its series."""
        loop = asyncio.get_running_loop()
        for key, series in self._series.items():
            if assoc in series.associations:
                series.associations.discard(assoc)
                if not series.associations:
                    series.ended_at = time.monotonic()
                    series.timer = loop.call_later(self.quiet_seconds, self._complete, key)

    def _complete(self, key: tuple[str, str]) -> None:
        series = self._series.get(key)
        if series is None or series.associations or series.registering:
            return
        series.timer = None
        if not series.files:
            del self._series[key]
            return
        self._spawn(self._register(key))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register(self, key: tuple[str, str]) -> None:
        series = self._series[key]
        series.registering = True
        files, series.files = series.files, []
        registration = SeriesRegistration(
            pacs_identifier=series.pacs,
            meta=series.meta,
            files=files,
            registered_at=datetime.now(UTC),
        )
        delay = self.retry_seconds
        error = ""
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    # from the end of the last association: to the call (what a JSON-lines
                    # registry records), then to the registration done
                    registration.delay_seconds = time.monotonic() - series.ended_at
                    started = time.monotonic()
                    await self.registrar.register(registration)
                    registration.delay_seconds = time.monotonic() - series.ended_at
                    self.registered.append(registration)
                    self.files_registered += len(files)
                    log.info(
                        "registered %d files of series %s from %s in %.3f s (%.3f s after "
                        "the association ended)",
                        len(files),
                        key[1],
                        key[0],
                        time.monotonic() - started,
                        registration.delay_seconds,
                    )
                    error = ""
                    self._registered(series.calling, registration)
                    break
                except RegistrationUnavailable as exc:
                    error = str(exc)
                    if attempt < self.attempts:
                        log.warning("registration attempt %d failed: %s", attempt, exc)
                        await asyncio.sleep(delay)
                        delay *= 2
                except Exception as exc:  # a refusal, or a registrar bug: keep the others going
                    error = str(exc)
                    break
            if error:
                log.error("giving up registering series %s: %s", key[1], error)
                self.failed.append((registration, error))
                self.files_failed += len(files)
        finally:
            series.registering = False
            async with self._changed:
                self._changed.notify_all()
            if series.files and not series.associations:
                # instances arrived while registering and their associations have ended
                self._complete(key)
            elif not series.files and not series.associations and series.timer is None:
                self._series.pop(key, None)

    def _registered(self, calling: str, registration: SeriesRegistration) -> None:
        if self.on_registered is None:
            return
        try:
            self.on_registered(calling, registration)
        except Exception:  # routing trouble never costs a registration
            log.exception("after registering series %s", registration.meta.SeriesInstanceUID)

    async def flush(self) -> None:
        """Register every pending series now (shutdown), and wait for all registrations."""
        for key, series in list(self._series.items()):
            if series.timer is not None:
                series.timer.cancel()
                series.timer = None
            series.associations.clear()
            self._complete(key)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def pending(self) -> int:
        """Series received and not registered yet."""
        return sum(1 for s in self._series.values() if s.files or s.registering)

    async def wait_for(self, files: int, timeout: float) -> list[SeriesRegistration]:
        """Wait until at least ``files`` files are registered or given up on; the registrations.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """

        def done() -> bool:
            return self.files_registered + self.files_failed >= files

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(done)
        return list(self.registered)


class Receiver:
    """The bridge's C-STORE and C-ECHO SCP (see the module docstring).

    Use as ``async with Receiver(settings, registrar) as rx:``; ``rx.port`` is
    the port bound (useful with ``dicom_port=0``).
    """

    def __init__(
        self,
        settings: BridgeSettings,
        registrar: Registrar,
        on_registered: Callable[[str, SeriesRegistration], object] | None = None,
    ) -> None:
        if not settings.accept_any_aet and not settings.calling_aets:
            raise InvalidRequest(
                "the receiver accepts no calling AE title: set PACS_BRIDGE_CALLING_AETS "
                "or PACS_BRIDGE_ACCEPT_ANY_AET=true"
            )
        self.settings = settings
        self.store = InstanceStore(
            settings.storage_root, settings.reserve_bytes, fsync=settings.fsync
        )
        self.assembler = SeriesAssembler(
            registrar,
            quiet_seconds=settings.quiet_seconds,
            attempts=settings.register_attempts,
            retry_seconds=settings.register_retry_seconds,
            on_registered=on_registered,
        )
        #: received, duplicate, rejected, ... instance counts (updated under ``_lock``).
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self.port = settings.dicom_port

    def _ae(self) -> AE:
        if not self.settings.dicom_trace:
            # pynetdicom's standard handlers format a dozen log lines per DIMSE message
            # (and copy each received dataset to say it is "Present"); read when each
            # association is made, so this covers associations started from now on
            _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=self.settings.ae_title)
        # unlimited PDUs: fewer, larger P-DATA fragments (pynetdicom PR #639 "write fastest")
        ae.maximum_pdu_size = 0
        ae.maximum_associations = self.settings.max_associations
        # large objects over slow links: the DIMSE timeout counts per message
        ae.dimse_timeout = None
        ae.network_timeout = 300
        ae.require_calling_aet = [] if self.settings.accept_any_aet else self.settings.calling_aets
        ae.add_supported_context(Verification)
        # any transfer syntax, stored as received (compressed data is not decoded); the
        # acceptor's order decides, so Explicit VR LE first: a sender offering both
        # would otherwise convert to Implicit VR and lose the VRs of private elements
        syntaxes = [
            ExplicitVRLittleEndian,
            *(t for t in ALL_TRANSFER_SYNTAXES if t != ExplicitVRLittleEndian),
        ]
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        return ae

    async def start(self) -> None:
        """Listen on ``dicom_host:dicom_port``.

        Raises:
            OSError: the port cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        ae = self._ae()
        address = (self.settings.dicom_host, self.settings.dicom_port)
        self._server = await asyncio.to_thread(
            ae.make_server,
            address,
            evt_handlers=handlers,
            server_class=_NoDelayServer,
            request_handler=_WaitingRequestHandler,
        )
        self._server.contexts = _SharedContexts(self._server.contexts)
        threading.Thread(
            target=self._server.serve_forever, name="pacs-bridge-receiver", daemon=True
        ).start()
        self.port = int(self._server.server_address[1])
        log.info("receiver %s listening on %s:%d", self.settings.ae_title, address[0], self.port)

    async def stop(self) -> None:
        """Stop listening, end associations, and register every pending series."""
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server = None
        await self.assembler.flush()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _notify(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under a late association
            log.warning("event loop closed; dropped a receiver note")

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_accepted(self, event: evt.Event) -> None:
        peer = event.assoc.requestor
        log.info("association from %s (%s:%s) accepted", peer.ae_title, peer.address, peer.port)

    def _on_rejected(self, event: evt.Event) -> None:
        peer = event.assoc.requestor
        log.warning(
            "association from %s (%s:%s) rejected",
            peer.ae_title,
            peer.address,
            peer.port,
        )

    def _on_end(self, event: evt.Event) -> None:
        # EVT_CONN_CLOSE follows release/abort too; ``ended`` is idempotent per association
        self.association_ended(event.assoc)

    def association_ended(self, assoc: object) -> None:
        """Note the end of an association that delivered instances (thread-safe)."""
        self._notify(self.assembler.ended, id(assoc))

    def handle_store(self, event: evt.Event) -> int | Dataset:
        """The C-STORE handler, also bound to our C-GET associations; returns the status."""
        return self._on_store(event)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        try:
            return self._store(event)
        except Exception as exc:  # a bug must not cost the peer its association
            self._count("rejected")
            log.exception("C-STORE handler failed")
            return _status(PROCESSING_FAILURE, f"internal error: {exc.__class__.__name__}")

    def _store(self, event: evt.Event) -> int | Dataset:
        # the sender: the peer that requested the association, or on a C-GET (which
        # we requested) the PACS that accepted it
        peer = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
        calling = peer.ae_title.strip()
        route = self.settings.route_for(calling)
        pacs = route.pacs_name or calling
        request = cast(C_STORE, event.request)
        try:
            # what event.encoded_dataset() returns, with the file meta built directly
            encoded = (
                file_header(
                    str(request.AffectedSOPClassUID or ""),
                    str(request.AffectedSOPInstanceUID or ""),
                    str(event.context.transfer_syntax),
                )
                + cast(BytesIO, request.DataSet).getvalue()
            )
            inst = read_instance(encoded)
        except (InvalidDicom, UnicodeEncodeError) as exc:
            self._count("rejected")
            log.warning("rejected an instance from %s: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, str(exc))
        if inst.sop_instance_uid != request.AffectedSOPInstanceUID or (
            inst.sop_class_uid and inst.sop_class_uid != request.AffectedSOPClassUID
        ):
            self._count("rejected")
            return _status(DATASET_MISMATCH, "SOP class/instance differ from the request")
        if route.deidentify:
            try:
                encoded, inst = self._deidentify(encoded)
            except InvalidDicom as exc:
                self._count("rejected")
                return _status(CANNOT_UNDERSTAND, str(exc))
        path = relative_path(pacs, inst)
        try:
            written = self.store.write(path, encoded)
        except StorageFull as exc:
            self._count("refused")
            log.error("refusing an instance from %s: %s", calling, exc)
            return _status(OUT_OF_RESOURCES, "storage full")
        except OSError as exc:
            self._count("refused")
            log.error("cannot store an instance from %s: %s", calling, exc)
            return _status(OUT_OF_RESOURCES + 1, f"cannot store: {exc.strerror}")
        self._count("stored" if written else "duplicate")
        self._notify(
            self.assembler.stored,
            id(event.assoc),
            pacs,
            inst.meta,
            path if written else None,
            calling,
        )
        return SUCCESS

    def _deidentify(self, encoded: bytes) -> tuple[bytes, Instance]:
        out = deidentify_encoded(encoded, self.settings.deid_secret.get_secret_value())
        return out, read_instance(out)
