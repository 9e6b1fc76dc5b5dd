"""The SHA-256 manifest that travels inside every archive the fabric sends.

A sender hashes each file while it streams it and appends one last member,
:data:`MANIFEST_NAME`, listing every file (path, size, SHA-256, executable
bit) and every directory. The receiver hashes what it writes and compares
(:meth:`Manifest.verify`); any difference fails the whole transfer, so a
byte changed anywhere between the sender's disk and the receiver's (a proxy,
a bad NIC, a truncated retry) is caught, not just what CRC-32 would catch.

The manifest is JSON Lines so it is written and parsed one entry at a time::

    {"manifest": "chris-transfer", "version": 1, "algorithm": "sha256"}
    {"path": "a/b.dcm", "size": 524288, "sha256": "9f86d0...", "x": false}
    {"path": "empty-dir", "dir": true}

Archives without a manifest (from ChRIS's own CUBE or pfcon) are still
readable; a receiver may insist on one (``require_manifest``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pfioh.errors import CorruptArchive, IntegrityError

__all__ = ["MANIFEST_NAME", "MAX_MANIFEST_BYTES", "IntegrityError", "Manifest"]

#: Archive name of the manifest member (at the archive root, always last).
MANIFEST_NAME = ".chris-manifest.jsonl"
#: Largest manifest a receiver reads (about 200 bytes per entry: ~300k files).
MAX_MANIFEST_BYTES = 64 << 20

_HEADER = {"manifest": "chris-transfer", "version": 1, "algorithm": "sha256"}


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest."""

    size: int
    sha256: str
    executable: bool = False


@dataclass
class Manifest:
    """Files (path → :class:`FileEntry`) and directories of one transfer."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def add_file(self, path: str, size: int, sha256: str, *, executable: bool = False) -> None:
        """Record a file sent under ``path`` (archive name, ``/``-separated)."""
        self.files[path] = FileEntry(size, sha256, executable)

    def add_dir(self, path: str) -> None:
        """Record a directory (its archive name, with or without the trailing ``/``)."""
        self.dirs.add(path.rstrip("/"))

    def to_bytes(self) -> bytes:
        """The manifest as JSON Lines (UTF-8), header first."""
        lines = [json.dumps(_HEADER)]
        lines += (
            json.dumps({"path": d, "dir": True}, ensure_ascii=False) for d in sorted(self.dirs)
        )
        lines += (
            json.dumps(
                {"path": p, "size": e.size, "sha256": e.sha256, "x": e.executable},
                ensure_ascii=False,
            )
            for p, e in self.files.items()
        )
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, raw: bytes, *, rename: Callable[[str], str] | None = None) -> Manifest:
        """Read a manifest; ``rename`` maps each path as the receiver renames members.

        Raises :class:`CorruptArchive` for anything that is not a manifest of
        this format.
        """
        try:
            # Not splitlines(): names may hold U+0085 or U+2028, which JSON leaves as is.
            lines = [line for line in raw.decode("utf-8").split("\n") if line]
            header = json.loads(lines[0]) if lines else None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptArchive(f"unreadable transfer manifest: {exc}") from exc
        if header != _HEADER:
            raise CorruptArchive(f"unknown transfer manifest header: {header!r}")
        out = cls()
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                path = str(entry["path"]).strip("/")
                if rename is not None:
                    path = rename(path)
                if entry.get("dir"):
                    out.add_dir(path)
                    continue
                size, digest = entry["size"], entry["sha256"]
                if not isinstance(size, int) or not isinstance(digest, str):
                    raise TypeError("size must be an integer and sha256 a string")
                out.add_file(path, size, digest.lower(), executable=bool(entry.get("x")))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CorruptArchive(f"bad transfer manifest line {number}: {exc}") from exc
        return out

    def verify(self, received: dict[str, tuple[int, str]], dirs: Iterable[str]) -> None:
        """Compare with what was received: path → (size, sha256), and directories.

        Raises :class:`IntegrityError` naming the first differences: a file
        missing, unexpected, of another size or with another hash, or a
        listed directory that did not arrive.
        """
        problems: list[str] = []
        for path, entry in self.files.items():
            got = received.get(path)
            if got is None:
                problems.append(f"{path!r} is missing")
            elif got[0] != entry.size:
                problems.append(f"{path!r} has {got[0]} bytes, the sender sent {entry.size}")
            elif got[1] != entry.sha256:
                problems.append(
                    f"{path!r} has SHA-256 {got[1][:16]}…, expected {entry.sha256[:16]}…"
                )
        problems += (f"{p!r} is not in the manifest" for p in received if p not in self.files)
        have = set(dirs)
        problems += (
            f"directory {d!r} is missing" for d in sorted(self.dirs) if d and d not in have
        )
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise IntegrityError(
                "the transfer does not match its SHA-256 manifest: "
                + "; ".join(problems[:5])
                + more
            )
