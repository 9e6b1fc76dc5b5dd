"""File helpers for plugins: stream-copying directory trees.

Copies stream, in the kernel where it can (:func:`os.sendfile`, as
:func:`shutil.copyfile` does on Linux), so no file is ever read whole into
memory. Not through shutil itself: it imports the compression modules, a
noticeable part of a small plugin's start-up.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: Bytes per user-space read where sendfile cannot copy.
_CHUNK = 1024 * 1024
#: sendfile's answers for files it cannot copy between: copied in user space then.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP})


def copy_file(source: Path, target: Path) -> None:
    """Copy the contents of ``source`` to ``target`` (created or truncated), streaming.

    Raises ``OSError`` on I/O failures, and when both name the same file
    (which truncating ``target`` would empty).
    """
    with open(source, "rb") as src:
        try:
            existing = os.stat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and os.path.samestat(os.fstat(src.fileno()), existing):
            raise OSError(errno.EINVAL, f"{str(source)!r} and {str(target)!r} are one file")
        with open(target, "wb") as dst:
            infd, outfd = src.fileno(), dst.fileno()
            block = max(os.fstat(infd).st_size, 2**23)
            offset = 0
            try:
                while sent := os.sendfile(outfd, infd, offset, block):
                    offset += sent
                return
            except OSError as exc:
                if offset or exc.errno not in _NO_SENDFILE:
                    raise
            # sendfile(offset=...) moved neither file's position: copy from the start
            while chunk := src.read(_CHUNK):
                dst.write(chunk)


def _keep_name(name: str) -> str:
    return name


def copy_tree(
    src: Path,
    dst: Path,
    *,
    rename: Callable[[str], str] = _keep_name,
) -> int:
    """Copy every file under ``src`` to the same relative place under ``dst``.

    Directories (empty ones included) are recreated; ``rename`` maps each
    *file* name (not directory names) to its name in ``dst``. ``dst`` may
    already exist; existing files of the same name are overwritten. When ``dst``
    lies inside ``src`` it is skipped, so a tree can be copied into a
    subdirectory of itself. Symbolic links are neither followed nor copied
    (ChRIS storage and pfioh's extractor never produce them). Only file
    contents are copied, not modes or times.

    Returns the number of files copied. Raises ``NotADirectoryError`` when
    ``src`` is not a directory, ``ValueError`` when ``src`` and ``dst`` are the
    same directory or ``rename`` returns something other than a plain file
    name (a ``/``, ``.`` or ``..``), and ``OSError`` on I/O failures.
    """
    if not src.is_dir():
        raise NotADirectoryError(f"{str(src)!r} is not a directory")
    src_real = src.resolve()
    dst_real = dst.resolve()
    if src_real == dst_real:
        raise ValueError(f"cannot copy {str(src)!r} onto itself")
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel = here.relative_to(src)
        target = dst / rel
        # Prune in place (os.walk honours it): never descend into links or into dst itself.
        dirnames[:] = [
            d for d in dirnames if not (here / d).is_symlink() and (here / d).resolve() != dst_real
        ]
        for d in dirnames:
            (target / d).mkdir(exist_ok=True)
        for name in filenames:
            source = here / name
            if source.is_symlink() or not source.is_file():
                continue
            new_name = rename(name)
            # A renamed file must stay where it is: no separators, no "." or "..".
            if "/" in new_name or os.sep in new_name or new_name in ("", ".", ".."):
                raise ValueError(f"renamed file name {new_name!r} is not a plain file name")
            copy_file(source, target / new_name)
            copied += 1
    return copied
