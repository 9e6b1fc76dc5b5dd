"""The zip wire format of the fabric: build zips as streams, unpack them safely.

Job data travels between CUBE, pfcon and pfioh as a plain zip archive (never
base64, never whole in memory). This module is the one place that knows how
to

* build such an archive on the fly from files on disk (:func:`zip_stream`,
  :func:`zip_directory`), as an iterator of byte chunks, with deflate
  compression; symbolic links and special files are never followed or sent;
* check every member of a received archive (:func:`check_member`) and refuse
  absolute paths, ``..`` components, links, devices, fifos and sockets;
* unpack a received archive into a new directory (:func:`safe_extract`), or
  hand its validated members to a caller that stores them elsewhere
  (:func:`iter_zip_members`);
* drive the blocking iterators above from a worker thread so an asyncio
  server can stream them (:func:`aiter_sync`).

It imports no server code; CUBE and pfcon import it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import lzma
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

import zipstream

from pfioh.errors import PfiohError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ArchiveError",
    "CorruptArchive",
    "ExtractReport",
    "UnsafeArchive",
    "aiter_sync",
    "check_member",
    "iter_tree",
    "iter_zip_members",
    "safe_extract",
    "zip_directory",
    "zip_stream",
]

#: Bytes read or written at a time when copying member data (1 MiB).
DEFAULT_CHUNK_SIZE = 1 << 20

# A Windows drive ("C:", "c:foo") at the start of a name makes it absolute there.
_DRIVE = re.compile(r"^[A-Za-z]:")
# Longest file name component most filesystems accept, in bytes.
_MAX_COMPONENT_BYTES = 255
# Compression methods zipfile can read: stored, deflate, bzip2, lzma.
_READABLE_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
# What a damaged member raises while being read: bad CRC / header
# (BadZipFile), bad deflate / lzma / bzip2 data (zlib.error, LZMAError,
# OSError), or a truncated stream (EOFError).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError)
# What opening a damaged archive raises besides BadZipFile.
_OPEN_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, OSError)


class ArchiveError(PfiohError):
    """An archive was refused; ``entry`` names the offending member, if one."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "archive_error"

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


class UnsafeArchive(ArchiveError):
    """A member would escape the destination or is not a plain file or directory."""

    status = 422
    code = "unsafe_archive"


class CorruptArchive(ArchiveError):
    """The data is not a zip archive, or a member is damaged (bad CRC, truncated)."""

    status = 400
    code = "corrupt_archive"


@dataclass
class ExtractReport:
    """What :func:`safe_extract` wrote: file count, total bytes, relative file paths."""

    nfiles: int = 0
    nbytes: int = 0
    files: list[str] = field(default_factory=list)


def _member_mode(info: zipfile.ZipInfo) -> int:
    """The Unix mode stored in a member's external attributes (0 when none)."""
    return (info.external_attr >> 16) & 0xFFFF


def _is_dir(info: zipfile.ZipInfo) -> bool:
    """Whether a member is a directory: a name ending in ``/`` or a directory mode."""
    return info.filename.endswith(("/", "\\")) or stat.S_ISDIR(_member_mode(info))


def check_member(info: zipfile.ZipInfo) -> str:
    """Validate one archive member and return its normalised relative path.

    Backslashes are read as separators (zips made by old Windows tools use
    them), empty and ``.`` components are dropped. The result uses ``/`` and
    has no trailing slash; it is ``""`` only for a directory entry that names
    the archive root itself (``./``), which callers skip.

    Raises :class:`UnsafeArchive` (naming the entry) for an absolute path
    (leading ``/`` or ``\\``, or a drive such as ``C:``), a ``..`` component,
    a component longer than 255 bytes, an empty file name, or a member whose
    Unix mode marks it as a symbolic link, device, fifo, socket or unknown type.
    """
    raw = info.filename
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise UnsafeArchive(f"absolute path in archive: {raw!r}", entry=raw)
    if _DRIVE.match(name):
        raise UnsafeArchive(f"path with a drive letter in archive: {raw!r}", entry=raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"'..' component in archive path: {raw!r}", entry=raw)
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT_BYTES:
            raise UnsafeArchive(f"path component too long in archive: {raw!r}", entry=raw)

    fmt = stat.S_IFMT(_member_mode(info))
    if fmt == stat.S_IFLNK:
        raise UnsafeArchive(f"symbolic link in archive: {raw!r}", entry=raw)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        raise UnsafeArchive(f"device file in archive: {raw!r}", entry=raw)
    if fmt == stat.S_IFIFO:
        raise UnsafeArchive(f"fifo in archive: {raw!r}", entry=raw)
    if fmt == stat.S_IFSOCK:
        raise UnsafeArchive(f"socket in archive: {raw!r}", entry=raw)
    # 0 means "no Unix mode recorded" (e.g. zips made on Windows).
    if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"member of unknown type in archive: {raw!r}", entry=raw)

    if not parts and not _is_dir(info):
        raise UnsafeArchive(f"file member without a name in archive: {raw!r}", entry=raw)
    return "/".join(parts)


