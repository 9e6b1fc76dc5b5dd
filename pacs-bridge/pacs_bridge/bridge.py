"""The bridge as one object: receiver, registrar, PACS services and retrieves.

The REST API (:mod:`pacs_bridge.api`) is a thin layer over :class:`Bridge`.
PACS services are kept in a JSON file so that they survive restarts;
retrieves are tracked in memory with their progress while they run, and kept
in the state database (:mod:`pacs_bridge.state`) when they start and end, so
that their history survives a restart (one left running by a bridge that
stopped is marked failed when the next one starts).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from pydicom import dcmread

from pacs_bridge.errors import InvalidRequest, NotFound, PacsBridgeError, StateError
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import Registrar, make_registrar
from pacs_bridge.routing import Router
from pacs_bridge.schema import (
    PacsService,
    QueryIn,
    RetrieveIn,
    RetrieveMethod,
    RetrieveState,
    RetrieveStatus,
)
from pacs_bridge.scu import DicomClient, ExportResult
from pacs_bridge.settings import BridgeSettings
from pacs_bridge.state import StateStore

log = logging.getLogger(__name__)


class ServiceStore:
    """PACS services by name, persisted as one JSON object in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._services: dict[str, PacsService] = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                self._services = {k: PacsService.model_validate(v) for k, v in raw.items()}
            except (ValueError, ValidationError, AttributeError) as exc:
                raise InvalidRequest(f"{path} is not a services file: {exc}") from exc

    def all(self) -> list[PacsService]:
        """Every service, by name."""
        return [self._services[k] for k in sorted(self._services)]

    def get(self, name: str) -> PacsService:
        """The service ``name``.

        Raises:
            NotFound: no such service.
        """
        try:
            return self._services[name]
        except KeyError:
            raise NotFound(f"no PACS service {name!r}") from None

    def put(self, service: PacsService) -> None:
        """Add or replace a service, and save."""
        self._services[service.name] = service
        self._save()

    def delete(self, name: str) -> None:
        """Remove a service, and save.

        Raises:
            NotFound: no such service.
        """
        self.get(name)
        del self._services[name]
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {k: v.model_dump(mode="json") for k, v in self._services.items()}
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(self.path)


class Bridge:
    """Receiver, registrar, services and retrieves of one bridge; ``async with`` runs it."""

    def __init__(self, settings: BridgeSettings, registrar: Registrar | None = None) -> None:
        self.settings = settings
        self.registrar = registrar or make_registrar(settings)
        #: Retrieve history and the routing record, kept across restarts.
        self.state = StateStore(settings.resolved_state_file(), keep=settings.keep_history)
        self.state.interrupt_running()
        #: Routing rules at work (None: no rules).
        self.router = Router(settings, state=self.state) if settings.rules else None
        self.receiver = Receiver(
            settings, self.registrar, self.router.route if self.router else None
        )
        self.services = ServiceStore(settings.resolved_services_file())
        #: Retrieves by id: those of earlier runs, then this run's (running ones are live).
        self.retrieves: dict[int, RetrieveStatus] = {r.id: r for r in self.state.retrieves()}
        self._next_id = self.state.last_retrieve_id()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        """Start the receiver."""
        await self.receiver.start()

    async def stop(self) -> None:
        """Stop retrieves and the receiver; register what is pending; close the registrar."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.receiver.stop()
        await self.registrar.close()
        if self.router is not None:
            await self.router.close()
        self.state.close()

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def client(self, name: str) -> DicomClient:
        """A query/retrieve client for the service ``name``.

        Raises:
            NotFound: no such service.
        """
        return DicomClient(
            self.services.get(name),
            self.settings.ae_title,
            dimse_timeout=self.settings.dimse_timeout,
        )

    async def query(self, name: str, query: QueryIn) -> list[dict[str, str]]:
        """C-FIND at ``query.level`` on the service ``name``."""
        return await self.client(name).find(query.level, query.query)

    def retrieve(self, name: str, what: RetrieveIn) -> RetrieveStatus:
        """Start a retrieve from the service ``name``; its status (updated as it runs).

        C-MOVE brings the data to our receiver (the PACS must know our AE
        title); C-GET (``what.method``, or the service's ``prefer_get``)
        brings it on the query association.
        """
        client = self.client(name)
        method = what.method or (
            RetrieveMethod.GET if client.service.prefer_get else RetrieveMethod.MOVE
        )
        self._next_id += 1
        status = RetrieveStatus(
            id=self._next_id,
            service=name,
            method=method,
            StudyInstanceUID=what.StudyInstanceUID,
            SeriesInstanceUID=what.SeriesInstanceUID,
            started_at=datetime.now(UTC),
        )
        self.state.save_retrieve(status)
        self.retrieves[status.id] = status
        # as the state database: the keep_history newest ended ones, and every running one
        # (dicts keep insertion order, the order of ids)
        ended = [k for k, v in self.retrieves.items() if v.state is not RetrieveState.RUNNING]
        for old in ended[: max(0, len(ended) - self.settings.keep_history)]:
            del self.retrieves[old]
        task = asyncio.get_running_loop().create_task(self._retrieve(client, what, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return status

    async def _retrieve(
        self, client: DicomClient, what: RetrieveIn, status: RetrieveStatus
    ) -> None:
        try:
            if status.method is RetrieveMethod.GET:
                await client.get(what, self.receiver, status)
            else:
                await client.move(what, self.settings.ae_title, status)
        except PacsBridgeError as exc:
            status.state = RetrieveState.FAILED
            status.error = str(exc)
        except Exception as exc:  # keep the API answering; the status says what went wrong
            log.exception("retrieve %d failed", status.id)
            status.state = RetrieveState.FAILED
            status.error = f"internal error: {exc}"
        finally:
            status.ended_at = datetime.now(UTC)
            try:
                self.state.save_retrieve(status)
            except StateError as exc:  # the retrieve's outcome stands; only its record is lost
                log.error("retrieve %d: %s", status.id, exc)
            async with self._changed:
                self._changed.notify_all()

    def retrieve_status(self, ident: int) -> RetrieveStatus:
        """The status of retrieve ``ident``.

        Raises:
            NotFound: no such retrieve.
        """
        try:
            return self.retrieves[ident]
        except KeyError:
            raise NotFound(f"no retrieve {ident}") from None

    async def wait_retrieve(self, ident: int, timeout: float) -> RetrieveStatus:
        """The status of retrieve ``ident`` once it has ended, or after ``timeout`` seconds."""
        status = self.retrieve_status(ident)
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: status.state is not RetrieveState.RUNNING)
        except TimeoutError:
            pass
        return status

    async def export(self, name: str, files: list[str], study_from: str | None) -> ExportResult:
        """C-STORE files of the storage (paths relative to its root) to the service ``name``.

        Raises:
            InvalidRequest: a path outside the storage root.
            NotFound: no such service.
            DicomNetworkError: the PACS refused the association or aborted it.
        """
        paths = [self._storage_path(f) for f in files]
        study = None
        if study_from is not None:
            try:
                study = dcmread(self._storage_path(study_from), stop_before_pixels=True)
            except (OSError, ValueError) as exc:
                raise InvalidRequest(f"study_from {study_from!r}: {exc}") from exc
        return await self.client(name).export(paths, study)

    def _storage_path(self, relative: str) -> Path:
        root = self.settings.storage_root.resolve()
        path = (root / relative).resolve()
        if not relative or relative.startswith("/") or not path.is_relative_to(root):
            raise InvalidRequest(f"{relative!r} is not a path inside the storage")
        return path
