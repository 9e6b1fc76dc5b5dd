"""Uploaded files and file queries.

Uploads go to ``home/<username>/...`` (CUBE v6 rule: ``upload_path`` must
start there, and may not be inside the user's ``feeds`` folder).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from sqlalchemy import and_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    Feed,
    FileGroupPermission,
    FileUserPermission,
    Folder,
    FolderGroupPermission,
    FolderUserPermission,
    GroupMember,
    PluginInstance,
    StoredFile,
    User,
    utcnow,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.services import feeds, groups
from cube.storage import Storage, check_storage_path

#: Where DICOM files received from PACS are stored (ChRIS v6 layout).
PACS_ROOT = "SERVICES/PACS"
#: Members of this group (and staff) may read PACS data (ChRIS's group name).
PACS_GROUP = "pacs_users"
#: Suffix of link files (a pointer to another storage path).
LINK_SUFFIX = ".chrislink"


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


async def can_read_file(session: AsyncSession, user: User | None, row: StoredFile) -> bool:
    """Whether ``user`` may read a stored file: their own, public, staff, an
    output of a feed they may read, a PACS file for members of ``pacs_users``,
    or a file shared with them (itself or a folder above it, see
    :func:`file_granted`).
    ``None`` (an anonymous caller) reads public files and outputs of public feeds."""
    if row.public or (user is not None and (row.owner_id == user.id or user.is_staff)):
        return True
    if row.plugin_inst_id is not None:
        inst = await session.get(PluginInstance, row.plugin_inst_id)
        if inst is not None and await feeds.can_read(session, user, inst.feed_id):
            return True
    if user is None:
        return False
    if row.fname.startswith(PACS_ROOT + "/") and await groups.is_member(session, user, PACS_GROUP):
        return True
    return await file_granted(session, user, row)


async def readable_file(session: AsyncSession, user: User | None, file_id: int) -> StoredFile:
    """A stored file the user may read (see :func:`can_read_file`).

    Raises:
        NotFound: no such file, or not readable.
    """
    row = await session.get(StoredFile, file_id)
    if row is None or not await can_read_file(session, user, row):
        raise NotFound("Not found.")
    return row


async def delete_user_file(
    session: AsyncSession, storage: Storage, user: User, file_id: int
) -> None:
    """Delete an uploaded file (its owner or staff).

    Raises:
        NotFound: not readable, or not an upload.
        PermissionDenied: readable but not the user's.
    """
    row = await readable_file(session, user, file_id)
    if row.plugin_inst_id is not None or row.fname.startswith(PACS_ROOT + "/"):
        raise NotFound("Not found.")
    if row.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("You do not have permission to perform this action.")
    await session.delete(row)
    await session.flush()
    storage.local_path(row.fname).unlink(missing_ok=True)


async def move_user_file(
    session: AsyncSession, storage: Storage, user: User, file_id: int, upload_path: str
) -> StoredFile:
    """Move an uploaded file to ``upload_path`` (same rules as an upload).

    Raises:
        NotFound, PermissionDenied: see :func:`delete_user_file`.
        BadRequest: a bad path, or a file already there.
    """
    row = await readable_file(session, user, file_id)
    if row.plugin_inst_id is not None or row.fname.startswith(PACS_ROOT + "/"):
        raise NotFound("Not found.")
    if row.owner_id != user.id:
        raise PermissionDenied("only its owner may move a file")
    path = check_upload_path(user, upload_path)
    if path == row.fname:
        return row
    if (await session.exec(select(StoredFile.id).where(StoredFile.fname == path))).first():
        raise BadRequest.field("upload_path", f"a file already exists at {path!r}")
    target = storage.local_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.local_path(row.fname).rename(target)
    old = row.fname
    row.fname = path
    session.add(row)
    try:
        await session.flush()
    except Exception:
        target.rename(storage.local_path(old))
        raise
    return row


async def create_folder(session: AsyncSession, user: User, raw: str) -> Folder:
    """Create an (empty) folder in the user's home, outside ``feeds/``.

    Raises:
        BadRequest: a bad path, or the folder exists.
    """
    path = check_upload_path(user, raw).rstrip("/")
    if await folder_exists(session, user, path):
        raise BadRequest.field("path", f"folder {path!r} exists")
    if (await session.exec(select(StoredFile.id).where(StoredFile.fname == path))).first():
        raise BadRequest.field("path", f"a file exists at {path!r}")
    return await folder_row(session, path)


# -- the file browser ------------------------------------------------------------

#: Top-level folders every user may open (their children are filtered).
TOP_FOLDERS = frozenset({"", "home", "SERVICES", "PIPELINES"})


def under(session: AsyncSession, column: Any, prefix: str) -> Any:
    """Condition: ``column`` starts with ``prefix`` (an index range scan on SQLite).

    SQLite uses no index for ``LIKE`` on a case-sensitive column, so a
    ``>= prefix AND < prefix'`` range is added there (byte order is its
    collation). Not on PostgreSQL: a linguistic collation does not keep a
    prefix's strings inside that range.
    """
    like = col(column).like(like_prefix(prefix), escape="\\")
    if not prefix or session.get_bind().dialect.name != "sqlite":
        return like
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(col(column) >= prefix, col(column) < upper, like)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (escape ``\\``) matching strings that start with ``prefix``."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def folder_visible(session: AsyncSession, user: User, path: str) -> bool:
    """Whether ``user`` may open folder ``path`` (storage path, ``""`` the root).

    Own home, the top levels, shared or public feeds' folders
    (``home/<owner>/feeds/feed_<id>/...``), PIPELINES, SERVICES/PACS for
    ``pacs_users`` members, and folders shared with the user or below one
    shared with them (:func:`folder_granted`); staff see everything.
    """
    if user.is_staff or path in TOP_FOLDERS:
        return True
    parts = path.split("/")
    if parts[0] == "home":
        if parts[1] == user.username:
            return True
        if len(parts) >= 4 and parts[2] == "feeds" and parts[3].startswith("feed_"):
            feed_id = parts[3].removeprefix("feed_")
            if feed_id.isdigit():
                feed = await session.get(Feed, int(feed_id))
                owner = await session.get(User, feed.owner_id) if feed else None
                if (
                    owner is not None
                    and owner.username == parts[1]
                    and await feeds.can_read(session, user, int(feed_id))
                ):
                    return True
    elif parts[0] == "PIPELINES":
        return True
    elif parts[:2] == ["SERVICES", "PACS"] and await groups.is_member(session, user, PACS_GROUP):
        return True
    return await folder_granted(session, user, path)


def folder_and_ancestors(path: str) -> list[str]:
    """``path`` and every folder above it, the root (``""``) included."""
    parts = path.split("/") if path else []
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _groups_of(user: User) -> Any:
    return select(GroupMember.group_id).where(GroupMember.user_id == user.id)


async def folder_granted(session: AsyncSession, user: User, path: str) -> bool:
    """Whether folder ``path`` or a folder above it is shared with ``user``
    (directly or through a group): a folder grant covers everything below.
    One query: it runs for every folder a user cannot otherwise open."""
    by_user = select(FolderUserPermission.folder_id).where(FolderUserPermission.user_id == user.id)
    by_group = select(FolderGroupPermission.folder_id).where(
        col(FolderGroupPermission.group_id).in_(_groups_of(user))
    )
    found = await session.exec(
        select(Folder.id)
        .where(col(Folder.path).in_(folder_and_ancestors(path)))
        .where(or_(col(Folder.id).in_(by_user), col(Folder.id).in_(by_group)))
        .limit(1)
    )
    return found.first() is not None


async def file_granted(session: AsyncSession, user: User, row: StoredFile) -> bool:
    """Whether a stored file, or a folder it lies in, is shared with ``user``
    (directly or through a group)."""
    by_user = select(FileUserPermission.file_id).where(FileUserPermission.user_id == user.id)
    by_group = select(FileGroupPermission.file_id).where(
        col(FileGroupPermission.group_id).in_(_groups_of(user))
    )
    found = await session.exec(
        select(StoredFile.id)
        .where(StoredFile.id == row.id)
        .where(or_(col(StoredFile.id).in_(by_user), col(StoredFile.id).in_(by_group)))
    )
    if found.first() is not None:
        return True
    return await folder_granted(session, user, row.fname.rpartition("/")[0])


def files_in_folder(session: AsyncSession, path: str) -> Any:
    """A query of the files directly in folder ``path`` (not in its sub-folders)."""
    prefix = f"{path}/" if path else ""
    return select(StoredFile).where(
        under(session, StoredFile.fname, prefix),
        col(StoredFile.fname).not_like(like_prefix(prefix) + "/%", escape="\\"),
    )


async def folder_children(session: AsyncSession, path: str) -> list[str]:
    """The names of the folders directly in folder ``path``, sorted.

    Computed in the database (the first path component after ``path`` of
    every file below it), so a folder with 100,000 files below it is not
    loaded into memory.
    """
    prefix = f"{path}/" if path else ""
    rest = func.substr(col(StoredFile.fname), len(prefix) + 1)
    dialect = session.get_bind().dialect.name
    slash = func.strpos(rest, "/") if dialect == "postgresql" else func.instr(rest, "/")
    heads = await session.exec(
        select(func.substr(rest, 1, slash - 1))
        .where(under(session, StoredFile.fname, prefix))
        .where(col(StoredFile.fname).like(like_prefix(prefix) + "/%", escape="\\"))
        .distinct()
    )
    children = set(heads.all())
    # folders made empty (POST filebrowser/) have only their row
    made = await session.exec(
        select(Folder.path).where(col(Folder.path).like(like_prefix(prefix), escape="\\"))
    )
    for made_path in made.all():
        head, sep, _ = made_path[len(prefix) :].partition("/")
        if head and not sep:
            children.add(head)
    return sorted(c for c in children if c)


async def folder_exists(session: AsyncSession, user: User, path: str) -> bool:
    """Whether ``path`` is a folder: a top level, the user's home, or holds files."""
    if path in TOP_FOLDERS or path == f"home/{user.username}":
        return True
    if (await session.exec(select(Folder.id).where(Folder.path == path))).first() is not None:
        return True
    found = await session.exec(
        select(StoredFile.id).where(under(session, StoredFile.fname, path + "/")).limit(1)
    )
    return found.first() is not None


async def folder_row(session: AsyncSession, path: str) -> Folder:
    """The id-carrying row of folder ``path``, created on first look."""
    row = (await session.exec(select(Folder).where(Folder.path == path))).first()
    if row is None:
        # made here, or meanwhile by another request: either way it is there then
        await ensure_folder(session, path)
        row = (await session.exec(select(Folder).where(Folder.path == path))).one()
    return row


async def ensure_folder(session: AsyncSession, path: str) -> None:
    """Give folder ``path`` its id-carrying row if it has none, in one
    statement (each new instance makes its output folder's; :func:`folder_row`
    also returns the row)."""
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    await session.exec(
        insert(Folder)  # type: ignore[call-overload]
        .values(path=path, creation_date=utcnow())
        .on_conflict_do_nothing(index_elements=["path"])
    )


def read_link(storage: Storage, row: StoredFile) -> str:
    """The storage path a ``.chrislink`` file points to (its first line)."""
    try:
        with storage.open(row.fname) as fh:
            return fh.read(4096).decode("utf-8", "replace").strip().splitlines()[0]
    except (OSError, IndexError):
        return ""
