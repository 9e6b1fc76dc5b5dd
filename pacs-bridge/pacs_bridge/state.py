"""The bridge's durable state: retrieve history and the routing record, in one SQLite file.

Retrieves and routed series used to live only in memory; a restart forgot
them (design notes: no service keeps state only in memory that it cannot
rebuild). :class:`StateStore` keeps each as one JSON document of its wire
model (:class:`~pacs_bridge.schema.RetrieveStatus`,
:class:`~pacs_bridge.schema.RoutedSeries`) in a table of its own, written on
creation and on each change of state, and bounded: each table keeps the
``keep`` newest ended rows (and every running one).

The file defaults to ``state.sqlite3`` beside the services file (see
:meth:`~pacs_bridge.settings.BridgeSettings.resolved_state_file`). Writes are a
few hundred bytes and happen a few times per retrieve or series, so they run
on the caller's thread (the event loop); WAL with ``synchronous=NORMAL`` keeps
each to a write without an fsync, and a crash loses at most the last
transactions, never the file. SQLite's errors become
:class:`~pacs_bridge.errors.StateError`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from pacs_bridge.errors import StateError
from pacs_bridge.schema import RetrieveState, RetrieveStatus, RoutedSeries, RouteState

M = TypeVar("M", RetrieveStatus, RoutedSeries)

#: Ended rows kept per table by default (running retrieves and routings are never deleted).
KEEP = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retrieves (
    id INTEGER PRIMARY KEY,
    running INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS routed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pacs TEXT NOT NULL,
    series TEXT NOT NULL,
    running INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (pacs, series)
);
"""

#: Why a retrieve or routing that was running when the bridge stopped is marked failed.
INTERRUPTED = "interrupted: the bridge stopped before it ended"


class StateStore:
    """Retrieves and routed series of one bridge, in the SQLite file ``path``.

    Raises (every method): :class:`~pacs_bridge.errors.StateError` when the
    file cannot be opened, read or written, or holds rows of another shape.
    """

    def __init__(self, path: Path, *, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.path = path
        self.keep = keep
        # the retrieve threads never write here; the lock guards the loop's
        # writers against a close from another thread (tests, shutdown)
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database {path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- retrieves ---------------------------------------------------------------

    def save_retrieve(self, status: RetrieveStatus) -> None:
        """Insert or update a retrieve, then delete ended ones older than the ``keep`` newest."""
        running = status.state is RetrieveState.RUNNING
        with self._tx() as db:
            db.execute(
                "INSERT INTO retrieves (id, running, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET running = excluded.running, doc = excluded.doc",
                (status.id, running, status.model_dump_json()),
            )
            db.execute(
                "DELETE FROM retrieves WHERE running = 0 AND id NOT IN "
                "(SELECT id FROM retrieves WHERE running = 0 ORDER BY id DESC LIMIT ?)",
                (self.keep,),
            )

    def retrieves(self) -> list[RetrieveStatus]:
        """Every kept retrieve, oldest first."""
        return [
            self._parse(RetrieveStatus, doc)
            for (doc,) in self._rows("SELECT doc FROM retrieves ORDER BY id")
        ]

    def last_retrieve_id(self) -> int:
        """The highest retrieve id ever kept (0: none), so that ids are not reused."""
        [(value,)] = self._rows("SELECT COALESCE(MAX(id), 0) FROM retrieves")
        return int(value)

    # -- routing -----------------------------------------------------------------

    def save_routed(self, record: RoutedSeries) -> None:
        """Insert or update the routing of one series; then only the ``keep`` newest ended stay.

        A series keeps the place of its first routing.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO routed (pacs, series, running, failed, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (pacs, series) DO UPDATE SET running = excluded.running, "
                "failed = excluded.failed, doc = excluded.doc",
                (
                    record.pacs,
                    record.series,
                    record.state is RouteState.RUNNING,
                    record.state is RouteState.FAILED,
                    record.model_dump_json(),
                ),
            )
            db.execute(
                "DELETE FROM routed WHERE running = 0 AND seq NOT IN "
                "(SELECT seq FROM routed WHERE running = 0 ORDER BY seq DESC LIMIT ?)",
                (self.keep,),
            )

    def routed(self) -> list[RoutedSeries]:
        """Every kept routed series, oldest first."""
        return [
            self._parse(RoutedSeries, doc)
            for (doc,) in self._rows("SELECT doc FROM routed ORDER BY seq")
        ]

    # -- restart -----------------------------------------------------------------

    def interrupt_running(self) -> None:
        """Mark retrieves and routings left running by a bridge that stopped as failed.

        Their threads and tasks died with that process; nothing will end them.
        """
        now = datetime.now(UTC)
        for status in self.retrieves():
            if status.state is RetrieveState.RUNNING:
                status.state, status.error, status.ended_at = RetrieveState.FAILED, INTERRUPTED, now
                self.save_retrieve(status)
        for record in self.routed():
            if record.state is RouteState.RUNNING:
                record.state, record.error = RouteState.FAILED, INTERRUPTED
                self.save_routed(record)

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc

    def _parse(self, model: type[M], doc: object) -> M:
        try:
            return model.model_validate_json(str(doc))
        except ValidationError as exc:
            raise StateError(f"state database {self.path}: a bad {model.__name__}: {exc}") from exc
