"""Streaming, verified, safe unpacking: the receiving half of the zip wire format.

An archive is unpacked *while it arrives*: local file headers are read in
order and each member's data is inflated, checked and written at once, so
receiving and unpacking overlap and nothing is spooled or held whole in
memory (a member's bytes pass through in chunks of about 1 MiB). The
central directory at the end is then checked against what was written.

Everything lands in a new directory that the caller renames into place
only when :func:`extract_stream` returns; on any failure that directory is
removed, so a half-received transfer is never visible. Refused, with the
offending member named:

* names that are absolute, contain ``..``, or clash (duplicates, a file
  that is also a directory); symbolic links, devices, fifos and sockets
  (their type is only in the central directory, so they are refused when it
  arrives, before anything is published);
* encrypted members and compression methods other than stored, deflate and
  bzip2; damaged data (CRC or size mismatch, truncation);
* zip bombs: more unpacked bytes than ``max_bytes``, an expansion beyond
  ``max_ratio`` : 1 once past ``ratio_floor`` bytes, more than
  ``max_members`` members;
* filling the disk: :class:`InsufficientStorage` before free space on the
  destination would drop under ``reserve_bytes``;
* a transfer that differs from its SHA-256 manifest (:mod:`pfioh.manifest`),
  or, with ``require_manifest``, one that has none.

Stored members written with a data descriptor (their size follows the
data, as streaming writers such as zipstream-ng do) are delimited by
finding the descriptor's signature and checking its CRC and size against
the bytes seen so far; a false match would need both to agree by chance.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import struct
import zlib
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from pfioh.archive import DEFAULT_CHUNK_SIZE, check_member
from pfioh.errors import (
    ArchiveError,
    CorruptArchive,
    InsufficientStorage,
    IntegrityError,
    UnsafeArchive,
)
from pfioh.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest

__all__ = [
    "ArchiveError",
    "CorruptArchive",
    "ExtractLimits",
    "ExtractReport",
    "InsufficientStorage",
    "IntegrityError",
    "UnsafeArchive",
    "ensure_free_space",
    "extract_async",
    "extract_stream",
    "safe_extract",
]

_SIG_LOCAL = b"PK\x03\x04"
_SIG_CENTRAL = b"PK\x01\x02"
_SIG_END = b"PK\x05\x06"
_SIG_END64 = b"PK\x06\x06"
_SIG_LOCATOR64 = b"PK\x06\x07"
_SIG_DESCRIPTOR = b"PK\x07\x08"
# After the signature: version, flags, method, time, date, crc, csize, usize,
# name length, extra length.
_LOCAL = struct.Struct("<HHHHHIIIHH")
# After the signature: made by, needed, flags, method, time, date, crc,
# csize, usize, name/extra/comment lengths, disk, internal and external
# attributes, offset.
_CENTRAL = struct.Struct("<HHHHHHIIIHHHHHII")
_END = struct.Struct("<HHHHIIH")
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED = 0x0001 | 0x0040 | 0x2000  # traditional, strong, central directory
_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_STORED, _DEFLATED, _BZIP2 = 0, 8, 12
_METHODS = {_STORED: "stored", _DEFLATED: "deflate", _BZIP2: "bzip2"}
# Free space is re-checked after this many bytes written (one statvfs call).
_SPACE_CHECK_BYTES = 64 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

GIB = 1 << 30


@dataclass(frozen=True)
class ExtractLimits:
    """What an archive may do to the receiver; ``None`` means no limit.

    ``max_bytes`` bounds the total unpacked size. ``max_ratio`` bounds the
    expansion (unpacked ÷ received) once more than ``ratio_floor`` bytes are
    unpacked: deflate cannot exceed about 1032 : 1, so only data made to
    explode (or a file of nothing but zeros bigger than the floor) trips it.
    ``reserve_bytes`` of the destination filesystem are kept free.
    """

    max_bytes: int | None = None
    max_ratio: float | None = 1000.0
    ratio_floor: int = GIB
    max_members: int | None = 1_000_000
    reserve_bytes: int = 0
    require_manifest: bool = False


@dataclass
class ExtractReport:
    """What was unpacked: file count, total bytes, relative file paths and sizes."""

    nfiles: int = 0
    nbytes: int = 0
    files: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    #: Whether a SHA-256 manifest came with the archive (and matched).
    verified: bool = False


@dataclass
class _Info:
    """A member as :func:`check_member` sees it."""

    filename: str
    external_attr: int = 0


@dataclass
class _Member:
    name: str
    path: str
    is_dir: bool


class _Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


class _Reader:
    """A buffered reader over ``source``, a callable returning the next chunk (b"" at the end)."""

    def __init__(self, source: Callable[[], bytes]) -> None:
        self._source = source
        self._buf: bytes = b""
        self._pos = 0
        self._eof = False
        #: Bytes received from the source so far.
        self.received = 0

    def available(self) -> int:
        return len(self._buf) - self._pos

    def fill(self) -> bool:
        """Append the next chunk of the source; False at its end."""
        if self._eof:
            return False
        chunk = self._source()
        if not chunk:
            self._eof = True
            return False
        self.received += len(chunk)
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + chunk
        else:
            self._buf = bytes(chunk)
        self._pos = 0
        return True

    def exact(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes; :class:`CorruptArchive` if the data ends first."""
        while self.available() < n:
            if not self.fill():
                raise CorruptArchive(f"the archive ends in the middle of {what}")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def peek(self, n: int) -> bytes:
        """Up to ``n`` upcoming bytes without consuming them (fewer only at the end)."""
        while self.available() < n and self.fill():
            pass
        return self._buf[self._pos : self._pos + n]

    def take(self, limit: int) -> memoryview:
        """Between 1 and ``limit`` bytes (no copy), or empty at the end of the data."""
        if not self.available() and not self.fill():
            return memoryview(b"")
        n = min(limit, self.available())
        out = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return out

    def unread(self, n: int) -> None:
        """Give back the last ``n`` bytes of the latest :meth:`take`."""
        self._pos -= n

    def find(self, needle: bytes) -> int:
        """Offset of ``needle`` in the buffered bytes (from the read position), or -1."""
        i = self._buf.find(needle, self._pos)
        return -1 if i < 0 else i - self._pos

    def partial_suffix(self, needle: bytes) -> int:
        """Length of the longest end of the buffered bytes that begins ``needle`` (< its length)."""
        for k in range(min(len(needle) - 1, self.available()), 0, -1):
            if self._buf.endswith(needle[:k]):
                return k
        return 0

    def drain(self) -> None:
        """Consume the rest of the source (bytes after the end record are ignored)."""
        self._pos = len(self._buf)
        while self.fill():
            self._pos = len(self._buf)


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[bool, int, int]:
    """Apply a local header's ZIP64 extra field: (is zip64, usize, csize)."""
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + size]
        if tag == _ZIP64_EXTRA:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            return True, usize, csize
        i += 4 + size
    return False, usize, csize


