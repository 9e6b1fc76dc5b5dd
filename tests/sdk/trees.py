"""Helpers to make and compare directory trees in plugin tests."""

from __future__ import annotations

import os
from pathlib import Path

#: A small tree: nested dirs, unicode names, an empty file, binary content, an empty dir.
SAMPLE_FILES: dict[str, bytes] = {
    "a.txt": b"alpha\n",
    "empty.dat": b"",
    "sub/b.bin": bytes(range(256)) * 9,
    "sub/deeper/ünïcødé 名前.txt": "héllo wörld ✓\n".encode(),
    "sub/deeper/c.dcm": b"DICM" + b"\x00\xff" * 4000,
    "другой/файл.txt": b"privet\n",
}
SAMPLE_EMPTY_DIRS = ("void", "sub/nothing-here")


def make_tree(root: Path) -> Path:
    """Write :data:`SAMPLE_FILES` and :data:`SAMPLE_EMPTY_DIRS` under ``root``."""
    for rel, data in SAMPLE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel in SAMPLE_EMPTY_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


def snapshot(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """Every file (relative path → content) and every directory under ``root``."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            dirs.add((here / d).relative_to(root).as_posix())
        for f in filenames:
            files[(here / f).relative_to(root).as_posix()] = (here / f).read_bytes()
    return files, dirs


def prefixed(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    """``files`` with ``prefix`` added to each file name (directories kept)."""
    out = {}
    for rel, data in files.items():
        head, _, name = rel.rpartition("/")
        out[f"{head}/{prefix}{name}" if head else f"{prefix}{name}"] = data
    return out
