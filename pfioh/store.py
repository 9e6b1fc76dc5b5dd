"""pfioh's job store: each job's data under ``<storebase>/key-<jid>/``.

Layout of one job::

    key-<jid>/
        incoming/    the unpacked input (appears atomically, complete or never)
        outgoing/    the plugin's output (created empty with the input)
        .incoming-*  transient: an input being received (removed on failure)

An upload is unpacked while it arrives (:func:`pfioh.unzip.extract_async`:
constant memory, checked member by member and against its SHA-256
manifest) into a hidden ``.incoming-*`` directory, which is renamed to
``incoming/`` only once complete and verified. Filesystem work runs in
worker threads so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pfioh.archive import (
    DEFAULT_CHUNK_SIZE,
    CompressionPolicy,
    LinkMeter,
    aiter_sync,
    iter_tree,
    zip_directory,
)
from pfioh.errors import (
    Conflict,
    InvalidKey,
    JobNotFound,
    PayloadTooLarge,
    StorageError,
)
from pfioh.schema import KEY_PATTERN, IncomingReport, JobDataStatus, JobKey
from pfioh.unzip import ExtractLimits, ensure_free_space, extract_async

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_KEY_RE = re.compile(KEY_PATTERN)
_TMP_PREFIX = ".incoming-"
# Left over by earlier versions, which spooled uploads before unpacking.
_OLD_SPOOL = ".spool"


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


class JobStore:
    """The jobs' data under one storebase.

    ``max_upload_bytes`` bounds an upload as sent; ``limits`` are what an
    upload may unpack to (sizes, ratio, members, free-space reserve,
    manifest); ``policy`` compresses outgoing archives; ``chunk_size`` is
    the unit of streaming I/O. Operations on one job (receiving input,
    deleting) are serialised by a per-job lock; this assumes one pfioh
    process per storebase.
    """

    def __init__(
        self,
        storebase: Path,
        *,
        max_upload_bytes: int,
        limits: ExtractLimits | None = None,
        policy: CompressionPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.storebase = storebase
        self.max_upload_bytes = max_upload_bytes
        self.limits = limits or ExtractLimits()
        self.policy = policy or CompressionPolicy()
        self.chunk_size = chunk_size
        self._locks: dict[JobKey, tuple[asyncio.Lock, int]] = {}

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Create the storebase; remove what a crash left half done.

        That is hidden ``.incoming-*`` dirs of uploads that never completed
        (they are never visible as ``incoming/``).
        """
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        self.storebase.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.storebase / _OLD_SPOOL, ignore_errors=True)
        for tmp in self.storebase.glob(f"key-*/{_TMP_PREFIX}*"):
            log.warning("removing an upload left incomplete: %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        for key in self.storebase.glob("key-*"):
            with contextlib.suppress(OSError):
                key.rmdir()  # only if that left it empty

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
        """Unpack the zip ``body`` while it arrives and publish it as ``incoming/``.

        ``declared_size`` (the Content-Length, bytes) lets an oversized
        upload, or one the disk cannot hold, be refused before it is read.
        Raises :class:`Conflict` if the job already has input (checked
        before reading and again before publishing),
        :class:`PayloadTooLarge`, :class:`InsufficientStorage`,
        :class:`UnsafeArchive`, :class:`CorruptArchive`,
        :class:`IntegrityError`, :class:`StorageError`, or whatever reading
        ``body`` raises. On any failure nothing of the upload remains.
        """
        if declared_size is not None and declared_size > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"upload of {declared_size} bytes exceeds the limit of "
                f"{self.max_upload_bytes} bytes"
            )
        key = self.key_dir(jid)
        incoming = key / "incoming"
        async with self._job_lock(jid):
            # Refuse before reading a possibly large body.
            if await asyncio.to_thread(os.path.lexists, incoming):
                raise Conflict(f"job {jid!r} already has its input")
            await asyncio.to_thread(
                ensure_free_space, self.storebase, self.limits.reserve_bytes, declared_size or 0
            )
            created_key = await asyncio.to_thread(self._make_key, key)
            tmp = key / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                report = await extract_async(
                    self._capped(body), tmp, limits=self.limits, chunk_size=self.chunk_size
                )
                await _run_to_completion(self._publish, jid, tmp)
            except OSError as exc:
                await _run_to_completion(self._abandon, tmp, key, created_key)
                raise StorageError(
                    f"cannot store the input of job {jid!r}: {exc.strerror or exc}"
                ) from exc
            except BaseException:
                await _run_to_completion(self._abandon, tmp, key, created_key)
                raise
        log.info(
            "job %s: received %d files, %d bytes%s",
            jid,
            report.nfiles,
            report.nbytes,
            " (SHA-256 manifest verified)" if report.verified else " (no manifest)",
        )
        return IncomingReport(
            jid=jid,
            nfiles=report.nfiles,
            nbytes=report.nbytes,
            path=self.relative(incoming),
            outgoing=self.relative(key / "outgoing"),
            verified=report.verified,
        )

    @staticmethod
    def _make_key(key: Path) -> bool:
        """Create the job's directory; True if this call created it."""
        try:
            key.mkdir()
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot create {key.name}: {exc.strerror or exc}") from exc
        return True

    async def _capped(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``body``, refused with :class:`PayloadTooLarge` past ``max_upload_bytes``."""
        total = 0
        async for piece in body:
            total += len(piece)
            if total > self.max_upload_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {self.max_upload_bytes} bytes")
            yield piece

    def _publish(self, jid: JobKey, tmp: Path) -> None:
        """Rename the complete upload to ``incoming/`` and create ``outgoing/``.

        rename() of a directory is atomic on one filesystem: readers see no
        ``incoming/`` or the complete one.
        """
        key = self.key_dir(jid)
        incoming = key / "incoming"
        if os.path.lexists(incoming):
            raise Conflict(f"job {jid!r} already has its input")
        outgoing = key / "outgoing"
        if not outgoing.is_dir():
            outgoing.mkdir()
        os.rename(tmp, incoming)

    @staticmethod
    def _abandon(tmp: Path, key: Path, created_key: bool) -> None:
        """Remove what a failed upload left: its hidden dir and a job dir it created."""
        shutil.rmtree(tmp, ignore_errors=True)
        if created_key:
            with contextlib.suppress(OSError):
                (key / "outgoing").rmdir()
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
        meter = LinkMeter()
        try:
            chunks: Iterator[bytes] = await asyncio.to_thread(
                zip_directory, outgoing, policy=self.policy, meter=meter
            )
        except FileNotFoundError as exc:
            raise JobNotFound(f"no output for job {jid!r}") from exc
        return aiter_sync(chunks, batch_bytes=self.chunk_size, meter=meter)

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
