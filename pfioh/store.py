"""pfioh's job store: each job's data under ``<storebase>/key-<jid>/``.

Layout of one job::

    key-<jid>/
        incoming/    the unpacked input (appears atomically, complete or never)
        outgoing/    the plugin's output (created empty with the input)
        .incoming-*  transient: an input being unpacked (removed on failure)

Uploads are spooled to ``<spool dir>/upload-*.zip`` first (constant memory),
then validated and unpacked in a worker thread, then renamed into place.
All filesystem work runs in worker threads so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from pfioh.archive import DEFAULT_CHUNK_SIZE, aiter_sync, iter_tree, safe_extract, zip_directory
from pfioh.errors import (
    Conflict,
    InvalidKey,
    JobNotFound,
    PayloadTooLarge,
    StorageError,
)
from pfioh.schema import KEY_PATTERN, IncomingReport, JobDataStatus, JobKey

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_KEY_RE = re.compile(KEY_PATTERN)
_SPOOL_PREFIX = "upload-"
_TMP_PREFIX = ".incoming-"


def parse_key(raw: str) -> JobKey:
    """Return ``raw`` as a :data:`JobKey`; raises :class:`InvalidKey` if it is not one."""
    if not _KEY_RE.fullmatch(raw):
        raise InvalidKey(f"invalid job key {raw!r}: must match {KEY_PATTERN}")
    return JobKey(raw)


async def _run_to_completion(fn: Callable[..., _T], *args: object) -> _T:
    """Run ``fn(*args)`` in a worker thread; if cancelled, still wait for it to end.

    A worker thread cannot be interrupted, so returning early would release
    the job's lock while the thread is still touching the job's files.
    """
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait({fut})
        raise


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


async def _discard(path: Path) -> None:
    """Remove a file from a worker thread (freeing a huge file can take a while).

    Shielded: the file is removed even if the caller is cancelled meanwhile.
    """
    await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(_unlink_quietly, path)))


class JobStore:
    """The jobs' data under one storebase.

    ``max_upload_bytes`` bounds an upload as sent and ``max_unpacked_bytes``
    its total uncompressed size; ``chunk_size`` is the unit of streaming
    I/O. Operations on one job (installing input, deleting) are serialised
    by a per-job lock; this assumes one pfioh process per storebase.
    """

    def __init__(
        self,
        storebase: Path,
        spool_dir: Path,
        *,
        max_upload_bytes: int,
        max_unpacked_bytes: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.storebase = storebase
        self.spool_dir = spool_dir
        self.max_upload_bytes = max_upload_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self.chunk_size = chunk_size
        self._locks: dict[JobKey, tuple[asyncio.Lock, int]] = {}

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Create the storebase and spool dir; remove what a crash left half done.

        That is spool files and hidden ``.incoming-*`` dirs of unpacks that
        never completed (they are never visible as ``incoming/``).
        """
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        self.storebase.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.spool_dir.glob(f"{_SPOOL_PREFIX}*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        for tmp in self.storebase.glob(f"key-*/{_TMP_PREFIX}*"):
            log.warning("removing an unpack left incomplete: %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    # -- paths ---------------------------------------------------------------

    def key_dir(self, jid: JobKey) -> Path:
        """The directory holding a job's data."""
        return self.storebase / f"key-{jid}"

    def relative(self, path: Path) -> str:
        """``path`` relative to the storebase, with ``/`` separators."""
        return path.relative_to(self.storebase).as_posix()

    @contextlib.asynccontextmanager
    async def _job_lock(self, jid: JobKey) -> AsyncIterator[None]:
        """Hold the job's lock; the lock is forgotten when nobody uses it."""
        lock, users = self._locks.get(jid, (asyncio.Lock(), 0))
        self._locks[jid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[jid]
            if users <= 1:
                del self._locks[jid]
            else:
                self._locks[jid] = (lock, users - 1)

    # -- incoming ------------------------------------------------------------

    async def receive_incoming(
        self,
        jid: JobKey,
        body: AsyncIterable[bytes],
        *,
        declared_size: int | None = None,
    ) -> IncomingReport:
        """Spool the zip ``body``, unpack it safely and publish it as ``incoming/``.

        ``declared_size`` (the Content-Length, bytes) lets an oversized
        upload be refused before it is read. Raises :class:`Conflict` if the
        job already has input (checked before reading and again before
        publishing), :class:`PayloadTooLarge`, :class:`UnsafeArchive`,
        :class:`CorruptArchive`, :class:`StorageError`, or whatever reading
        ``body`` raises. On any failure nothing of the upload remains.
        """
        if declared_size is not None and declared_size > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"upload of {declared_size} bytes exceeds the limit of "
                f"{self.max_upload_bytes} bytes"
            )
        incoming = self.key_dir(jid) / "incoming"
        if await asyncio.to_thread(os.path.lexists, incoming):
            # Refuse before reading a possibly large body.
            raise Conflict(f"job {jid!r} already has its input")
        spool = await self._spool(body)
        try:
            async with self._job_lock(jid):
                return await _run_to_completion(self._install, jid, spool)
        finally:
            await _discard(spool)

    async def _spool(self, body: AsyncIterable[bytes]) -> Path:
        """Write ``body`` to a new spool file in chunks; return its path.

        Raises :class:`PayloadTooLarge` past ``max_upload_bytes``; the spool
        file is removed on any failure.
        """
        try:
            fd, name = await asyncio.to_thread(
                tempfile.mkstemp, prefix=_SPOOL_PREFIX, suffix=".zip", dir=self.spool_dir
            )
        except OSError as exc:
            raise StorageError(f"cannot spool the upload: {exc.strerror or exc}") from exc
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                await self._copy_body(body, out)
        except BaseException:
            await _discard(path)
            raise
        return path

    async def _copy_body(self, body: AsyncIterable[bytes], out: IO[bytes]) -> None:
        """Copy ``body`` into ``out``, writing in ``chunk_size`` batches from a thread."""
        total = 0
        buf = bytearray()
        async for piece in body:
            total += len(piece)
            if total > self.max_upload_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {self.max_upload_bytes} bytes")
            buf += piece
            if len(buf) >= self.chunk_size:
                await self._write(out, bytes(buf))
                buf.clear()
        if buf:
            await self._write(out, bytes(buf))

    @staticmethod
    async def _write(out: IO[bytes], data: bytes) -> None:
        try:
            await asyncio.to_thread(out.write, data)
        except OSError as exc:
            raise StorageError(f"cannot spool the upload: {exc.strerror or exc}") from exc

    def _install(self, jid: JobKey, spool: Path) -> IncomingReport:
        """Unpack ``spool`` into a hidden dir of the job, then rename it to ``incoming/``.

        Runs in a worker thread under the job's lock; on failure removes
        everything it created (the caller removes ``spool``).
        """
        key = self.key_dir(jid)
        incoming = key / "incoming"
        outgoing = key / "outgoing"
        created_key = False
        try:
            if os.path.lexists(incoming):
                raise Conflict(f"job {jid!r} already has its input")
            try:
                key.mkdir()
                created_key = True
            except FileExistsError:
                pass
            tmp = key / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
            created_out = False
            try:
                report = safe_extract(
                    spool, tmp, max_bytes=self.max_unpacked_bytes, chunk_size=self.chunk_size
                )
                if not outgoing.is_dir():
                    outgoing.mkdir()
                    created_out = True
                # rename() of a directory is atomic on one filesystem: readers
                # see no incoming/ or the complete one.
                os.rename(tmp, incoming)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if created_out:
                    with contextlib.suppress(OSError):
                        outgoing.rmdir()
                raise
        except OSError as exc:
            self._forget_key(key, created_key)
            raise StorageError(
                f"cannot store the input of job {jid!r}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            self._forget_key(key, created_key)
            raise
        log.info("job %s: unpacked %d files, %d bytes", jid, report.nfiles, report.nbytes)
        return IncomingReport(
            jid=jid,
            nfiles=report.nfiles,
            nbytes=report.nbytes,
            path=self.relative(incoming),
            outgoing=self.relative(outgoing),
        )

    @staticmethod
    def _forget_key(key: Path, created: bool) -> None:
        """Remove a job dir this upload created, if it is still empty."""
        if created:
            with contextlib.suppress(OSError):
                key.rmdir()

    # -- status, outgoing, delete --------------------------------------------

    async def status(self, jid: JobKey) -> JobDataStatus:
        """What is stored for ``jid``; raises :class:`JobNotFound` if nothing is."""
        return await asyncio.to_thread(self._status_sync, jid)

    def _status_sync(self, jid: JobKey) -> JobDataStatus:
        key = self.key_dir(jid)
        if not key.is_dir():
            raise JobNotFound(f"no data for job {jid!r}")
        outgoing = key / "outgoing"
        nfiles = 0
        if outgoing.is_dir():
            nfiles = sum(1 for _, name in iter_tree(outgoing) if not name.endswith("/"))
        return JobDataStatus(jid=jid, incoming=(key / "incoming").is_dir(), outgoing_files=nfiles)

    async def outgoing_zip(self, jid: JobKey) -> AsyncGenerator[bytes, None]:
        """The job's ``outgoing/`` as a zip, streamed in chunks of about ``chunk_size``.

        Raises :class:`JobNotFound` (before anything is streamed) if the job
        or its ``outgoing/`` does not exist. The returned iterator raises
        :class:`OSError` if the tree cannot be read while streaming.
        """
        outgoing = self.key_dir(jid) / "outgoing"
        try:
            chunks: Iterator[bytes] = await asyncio.to_thread(zip_directory, outgoing)
        except FileNotFoundError as exc:
            raise JobNotFound(f"no output for job {jid!r}") from exc
        return aiter_sync(chunks, batch_bytes=self.chunk_size)

    async def delete(self, jid: JobKey) -> bool:
        """Remove everything stored for ``jid``; True if there was something.

        Idempotent. Raises :class:`StorageError` if the files cannot be removed.
        """
        async with self._job_lock(jid):
            return await _run_to_completion(self._delete_sync, jid)

    def _delete_sync(self, jid: JobKey) -> bool:
        key = self.key_dir(jid)
        try:
            shutil.rmtree(key)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete job {jid!r}: {exc.strerror or exc}") from exc
        log.info("job %s: deleted", jid)
        return True