def _decode_name(raw: bytes, flags: int) -> str:
    """A member name: UTF-8 when flagged, else code page 437 (as zipfile reads it)."""
    try:
        return raw.decode("utf-8") if flags & _FLAG_UTF8 else raw.decode("cp437")
    except UnicodeDecodeError as exc:
        raise CorruptArchive(f"member name is not valid UTF-8: {raw!r}") from exc


class _Extractor:
    """One streaming extraction into ``dest`` (see :func:`extract_stream`)."""

    def __init__(
        self,
        source: Callable[[], bytes],
        dest: Path,
        limits: ExtractLimits,
        rename: Callable[[str], str] | None,
        chunk_size: int,
    ) -> None:
        self.r = _Reader(source)
        self.dest = dest
        self.limits = limits
        self.rename = rename
        self.chunk = chunk_size
        self.members: list[_Member] = []
        self.received: dict[str, tuple[int, str]] = {}
        self.file_paths: set[str] = set()
        self.dir_paths: set[str] = set()
        self.made_dirs: set[str] = {""}
        self.executable: set[str] = set()
        self.manifest_raw: bytes | None = None
        self.nbytes = 0
        self._unchecked = 0

    # -- driver ------------------------------------------------------------

    def run(self) -> ExtractReport:
        self._check_space(0)
        first = self.r.peek(4)
        if first not in (_SIG_LOCAL, _SIG_CENTRAL, _SIG_END):
            raise CorruptArchive("not a zip archive (no local file header at the start)")
        while self.r.peek(4) == _SIG_LOCAL:
            self.r.exact(4, "a member header")
            self._member()
        self._central_directory()
        self.r.drain()
        return self._finish()

    # -- members -------------------------------------------------------------

    def _member(self) -> None:
        fields = _LOCAL.unpack(self.r.exact(_LOCAL.size, "a member header"))
        _version, flags, method, _time, _date, crc, csize, usize, nlen, elen = fields
        name = _decode_name(self.r.exact(nlen, "a member name"), flags)
        extra = self.r.exact(elen, "a member header")
        if self.manifest_raw is not None:
            raise CorruptArchive(
                f"member {name!r} follows the transfer manifest, which must be last", entry=name
            )
        if flags & _FLAG_ENCRYPTED:
            raise CorruptArchive(f"encrypted member in archive: {name!r}", entry=name)
        limit = self.limits.max_members
        if limit is not None and len(self.members) >= limit:
            raise UnsafeArchive(f"the archive has more than {limit} members", entry=name)
        zip64, usize, csize = _zip64_sizes(extra, usize, csize)
        path = check_member(_Info(name))
        is_dir = name.endswith(("/", "\\"))
        if not is_dir and method not in _METHODS:
            raise CorruptArchive(
                f"unsupported compression method {method} for {name!r} "
                "(stored, deflate and bzip2 are accepted)",
                entry=name,
            )
        if path == MANIFEST_NAME and not is_dir:
            self.members.append(_Member(name, path, False))
            self.manifest_raw = self._read_manifest(name, method, flags, crc, csize, usize, zip64)
            return
        if self.rename is not None and path:
            path = self.rename(path)
        self._claim(name, path, is_dir)
        self.members.append(_Member(name, path, is_dir))
        if is_dir:
            if path:
                self._mkdirs(path)
            if csize and not flags & _FLAG_DESCRIPTOR:
                self.r.exact(csize, "a directory entry")  # data of a directory: ignored
            return
        parent = path.rpartition("/")[0]
        self._mkdirs(parent)
        target = self.dest.joinpath(*path.split("/"))
        digest = hashlib.sha256()
        # "xb" never writes through something that already exists.
        with open(target, "xb") as out:
            size = self._data(name, method, flags, crc, csize, usize, zip64, out, digest)
        self.received[path] = (size, digest.hexdigest())

    def _claim(self, name: str, path: str, is_dir: bool) -> None:
        """Refuse duplicates and names that are both a file and a directory."""
        parts = path.split("/") if path else []
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.file_paths:
                raise UnsafeArchive(f"{name!r} lies under the file {parent!r}", entry=name)
            self.dir_paths.add(parent)
        if is_dir:
            if path in self.file_paths:
                raise UnsafeArchive(f"{name!r} is both a file and a directory", entry=name)
            if path:
                self.dir_paths.add(path)
            return
        if path in self.file_paths:
            raise UnsafeArchive(f"duplicate member in archive: {name!r}", entry=name)
        if path in self.dir_paths:
            raise UnsafeArchive(f"{name!r} is both a file and a directory", entry=name)
        self.file_paths.add(path)

    def _mkdirs(self, path: str) -> None:
        if path in self.made_dirs:
            return
        self.dest.joinpath(*path.split("/")).mkdir(parents=True, exist_ok=True)
        parts = path.split("/")
        self.made_dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))

    def _read_manifest(
        self, name: str, method: int, flags: int, crc: int, csize: int, usize: int, zip64: bool
    ) -> bytes:
        buf = _Capped(MAX_MANIFEST_BYTES, name)
        self._data(name, method, flags, crc, csize, usize, zip64, buf, None, counted=False)
        return bytes(buf.data)

    # -- member data -----------------------------------------------------------

    def _data(
        self,
        name: str,
        method: int,
        flags: int,
        crc: int,
        csize: int,
        usize: int,
        zip64: bool,
        out: _Sink,
        digest: hashlib._Hash | None,
        *,
        counted: bool = True,
    ) -> int:
        """Copy one member's data to ``out``; check CRC and sizes; return its size."""
        emitted = [0, 0]  # bytes written, running CRC

        def emit(data: bytes | memoryview) -> None:
            if counted:
                self._account(len(data), name)
            try:
                out.write(data)
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    raise InsufficientStorage(
                        f"the destination is full while writing {name!r}"
                    ) from exc
                raise
            if digest is not None:
                digest.update(data)
            emitted[0] += len(data)
            emitted[1] = zlib.crc32(data, emitted[1])

        described = bool(flags & _FLAG_DESCRIPTOR)
        if method == _STORED and described and csize in (0, 0xFFFFFFFF):
            # Only returns once the descriptor's sizes and CRC matched the data.
            self._stored_until_descriptor(name, zip64, emit, emitted)
            return emitted[0]
        if method == _STORED:
            consumed = self._stored(name, csize, emit)
        elif method == _DEFLATED:
            consumed = self._inflate(name, zlib.decompressobj(-15), emit)
        else:
            consumed = self._inflate(name, bz2.BZ2Decompressor(), emit)
        if described:
            crc, csize, usize = self._descriptor(name, zip64)
        if consumed != csize or emitted[0] != usize:
            self._bad(name, f"sizes differ from the header ({emitted[0]} bytes, {usize} declared)")
        if emitted[1] != crc:
            self._bad(name, "CRC-32 mismatch")
        return emitted[0]

    @staticmethod
    def _bad(name: str, why: str) -> int:
        raise CorruptArchive(f"damaged member {name!r}: {why}", entry=name)

    def _stored(self, name: str, size: int, emit: Callable[[memoryview], None]) -> int:
        left = size
        while left:
            data = self.r.take(min(self.chunk, left))
            if not data:
                raise CorruptArchive(f"the archive ends inside member {name!r}", entry=name)
            emit(data)
            left -= len(data)
        return size

    def _inflate(
        self,
        name: str,
        engine: zlib._Decompress | bz2.BZ2Decompressor,
        emit: Callable[[bytes], None],
    ) -> int:
        """Decompress until the stream's own end; return the compressed bytes it used.

        Output is bounded per call (``max_length``), so a bomb never
        inflates more than one chunk in memory before the limits see it.
        """
        consumed = 0
        tail: bytes | memoryview = b""
        while not engine.eof:
            if isinstance(engine, bz2.BZ2Decompressor):
                tail = b""
                if engine.needs_input:
                    tail = self.r.take(self.chunk)
                    consumed += len(tail)
                    if not tail:
                        break
            else:
                tail = engine.unconsumed_tail
                if not tail:
                    tail = self.r.take(self.chunk)
                    consumed += len(tail)
                    if not tail:
                        break
            try:
                out = engine.decompress(tail, self.chunk)
            except (zlib.error, OSError, EOFError, ValueError) as exc:
                raise CorruptArchive(f"damaged member {name!r}: {exc}", entry=name) from exc
            if out:
                emit(out)
        if not engine.eof:
            raise CorruptArchive(f"the archive ends inside member {name!r}", entry=name)
        unused = len(engine.unused_data)
        self.r.unread(unused)
        return consumed - unused

    def _stored_until_descriptor(
        self, name: str, zip64: bool, emit: Callable[[memoryview], None], emitted: list[int]
    ) -> int:
        """Copy a stored member whose size is only in the descriptor after it.

        Every occurrence of the descriptor signature is a candidate; it ends
        the member only if the CRC and sizes after it match the data so far
        and the next record's signature follows. (Should data ever fool
        that, the member's SHA-256 in the manifest would not match.)
        """
        fmt = "<IQQ" if zip64 else "<III"
        need = 4 + struct.calcsize(fmt) + 4  # signature, fields, the next record's signature
        while True:
            at = self.r.find(_SIG_DESCRIPTOR)
            if at < 0:
                # All is data but a tail that may begin a signature; holding
                # back only that (rarely anything) lets the next chunk in
                # without copying it onto the tail.
                keep = self.r.partial_suffix(_SIG_DESCRIPTOR)
                if self.r.available() > keep:
                    emit(self.r.take(self.r.available() - keep))
                if not self.r.fill():
                    raise CorruptArchive(f"the archive ends inside member {name!r}", entry=name)
                continue
            if at:
                emit(self.r.take(at))
            candidate = self.r.peek(need)
            if len(candidate) < need:
                raise CorruptArchive(f"the archive ends inside member {name!r}", entry=name)
            crc, csize, usize = struct.unpack(fmt, candidate[4:-4])
            if (
                crc == emitted[1]
                and csize == usize == emitted[0]
                and candidate[-4:] in (_SIG_LOCAL, _SIG_CENTRAL)
            ):
                self.r.exact(need - 4, "a data descriptor")
                return csize
            emit(self.r.take(1))  # a "PK\x07\x08" inside the data

    def _descriptor(self, name: str, zip64: bool) -> tuple[int, int, int]:
        """Read a data descriptor (its signature is optional): CRC, csize, usize."""
        if self.r.peek(4) == _SIG_DESCRIPTOR:
            self.r.exact(4, "a data descriptor")
        fmt = "<IQQ" if zip64 else "<III"
        crc, csize, usize = struct.unpack(fmt, self.r.exact(struct.calcsize(fmt), name))
        return crc, csize, usize

    # -- limits ----------------------------------------------------------------

    def _account(self, n: int, name: str) -> None:
        self.nbytes += n
        lim = self.limits
        if lim.max_bytes is not None and self.nbytes > lim.max_bytes:
            raise UnsafeArchive(
                f"archive unpacks to more than the allowed {lim.max_bytes} bytes", entry=name
            )
        if (
            lim.max_ratio is not None
            and self.nbytes > lim.ratio_floor
            and self.nbytes > lim.max_ratio * max(self.r.received, 1)
        ):
            raise UnsafeArchive(
                f"archive expands more than {lim.max_ratio:g}:1 (a zip bomb?)", entry=name
            )
        self._unchecked += n
        if self._unchecked >= _SPACE_CHECK_BYTES:
            self._check_space(0)

    def _check_space(self, upcoming: int) -> None:
        """Refuse to go on when free space would drop under the reserve."""
        self._unchecked = 0
        # The margin covers what is written before the next check.
        ensure_free_space(self.dest, self.limits.reserve_bytes, upcoming + _SPACE_CHECK_BYTES)

    # -- end of the archive ----------------------------------------------------

    def _central_directory(self) -> None:
        """Check the central directory against the members written; refuse bad types."""
        index = 0
        while self.r.peek(4) == _SIG_CENTRAL:
            self.r.exact(4, "the central directory")
            fields = _CENTRAL.unpack(self.r.exact(_CENTRAL.size, "the central directory"))
            flags, nlen, elen, clen, eattr = (
                fields[2],
                fields[9],
                fields[10],
                fields[11],
                fields[14],
            )
            name = _decode_name(self.r.exact(nlen, "the central directory"), flags)
            self.r.exact(elen + clen, "the central directory")
            if index >= len(self.members) or self.members[index].name != name:
                raise CorruptArchive(
                    f"the central directory does not match the members at {name!r}", entry=name
                )
            check_member(_Info(name, eattr))  # links, devices, fifos, sockets
            member = self.members[index]
            mode = (eattr >> 16) & 0xFFFF
            if not member.is_dir and stat.S_ISDIR(mode):
                raise UnsafeArchive(f"{name!r} is a directory with data", entry=name)
            if not member.is_dir and mode & 0o111:
                self.executable.add(member.path)
            index += 1
        if index != len(self.members):
            raise CorruptArchive(
                f"the central directory lists {index} of {len(self.members)} members"
            )
        if self.r.peek(4) == _SIG_END64:
            self.r.exact(4, "the end record")
            (size,) = struct.unpack("<Q", self.r.exact(8, "the end record"))
            self.r.exact(size, "the end record")
        if self.r.peek(4) == _SIG_LOCATOR64:
            self.r.exact(20, "the end record")
        if self.r.peek(4) != _SIG_END:
            raise CorruptArchive("the archive has no end of central directory record")
        self.r.exact(4, "the end record")
        *_, comment = _END.unpack(self.r.exact(_END.size, "the end record"))
        self.r.exact(comment, "the archive comment")

    def _finish(self) -> ExtractReport:
        verified = False
        if self.manifest_raw is not None:
            manifest = Manifest.parse(self.manifest_raw, rename=self.rename)
            manifest.verify(self.received, self.dir_paths)
            self.executable |= {p for p, e in manifest.files.items() if e.executable}
            verified = True
        elif self.limits.require_manifest:
            raise IntegrityError("the archive carries no SHA-256 manifest, and one is required")
        report = ExtractReport(verified=verified)
        for path, (size, _digest) in self.received.items():
            # setuid, setgid and sticky bits are never carried over.
            mode = 0o755 if path in self.executable else 0o644
            os.chmod(self.dest.joinpath(*path.split("/")), mode)
            report.files.append(path)
            report.sizes.append(size)
            report.nbytes += size
        report.nfiles = len(report.files)
        return report


