"""The zip wire format of the fabric: build zips as streams, check their members.

Job data travels between CUBE, pfcon and pfioh as a plain zip archive (never
base64, never whole in memory). This module

* builds such an archive on the fly from files on disk (:func:`zip_stream`,
  :func:`zip_directory`), as an iterator of byte chunks, compressing each
  file only where it pays (:class:`CompressionPolicy`) and appending the
  SHA-256 manifest of :mod:`pfioh.manifest`; symbolic links and special
  files are never followed or sent;
* checks a member's name and type (:func:`check_member`), refusing absolute
  paths, ``..`` components, links, devices, fifos and sockets;
* drives the blocking iterators above from a worker thread so an asyncio
  server can stream them (:func:`aiter_sync`).

Receiving (streaming, verified, safe unpacking) is :mod:`pfioh.unzip`. It
imports no server code; CUBE and pfcon import it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import stat
import threading
import time
import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import zipstream

from pfioh.errors import ArchiveError, CorruptArchive, UnsafeArchive
from pfioh.manifest import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "STORED_SUFFIXES",
    "ArchiveError",
    "CompressionPolicy",
    "CorruptArchive",
    "LinkMeter",
    "UnsafeArchive",
    "aiter_sync",
    "check_member",
    "iter_tree",
    "zip_directory",
    "zip_stream",
]

#: Bytes read or written at a time when copying member data (1 MiB).
DEFAULT_CHUNK_SIZE = 1 << 20

# A Windows drive ("C:", "c:foo") at the start of a name makes it absolute there.
_DRIVE = re.compile(r"^[A-Za-z]:")
# Longest file name component most filesystems accept, in bytes.
_MAX_COMPONENT_BYTES = 255

#: Name endings of data that is compressed already: deflating it again costs
#: CPU (deflate runs at ~40 MB/s on random-looking bytes) and saves nothing.
STORED_SUFFIXES = frozenset(
    {
        ".gz", ".tgz", ".zip", ".bz2", ".xz", ".zst", ".lz4", ".7z", ".rar",
        ".png", ".jpg", ".jpeg", ".jp2", ".j2k", ".gif", ".webp", ".jxl", ".heic",
        ".mp4", ".mkv", ".avi", ".mov", ".webm", ".mp3", ".ogg", ".flac",
        ".npz", ".mgz", ".pt", ".pth", ".onnx",
    }
)  # fmt: skip


class _Named(Protocol):
    """What :func:`check_member` needs of a member: its name and external attributes."""

    filename: str
    external_attr: int


class LinkMeter:
    """What an archive stream has measured of its own pipeline, for :class:`CompressionPolicy`.

    Two rates, both in bytes per second: how fast the consumer takes the
    archive's bytes (the *link*: the socket and whatever is behind it, the
    receiver's unpacking included), measured by :func:`aiter_sync` as the
    time spent outside the stream between handing a chunk over and being
    asked for the next; and how fast deflate eats input at the policy's
    level, measured on each member's sample. Deflate pays only when it is
    faster than the link: a slower compressor would itself become the link.

    The link rate is known once :attr:`min_bytes` have been handed over, so
    a short transfer never waits on a measurement. One writer per rate
    (the event loop and the producing thread); reads of a float are atomic.
    """

    min_bytes: int = 4 << 20

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.sent_seconds = 0.0
        self._deflate_rate: float | None = None

    def record_sent(self, nbytes: int, seconds: float) -> None:
        """Count ``nbytes`` the consumer took in ``seconds``."""
        self.sent_bytes += nbytes
        self.sent_seconds += seconds

    def record_deflate(self, nbytes: int, seconds: float) -> None:
        """Fold one deflate timing into the running estimate (weight 1/4 per sample)."""
        if nbytes <= 0 or seconds <= 0:
            return
        rate = nbytes / seconds
        prev = self._deflate_rate
        self._deflate_rate = rate if prev is None else 0.75 * prev + 0.25 * rate

    def link_rate(self) -> float | None:
        """Bytes per second the consumer takes; None until :attr:`min_bytes` were taken."""
        if self.sent_bytes < self.min_bytes:
            return None
        return self.sent_bytes / max(self.sent_seconds, 1e-6)

    def deflate_rate(self) -> float | None:
        """Input bytes per second deflate runs at; None before any member was sampled."""
        return self._deflate_rate


@dataclass(frozen=True)
class CompressionPolicy:
    """Which members of an outgoing archive are deflated, and how hard.

    ``level`` 0 stores everything; 1–9 is the deflate level for the rest
    (1, the default, is several times faster than 6 for a few percent more
    bytes). A member is stored when its name ends in one of
    ``stored_suffixes`` (``.nii.gz`` ends in ``.gz``), or when a
    ``sample_bytes`` sample from its start does not shrink by at least
    ``min_saving`` (0.1 = 10 %): random-looking data whatever it is called.
    DICOM and text pass the sample test.

    With ``adaptive`` (the default) and a :class:`LinkMeter`, a member that
    passes those tests is deflated only while deflate runs faster than the
    link takes bytes (by ``margin``): on a fast network deflate is the
    bottleneck (30–200 MB/s on one core), on a slow one it saves time. The
    first compressible members are deflated, which measures deflate; the
    decision follows both rates as they change.
    """

    level: int = 1
    stored_suffixes: frozenset[str] = STORED_SUFFIXES
    sample_bytes: int = 4096
    min_saving: float = 0.1
    adaptive: bool = True
    margin: float = 1.25

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 9:
            raise ValueError(f"compression level must be 0 to 9, not {self.level}")

    def compresses(self, name: str, head: bytes, meter: LinkMeter | None = None) -> bool:
        """Whether a member called ``name`` that starts with ``head`` should be deflated."""
        if self.level == 0 or len(head) < 64:
            return False
        lower = name.lower()
        if any(lower.endswith(s) for s in self.stored_suffixes):
            return False
        # Sample from the middle of the head: DICOM and NIfTI headers are
        # compressible even when the pixel data after them is not.
        mid = max(0, len(head) // 2 - self.sample_bytes // 2)
        sample = head[mid : mid + self.sample_bytes]
        packed = zlib.compressobj(1, zlib.DEFLATED, -15)
        size = len(packed.compress(sample)) + len(packed.flush())
        if size > len(sample) * (1 - self.min_saving):
            return False
        if not self.adaptive or meter is None:
            return True
        link, deflate = meter.link_rate(), meter.deflate_rate()
        if link is None or deflate is None:
            return True
        return deflate > link * self.margin


def _member_mode(info: _Named) -> int:
    """The Unix mode stored in a member's external attributes (0 when none)."""
    return (info.external_attr >> 16) & 0xFFFF


