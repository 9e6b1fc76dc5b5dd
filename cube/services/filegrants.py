"""File browser permissions (ChRIS v6): folders, files and link files shared
with users and groups.

Rules (the read side lives in :mod:`cube.services.files`):

- a grant on a folder lets the grantee open the folder and everything below
  it, and read and download the files there;
- a grant on a file or a link file lets the grantee read that file alone;
- ``permission`` is ``r`` (read) or ``w`` (write), as ChRIS spells it; both
  grant read access here, as no file browser change is open to anyone but
  the owner yet (``w`` is stored, so it is kept when that comes);
- only the owner of the thing (or staff) grants, changes and revokes; the
  owner of ``home/<username>/...`` is that user, other folders are staff's;
- granting to the owner or to oneself, or to a user or group that does not
  exist, is a 400;
- the grants of a thing are shown to those who may read it; to anyone else
  the thing and its grants do not exist (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    FileGroupPermission,
    FileUserPermission,
    Folder,
    FolderGroupPermission,
    FolderUserPermission,
    Group,
    User,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.services import files

#: The permissions ChRIS knows: read and write.
PERMISSIONS = ("r", "w")


class TargetKind(StrEnum):
    """What a grant is on: the three file browser resources."""

    FOLDER = "folder"
    FILE = "file"
    LINK_FILE = "linkfile"


@dataclass(frozen=True)
class Target:
    """A folder, file or link file that can be shared."""

    kind: TargetKind
    id: int
    #: The folder's path or the file's ``fname``.
    path: str
    #: Who may share it (besides staff); ``None``: staff only.
    owner_id: int | None


def user_model(kind: TargetKind) -> type[FolderUserPermission] | type[FileUserPermission]:
    """The table of user grants on ``kind``."""
    return FolderUserPermission if kind is TargetKind.FOLDER else FileUserPermission


def group_model(kind: TargetKind) -> type[FolderGroupPermission] | type[FileGroupPermission]:
    """The table of group grants on ``kind``."""
    return FolderGroupPermission if kind is TargetKind.FOLDER else FileGroupPermission


def target_id_of(grant: Any) -> int:
    """The id of what a grant row is on (its folder or file)."""
    return int(grant.folder_id if hasattr(grant, "folder_id") else grant.file_id)


async def readable_target(
    session: AsyncSession, user: User, kind: TargetKind, target_id: int
) -> Target:
    """A folder, file or link file ``user`` may read.

    Raises:
        NotFound: none, not readable, or a file asked for as a link file (or
            the reverse).
    """
    if kind is TargetKind.FOLDER:
        folder = await session.get(Folder, target_id)
        if folder is None or not await files.folder_visible(session, user, folder.path):
            raise NotFound("Not found.")
        return Target(kind, target_id, folder.path, await _home_owner(session, folder.path))
    row = await files.readable_file(session, user, target_id)
    if row.fname.endswith(files.LINK_SUFFIX) != (kind is TargetKind.LINK_FILE):
        raise NotFound("Not found.")
    return Target(kind, target_id, row.fname, row.owner_id)


async def _home_owner(session: AsyncSession, path: str) -> int | None:
    """The user whose home ``path`` is in (``home/<username>[/...]``)."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != "home":
        return None
    owner = (await session.exec(select(User).where(User.username == parts[1]))).first()
    return owner.id if owner is not None else None


async def owned_target(
    session: AsyncSession, user: User, kind: TargetKind, target_id: int
) -> Target:
    """A folder, file or link file ``user`` may share (owner or staff).

    Raises:
        NotFound: see :func:`readable_target`.
        PermissionDenied: readable, but not the user's.
    """
    target = await readable_target(session, user, kind, target_id)
    _check_owner(user, target)
    return target


def _check_owner(user: User, target: Target) -> None:
    if not user.is_staff and target.owner_id != user.id:
        raise PermissionDenied("only its owner may share it")