@dataclass
class _Member:
    """A validated member: its zip entry, safe relative path and kind."""

    info: zipfile.ZipInfo
    path: str
    is_dir: bool


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    """Open an archive, turning every kind of "this is no zip" into CorruptArchive."""
    try:
        return zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise
    except _OPEN_ERRORS as exc:
        raise CorruptArchive(f"not a valid zip archive: {exc}") from exc


def _validate(zf: zipfile.ZipFile, max_bytes: int | None) -> list[_Member]:
    """Check every member of an open archive before anything is written.

    Raises UnsafeArchive for unsafe names or types, duplicate names, a file
    that is also a directory, or a declared uncompressed total above
    ``max_bytes``; CorruptArchive for encrypted members or unknown
    compression methods.
    """
    members: list[_Member] = []
    files: set[str] = set()
    dirs: set[str] = set()
    total = 0
    for info in zf.infolist():
        path = check_member(info)
        is_dir = _is_dir(info)
        raw = info.filename
        if info.flag_bits & 0x1:
            raise CorruptArchive(f"encrypted member in archive: {raw!r}", entry=raw)
        if not is_dir and info.compress_type not in _READABLE_METHODS:
            raise CorruptArchive(
                f"unsupported compression method {info.compress_type} for {raw!r}", entry=raw
            )
        # Parents of every member are directories; a name may not be both a
        # file and a directory, nor a file twice (the second would silently
        # replace the first).
        parents = path.split("/")[:-1] if path else []
        for i in range(1, len(parents) + 1):
            parent = "/".join(parents[:i])
            if parent in files:
                raise UnsafeArchive(f"{raw!r} lies under the file {parent!r}", entry=raw)
            dirs.add(parent)
        if is_dir:
            if path in files:
                raise UnsafeArchive(f"{raw!r} is both a file and a directory", entry=raw)
            if path:
                dirs.add(path)
        else:
            if path in files:
                raise UnsafeArchive(f"duplicate member in archive: {raw!r}", entry=raw)
            if path in dirs:
                raise UnsafeArchive(f"{raw!r} is both a file and a directory", entry=raw)
            files.add(path)
            total += info.file_size
            if max_bytes is not None and total > max_bytes:
                raise UnsafeArchive(
                    f"archive unpacks to more than the allowed {max_bytes} bytes", entry=raw
                )
        members.append(_Member(info, path, is_dir))
    return members


def _file_mode(info: zipfile.ZipInfo) -> int:
    """Permissions for an extracted file: 0o755 if the member was executable.

    setuid, setgid and sticky bits are never carried over.
    """
    return 0o755 if _member_mode(info) & 0o111 else 0o644


def _read_guarded(src: IO[bytes], size: int, entry: str) -> bytes:
    """Read from a member stream, turning damaged data into CorruptArchive."""
    try:
        return src.read(size)
    except _READ_ERRORS as exc:
        raise CorruptArchive(f"damaged member {entry!r}: {exc}", entry=entry) from exc


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_bytes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ExtractReport:
    """Unpack the archive at ``zip_path`` into the new directory ``dest``.

    Every member is validated first (see :func:`check_member`; also
    duplicates, file/directory clashes, encryption, and a declared
    uncompressed total above ``max_bytes`` bytes when given); nothing is
    written unless all pass. Then ``dest`` (which must not exist; its parent
    is created if needed) is created and each member is copied in chunks of
    ``chunk_size`` bytes, so memory stays constant. Directory members are
    created, so empty directories survive. Files get mode 0o644, or 0o755
    when the member had an executable bit; setuid/setgid/sticky never.

    Raises :class:`UnsafeArchive` or :class:`CorruptArchive` (bad zip, CRC
    error, truncated data), :class:`FileExistsError` if ``dest`` exists,
    :class:`FileNotFoundError` if ``zip_path`` does not, and :class:`OSError`
    for failures of the destination filesystem. On any failure everything it
    created under ``dest`` is removed.
    """
    with _open_zip(zip_path) as zf:
        members = _validate(zf, max_bytes)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.mkdir()
        try:
            return _extract_members(zf, members, dest, chunk_size)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


def _extract_members(
    zf: zipfile.ZipFile, members: list[_Member], dest: Path, chunk_size: int
) -> ExtractReport:
    """Write validated members under ``dest`` (see :func:`safe_extract`)."""
    report = ExtractReport()
    for m in members:
        if not m.path:
            continue
        target = dest.joinpath(*m.path.split("/"))
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        raw = m.info.filename
        with zf.open(m.info) as src, open(target, "xb") as dst:
            # "xb" never writes through something that already exists.
            while chunk := _read_guarded(src, chunk_size, raw):
                dst.write(chunk)
        os.chmod(target, _file_mode(m.info))
        report.nfiles += 1
        report.nbytes += m.info.file_size
        report.files.append(m.path)
    return report