def ensure_free_space(path: Path, reserve_bytes: int, upcoming: int = 0) -> None:
    """Raise :class:`InsufficientStorage` unless ``upcoming`` bytes fit on
    ``path``'s filesystem with ``reserve_bytes`` still free (0: no check)."""
    if not reserve_bytes:
        return
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free - upcoming < reserve_bytes:
        raise InsufficientStorage(
            f"not enough free space: {free} bytes free, {upcoming} needed, "
            f"{reserve_bytes} must stay free"
        )


class _Capped:
    """An in-memory sink that refuses more than ``limit`` bytes (the manifest)."""

    def __init__(self, limit: int, name: str) -> None:
        self.data = bytearray()
        self._limit = limit
        self._name = name

    def write(self, data: bytes | memoryview) -> int:
        if len(self.data) + len(data) > self._limit:
            raise UnsafeArchive(
                f"the transfer manifest is larger than {self._limit} bytes", entry=self._name
            )
        self.data += data
        return len(data)


def extract_stream(
    source: Callable[[], bytes],
    dest: Path,
    *,
    limits: ExtractLimits | None = None,
    rename: Callable[[str], str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ExtractReport:
    """Unpack the zip read from ``source`` into the new directory ``dest``.

    ``source()`` returns the next chunk of the archive, ``b""`` at its end.
    ``rename`` maps each member path (e.g. to drop characters the receiver
    does not allow) before it is checked for clashes. ``dest`` must not
    exist; its parent is created. Blocking: run it in a worker thread, or
    use :func:`extract_async`.

    Raises :class:`UnsafeArchive`, :class:`CorruptArchive`,
    :class:`IntegrityError`, :class:`InsufficientStorage`,
    :class:`FileExistsError` if ``dest`` exists, whatever ``source`` raises,
    and :class:`OSError` for other failures of the destination. On any
    failure ``dest`` is removed with everything in it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir()
    try:
        return _Extractor(source, dest, limits or ExtractLimits(), rename, chunk_size).run()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    limits: ExtractLimits | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ExtractReport:
    """Unpack the archive file at ``zip_path`` into the new directory ``dest``.

    As :func:`extract_stream`; raises :class:`FileNotFoundError` if
    ``zip_path`` does not exist.
    """
    with open(zip_path, "rb") as fh:
        return extract_stream(_file_source(fh, chunk_size), dest, limits=limits)


def _file_source(fh: IO[bytes], chunk_size: int) -> Callable[[], bytes]:
    return lambda: fh.read(chunk_size)


class _Aborted(Exception):
    """The consumer of :func:`extract_async` was cancelled; stop the worker thread."""


async def extract_async(
    body: AsyncIterable[bytes],
    dest: Path,
    *,
    limits: ExtractLimits | None = None,
    rename: Callable[[str], str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    prefetch: int = 4,
) -> ExtractReport:
    """Unpack a zip arriving as ``body`` into ``dest`` while it arrives.

    The body is read on the event loop and batched into chunks of about
    ``chunk_size`` bytes; up to ``prefetch`` of them wait for the worker
    thread that unpacks (bounded memory, reception and unpacking overlap).
    Exceptions of ``body`` (a broken connection) surface here after ``dest``
    is removed. If this coroutine is cancelled, the worker is stopped and
    ``dest`` removed before the cancellation propagates. Otherwise as
    :func:`extract_stream`.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(max(1, prefetch))
    aborted = False

    async def pump() -> None:
        try:
            parts: list[bytes] = []
            held = 0
            async for piece in body:
                parts.append(piece)
                held += len(piece)
                if held >= chunk_size:
                    await queue.put(b"".join(parts))
                    parts, held = [], 0
            if parts:
                await queue.put(b"".join(parts))
            await queue.put(b"")
        except Exception as exc:  # handed to the worker, which raises it
            await queue.put(exc)

    def source() -> bytes:
        if aborted:
            raise _Aborted()
        item = asyncio.run_coroutine_threadsafe(queue.get(), loop).result()
        if isinstance(item, BaseException):
            raise item
        if aborted:
            raise _Aborted()
        return item

    feeder = asyncio.ensure_future(pump())
    worker = asyncio.ensure_future(
        asyncio.to_thread(
            extract_stream, source, dest, limits=limits, rename=rename, chunk_size=chunk_size
        )
    )
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        aborted = True
        feeder.cancel()
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(_Aborted())
        await asyncio.wait({worker})
        raise
    finally:
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