def check_permission(value: Any) -> str:
    """A ``permission`` field: ``r`` when absent.

    Raises:
        BadRequest: not one of :data:`PERMISSIONS`.
    """
    if value is None or value == "":
        return "r"
    if value not in PERMISSIONS:
        raise BadRequest.field("permission", f'"{value}" is not a valid choice (r or w).')
    return str(value)


async def grant_user(
    session: AsyncSession, user: User, target: Target, username: str, permission: str
) -> tuple[Any, User]:
    """Share ``target`` with the user ``username``; returns the grant and the user.

    Raises:
        PermissionDenied: ``user`` is not the owner (or staff).
        BadRequest: no such user, the owner or ``user`` themselves, or
            already shared with them.
    """
    _check_owner(user, target)
    grantee = (await session.exec(select(User).where(User.username == username))).first()
    if grantee is None or grantee.id is None:
        raise BadRequest.field("username", f"no user {username!r}")
    if grantee.id in (target.owner_id, user.id):
        raise BadRequest.field("username", "the owner already has access; grant to another user")
    model = user_model(target.kind)
    if await _existing(session, model, target, model.user_id, grantee.id):
        raise BadRequest.field("username", f"already shared with {username!r}")
    grant = _new(model, target, user_id=grantee.id, permission=permission)
    session.add(grant)
    await session.flush()
    return grant, grantee


async def grant_group(
    session: AsyncSession, user: User, target: Target, name: str, permission: str
) -> tuple[Any, Group]:
    """Share ``target`` with the members of group ``name``; returns the grant and the group.

    Raises:
        PermissionDenied: ``user`` is not the owner (or staff).
        BadRequest: no such group, or already shared with it.
    """
    _check_owner(user, target)
    group = (await session.exec(select(Group).where(Group.name == name))).first()
    if group is None or group.id is None:
        raise BadRequest.field("grpname", f"no group {name!r}")
    model = group_model(target.kind)
    if await _existing(session, model, target, model.group_id, group.id):
        raise BadRequest.field("grpname", f"already shared with group {name!r}")
    grant = _new(model, target, group_id=group.id, permission=permission)
    session.add(grant)
    await session.flush()
    return grant, group


def _new(model: Any, target: Target, **values: Any) -> Any:
    key = "folder_id" if target.kind is TargetKind.FOLDER else "file_id"
    return model(**{key: target.id}, **values)


async def _existing(
    session: AsyncSession, model: Any, target: Target, column: Any, value: int
) -> bool:
    on = model.folder_id if target.kind is TargetKind.FOLDER else model.file_id
    found = await session.exec(select(model.id).where(on == target.id, column == value))
    return found.first() is not None


async def readable_grant(
    session: AsyncSession, user: User, kind: TargetKind, model: Any, grant_id: int
) -> tuple[Any, Target]:
    """A grant (of table ``model``) on something of ``kind`` that ``user`` may read.

    Raises:
        NotFound: no such grant, or its folder or file is not readable (or
            is not of ``kind``).
    """
    grant = await session.get(model, grant_id)
    if grant is None:
        raise NotFound("Not found.")
    return grant, await readable_target(session, user, kind, target_id_of(grant))


async def change_grant(
    session: AsyncSession, user: User, kind: TargetKind, model: Any, grant_id: int, value: Any
) -> tuple[Any, Target]:
    """Change a grant's ``permission`` (its thing's owner or staff).

    Raises:
        NotFound: see :func:`readable_grant`.
        PermissionDenied: not the owner.
        BadRequest: a bad ``permission``.
    """
    grant, target = await readable_grant(session, user, kind, model, grant_id)
    _check_owner(user, target)
    grant.permission = check_permission(value)
    session.add(grant)
    await session.flush()
    return grant, target


async def revoke(
    session: AsyncSession, user: User, kind: TargetKind, model: Any, grant_id: int
) -> None:
    """Delete a grant (its thing's owner or staff).

    Raises:
        NotFound: see :func:`readable_grant`.
        PermissionDenied: not the owner.
    """
    grant, target = await readable_grant(session, user, kind, model, grant_id)
    _check_owner(user, target)
    await session.delete(grant)
    await session.flush()
