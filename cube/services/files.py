"""Uploaded files and file queries.

Uploads go to ``home/<username>/...`` (CUBE v6 rule: ``upload_path`` must
start there, and may not be inside the user's ``feeds`` folder).
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import StoredFile, User
from cube.errors import BadRequest, NotFound
from cube.storage import Storage, check_storage_path


def check_upload_path(user: User, upload_path: str) -> str:
    """Validate where a user may upload a file; returns the normalised path.

    Raises:
        BadRequest: outside ``home/<username>/``, inside ``feeds/``, or unsafe.
    """
    path = check_storage_path(upload_path, what="upload_path")
    prefix = f"home/{user.username}/"
    if not path.startswith(prefix) or path == prefix.rstrip("/"):
        raise BadRequest.field("upload_path", f"must start with {prefix!r}")
    if path.startswith(prefix + "feeds/") or path == prefix + "feeds":
        raise BadRequest.field("upload_path", f"may not be inside {prefix}feeds/")
    if len(path) > 1024:
        raise BadRequest.field("upload_path", "at most 1024 characters")
    return path


async def upload_file(
    session: AsyncSession,
    storage: Storage,
    user: User,
    upload_path: str,
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int,
) -> StoredFile:
    """Store an uploaded stream and register it.

    Raises:
        BadRequest: invalid path, or a file already exists there.
        PayloadTooLarge: larger than ``max_bytes``.
    """
    path = check_upload_path(user, upload_path)
    exists = (await session.exec(select(StoredFile).where(StoredFile.fname == path))).first()
    if exists is not None:
        raise BadRequest.field("upload_path", f"a file already exists at {path!r}")
    size = await storage.write_stream(path, chunks, max_bytes=max_bytes)
    assert user.id is not None
    row = StoredFile(fname=path, fsize=size, owner_id=user.id)
    session.add(row)
    try:
        await session.flush()
    except Exception:
        storage.local_path(path).unlink(missing_ok=True)
        raise
    return row


async def readable_file(session: AsyncSession, user: User, file_id: int) -> StoredFile:
    """A stored file the user may read.

    Raises:
        NotFound: no such file, or not the user's.
    """
    row = await session.get(StoredFile, file_id)
    if row is None or (row.owner_id != user.id and not row.public and not user.is_staff):
        raise NotFound("Not found.")
    return row