def _is_dir(info: _Named) -> bool:
    """Whether a member is a directory: a name ending in ``/`` or a directory mode."""
    return info.filename.endswith(("/", "\\")) or stat.S_ISDIR(_member_mode(info))


def check_member(info: _Named) -> str:
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


def zip_stream(
    entries: Iterable[tuple[Path, str]],
    *,
    policy: CompressionPolicy | None = None,
    manifest: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    meter: LinkMeter | None = None,
) -> Iterator[bytes]:
    """Build a zip on the fly from ``(path, archive name)`` pairs.

    Each pair adds one member: a file's contents, or an empty directory
    entry when ``path`` is a directory (no recursion; its name should end in
    ``/``). Each file is deflated or stored as ``policy`` decides (default:
    :class:`CompressionPolicy()`), and hashed with SHA-256 as it is read;
    with ``manifest`` the archive ends with the :mod:`pfioh.manifest` member
    listing every file's size, hash and executable bit. Entries are consumed
    lazily and files are read in ``chunk_size`` pieces while the zip is
    produced, so memory stays constant but for one small record per member.
    Blocking: run it in a worker thread (see :func:`aiter_sync`). With a
    ``meter`` (shared with :func:`aiter_sync`), the time spent producing
    each deflated member is recorded, for an adaptive ``policy``.

    Raises :class:`OSError` (e.g. FileNotFoundError) if a path cannot be
    read, :class:`ArchiveError` for an entry named like the manifest.
    """
    policy = policy if policy is not None else CompressionPolicy()
    zs = zipstream.ZipStream(compress_type=zipstream.ZIP_STORED)
    listed = Manifest()
    for path, name in entries:
        if name.strip("/") == MANIFEST_NAME:
            raise ArchiveError(f"{MANIFEST_NAME!r} is a reserved name in transfers", entry=name)
        if os.path.isdir(path):
            zs.mkdir(name)
            listed.add_dir(name)
        else:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                head = fh.read(chunk_size)
                digest = hashlib.sha256()
                sizes = [0]
                deflate = policy.compresses(name, head, meter)
                zs.add(
                    _hashed(fh, head, digest, sizes, chunk_size),
                    name,
                    size=st.st_size,
                    compress_type=zipstream.ZIP_DEFLATED if deflate else zipstream.ZIP_STORED,
                    compress_level=policy.level if deflate else None,
                )
                # Emit the member now, while its file is open and the queue short.
                if deflate and meter is not None:
                    busy = [0.0]
                    yield from _timed(zs.all_files(), busy)
                    meter.record_deflate(sizes[0], busy[0])
                else:
                    yield from zs.all_files()
            listed.add_file(name, sizes[0], digest.hexdigest(), executable=bool(st.st_mode & 0o111))
    if manifest:
        zs.add(
            listed.to_bytes(),
            MANIFEST_NAME,
            compress_type=zipstream.ZIP_DEFLATED,
            compress_level=max(policy.level, 1),
        )
        yield from zs.all_files()
    yield from zs.finalize()