class _GuardedReader(io.RawIOBase):
    """A member stream whose read errors surface as CorruptArchive."""

    def __init__(self, src: IO[bytes], entry: str) -> None:
        super().__init__()
        self._src = src
        self._entry = entry

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = _read_guarded(self._src, len(view), self._entry)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._src.close()
        finally:
            super().close()


def iter_zip_members(
    zip_path: Path, *, max_bytes: int | None = None
) -> Iterator[tuple[str, IO[bytes], int]]:
    """Yield ``(path, stream, size)`` for each FILE member of a validated archive.

    All members are validated (as by :func:`safe_extract`) before the first
    is yielded. ``path`` is the normalised relative path, ``size`` the
    uncompressed size in bytes. Each stream is valid only until the iterator
    is advanced; read it in chunks. Reading a damaged member raises
    :class:`CorruptArchive`. Raises :class:`UnsafeArchive` /
    :class:`CorruptArchive` as :func:`safe_extract` does.
    """
    with _open_zip(zip_path) as zf:
        members = _validate(zf, max_bytes)
        for m in members:
            if m.is_dir:
                continue
            raw = m.info.filename
            try:
                src = zf.open(m.info)
            except _READ_ERRORS as exc:
                raise CorruptArchive(f"damaged member {raw!r}: {exc}", entry=raw) from exc
            with io.BufferedReader(_GuardedReader(src, raw), DEFAULT_CHUNK_SIZE) as stream:
                yield m.path, stream, m.info.file_size


def iter_tree(root: Path) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, archive name)`` for every directory and regular file under ``root``.

    Directories come before their contents and their names end in ``/``;
    ``root`` itself is not yielded. Symbolic links (to files or directories)
    and special files are skipped: following them could send files from
    outside ``root``, and reading a fifo would block forever. Order is
    sorted by name, so archives of the same tree are reproducible.
    """
    root_str = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root_str, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root_str)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        kept: list[str] = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                continue
            kept.append(d)
            yield Path(full), f"{prefix}{d}/"
        # Pruning in place stops os.walk from descending into skipped links.
        dirnames[:] = kept
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                yield Path(full), f"{prefix}{f}"


def zip_stream(entries: Iterable[tuple[Path, str]]) -> Iterator[bytes]:
    """Build a deflate-compressed zip on the fly from ``(path, archive name)`` pairs.

    Each pair adds one member: a file's contents, or an empty directory
    entry when ``path`` is a directory (no recursion). Entries are consumed
    lazily and files are read in chunks while the zip is produced, so
    memory stays constant (but for one small record per member, needed for
    the zip's central directory). Unix permissions are recorded in each
    member's external attributes. Blocking: run it in a worker thread (see
    :func:`aiter_sync`). Raises :class:`OSError` (e.g. FileNotFoundError)
    if a path cannot be read.
    """
    zs = zipstream.ZipStream(compress_type=zipstream.ZIP_DEFLATED)
    for path, name in entries:
        zs.add_path(os.fspath(path), name, recurse=False)
        # Emit each member as soon as it is queued, so the queue stays short.
        yield from zs.all_files()
    yield from zs.finalize()


def zip_directory(root: Path) -> Iterator[bytes]:
    """Zip the whole tree under ``root`` (see :func:`iter_tree`), including empty dirs.

    Names in the archive are relative to ``root``. Raises
    :class:`FileNotFoundError` at once if ``root`` is not a directory;
    iterating raises :class:`OSError` if the tree cannot be read.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"not a directory: {root}")
    return zip_stream(iter_tree(root))


def _pull(it: Iterator[bytes], target: int) -> bytes:
    """Collect pieces from ``it`` until ``target`` bytes or the end (then b"")."""
    parts: list[bytes] = []
    n = 0
    for piece in it:
        if piece:
            parts.append(piece)
            n += len(piece)
            if n >= target:
                break
    return b"".join(parts)


async def aiter_sync(
    it: Iterator[bytes], *, batch_bytes: int = DEFAULT_CHUNK_SIZE
) -> AsyncGenerator[bytes, None]:
    """Drive a blocking byte iterator from a worker thread, without blocking the loop.

    Small pieces are batched into chunks of about ``batch_bytes`` bytes (so
    the thread hop is paid once per chunk, not per zip header). Exceptions
    of ``it`` are re-raised here. When the consumer stops early (closes this
    generator, or is cancelled), the pull in flight is allowed to finish and
    ``it`` is closed, so its files are closed too.
    """
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(asyncio.to_thread(_pull, it, batch_bytes))
            chunk = await asyncio.shield(pending)
            pending = None
            if not chunk:
                return
            yield chunk
    finally:
        if pending is not None:
            # A worker thread cannot be interrupted; closing the generator
            # while it runs would raise "generator already executing".
            await asyncio.wait({pending})
            with contextlib.suppress(BaseException):
                pending.result()
        close = getattr(it, "close", None)
        if close is not None:
            close()
