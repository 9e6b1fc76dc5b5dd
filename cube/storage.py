"""File storage of CUBE: an abstract base and the POSIX directory backend.

Storage paths are relative, ``/``-separated (``home/chris/uploads/a.dcm``).
Writes land in a temporary file beside the target and are renamed into
place only when complete, so a reader never sees a partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable
from pathlib import Path
from typing import IO

from cube.errors import BadRequest, PayloadTooLarge

CHUNK = 1 << 20
# A staging dir untouched this long belongs to no live transfer.
_STALE_STAGING_SECONDS = 24 * 3600


def check_storage_path(path: str, *, what: str = "path") -> str:
    """Normalise a storage path, refusing absolute paths, ``..`` and empty parts.

    Raises:
        BadRequest: the path is unsafe or empty.
    """
    cleaned = path.strip().strip("/") if not path.startswith("/") else path
    if not cleaned or cleaned.startswith("/") or "\\" in cleaned or "\x00" in cleaned:
        raise BadRequest.field(what, f"invalid path {path!r}")
    parts = cleaned.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadRequest.field(what, f"invalid path {path!r}: empty, '.' or '..' component")
    return "/".join(parts)


class Storage(ABC):
    """Where CUBE keeps file contents; the database keeps their metadata."""

    @abstractmethod
    def local_path(self, fname: str) -> Path:
        """A POSIX path for ``fname`` (the directory backend's native form)."""

    @abstractmethod
    async def write_stream(
        self, fname: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> int:
        """Store a stream under ``fname``; returns its size in bytes."""

    @abstractmethod
    def write_fileobj(self, fname: str, src: IO[bytes]) -> int:
        """Store a (blocking) file object under ``fname``; returns its size."""

    @abstractmethod
    def open(self, fname: str) -> IO[bytes]:
        """Open a stored file for reading (blocking)."""

    @abstractmethod
    async def delete_tree(self, prefix: str) -> None:
        """Delete everything under ``prefix`` (a folder path); absent is fine."""

    @abstractmethod
    def staging_dir(self) -> Path:
        """A new, not yet existing directory path, on the storage's own
        filesystem, where a tree can be assembled before :meth:`install_tree`."""

    @abstractmethod
    async def install_tree(self, staged: Path, prefix: str) -> None:
        """Make the tree at ``staged`` the content of folder ``prefix``.

        Whatever ``prefix`` held is replaced by two renames, so no reader
        ever sees part of the new tree. ``staged`` is consumed.
        """


class FilesystemStorage(Storage):
    """Storage in a local directory (the embedded default; NFS in production)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._drop_stale_staging()

    def _drop_stale_staging(self) -> None:
        """Remove staging dirs a crashed process left; only old ones, since
        other CUBE processes may share this storage and be staging now."""
        cutoff = time.time() - _STALE_STAGING_SECONDS
        for staged in (self.root / ".staging").glob("*"):
            with contextlib.suppress(OSError):
                if staged.stat().st_mtime < cutoff:
                    shutil.rmtree(staged, ignore_errors=True)

    def local_path(self, fname: str) -> Path:
        return self.root / check_storage_path(fname, what="fname")

    def _tmp_for(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{target.name}.{uuid.uuid4().hex}.part"

    async def write_stream(
        self, fname: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> int:
        target = self.local_path(fname)
        tmp = await asyncio.to_thread(self._tmp_for, target)
        size = 0
        try:
            fh = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                await asyncio.to_thread(fh.close)
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def write_fileobj(self, fname: str, src: IO[bytes]) -> int:
        target = self.local_path(fname)
        tmp = self._tmp_for(target)
        try:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(src, fh, CHUNK)
                size = fh.tell()
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def open(self, fname: str) -> IO[bytes]:
        return open(self.local_path(fname), "rb")

    async def delete_tree(self, prefix: str) -> None:
        path = self.local_path(prefix)
        await asyncio.to_thread(shutil.rmtree, path, True)

    def staging_dir(self) -> Path:
        return self.root / ".staging" / uuid.uuid4().hex

    async def install_tree(self, staged: Path, prefix: str) -> None:
        await asyncio.to_thread(self._install_tree, staged, self.local_path(prefix))

    @staticmethod
    def _install_tree(staged: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
        # Two renames: the old tree moves aside, the new one takes its name.
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