def _hashed(
    fh: IO[bytes], head: bytes, digest: hashlib._Hash, sizes: list[int], chunk_size: int
) -> Iterator[bytes]:
    """Yield ``head`` then the rest of ``fh``, feeding ``digest`` and counting into ``sizes[0]``.

    The count is of what was actually read, so a file that changed size
    since it was listed is reported as it was sent.
    """
    chunk = head
    while chunk:
        digest.update(chunk)
        sizes[0] += len(chunk)
        yield chunk
        chunk = fh.read(chunk_size)


def _timed(it: Iterator[bytes], busy: list[float]) -> Iterator[bytes]:
    """Pass ``it`` through, adding the time spent inside it (not at our yields) to ``busy[0]``."""
    while True:
        started = time.perf_counter()
        try:
            piece = next(it)
        except StopIteration:
            busy[0] += time.perf_counter() - started
            return
        busy[0] += time.perf_counter() - started
        yield piece


def zip_directory(
    root: Path,
    *,
    policy: CompressionPolicy | None = None,
    manifest: bool = True,
    meter: LinkMeter | None = None,
) -> Iterator[bytes]:
    """Zip the whole tree under ``root`` (see :func:`iter_tree`), including empty dirs.

    Names in the archive are relative to ``root``; ``policy`` and
    ``manifest`` and ``meter`` as for :func:`zip_stream`; a file named like the manifest
    at the root is left out (logged). Raises :class:`FileNotFoundError`
    at once if ``root`` is not a directory; iterating raises
    :class:`OSError` if the tree cannot be read.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"not a directory: {root}")
    return zip_stream(
        _without_manifest(iter_tree(root), root), policy=policy, manifest=manifest, meter=meter
    )


def _without_manifest(
    entries: Iterator[tuple[Path, str]], root: Path
) -> Iterator[tuple[Path, str]]:
    """Drop a file named like the manifest at the root: the name is reserved
    (a plugin that wrote one would otherwise make its whole output unsendable)."""
    for path, name in entries:
        if name == MANIFEST_NAME:
            log.warning("not sending %s: %r is reserved for transfer manifests", path, name)
            continue
        yield path, name


#: Pieces at least this long are passed on as they are; shorter ones are joined.
_JOIN_BELOW = 64 * 1024


def _pull(it: Iterator[bytes], target: int) -> list[bytes]:
    """Collect pieces from ``it`` until ``target`` bytes or the end (then ``[]``).

    Runs of small pieces (zip headers, small files) are joined; large ones
    are kept as they are, so file data is not copied once more.
    """
    out: list[bytes] = []
    small: list[bytes] = []
    n = 0
    for piece in it:
        if not piece:
            continue
        n += len(piece)
        if len(piece) < _JOIN_BELOW:
            small.append(piece)
        else:
            if small:
                out.append(b"".join(small))
                small = []
            out.append(piece)
        if n >= target:
            break
    if small:
        out.append(b"".join(small))
    return out


async def aiter_sync(
    it: Iterator[bytes],
    *,
    batch_bytes: int = DEFAULT_CHUNK_SIZE,
    prefetch: int = 4,
    meter: LinkMeter | None = None,
) -> AsyncGenerator[bytes, None]:
    """Drive a blocking byte iterator from a thread of its own, without blocking the loop.

    The thread runs ahead of the consumer by up to ``prefetch`` batches of
    about ``batch_bytes`` bytes, so reading, hashing and compressing overlap
    with sending. Exceptions of ``it`` are re-raised here. With a ``meter``,
    the time the consumer keeps each chunk (between receiving it and asking
    for the next: the time to send it) is recorded as the link's rate. When
    the consumer stops early (closes this generator, or is cancelled), the
    thread stops after the batch in hand and closes ``it``, so its files are
    closed too; this generator returns only once that is done.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[list[bytes] | BaseException] = asyncio.Queue()
    slots = threading.Semaphore(max(1, prefetch))
    stop = threading.Event()
    done = loop.create_future()

    def deliver(item: list[bytes] | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(ready.put_nowait, item)

    def produce() -> None:
        try:
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                batch = _pull(it, batch_bytes)
                deliver(batch)
                if not batch:
                    return
        except BaseException as exc:  # re-raised in the consumer
            deliver(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)

    thread = threading.Thread(target=produce, name="aiter-sync", daemon=True)
    thread.start()
    try:
        while True:
            item = await ready.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            slots.release()
            for chunk in item:
                handed = time.perf_counter()
                yield chunk
                if meter is not None:
                    meter.record_sent(len(chunk), time.perf_counter() - handed)
    finally:
        stop.set()
        slots.release()  # wake a producer waiting for a slot
        await asyncio.shield(done)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
