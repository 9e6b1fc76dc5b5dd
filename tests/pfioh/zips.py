"""Helpers to build test archives (well-formed and hostile) and compare trees."""

from __future__ import annotations

import os
import stat
import warnings
import zipfile
from pathlib import Path


def entry(
    name: str, data: bytes = b"", *, mode: int | None = None
) -> tuple[zipfile.ZipInfo, bytes]:
    """A member named ``name`` (kept verbatim) with ``data`` and Unix ``mode`` (type bits too)."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
    info.create_system = 3  # Unix, so external_attr carries a mode
    if mode is not None:
        info.external_attr = (mode & 0xFFFF) << 16
    elif name.endswith("/"):
        info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
    else:
        info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, data


def write_zip(path: Path, members: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    """Write ``members`` verbatim (no name sanitising) into a new zip at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in members:
                zf.writestr(info, data)
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: relative path -> file bytes, or None for a directory."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[(rel / d).as_posix()] = None
        for f in filenames:
            out[(rel / f).as_posix()] = (Path(dirpath) / f).read_bytes()
    return out


def build_tree(root: Path, tree: dict[str, object]) -> None:
    """Create ``tree`` under ``root``: bytes are files, dicts directories."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in tree.items():
        if isinstance(value, bytes):
            (root / name).write_bytes(value)
        else:
            assert isinstance(value, dict)
            build_tree(root / name, value)
