"""Groups of users (staff-managed) and their members."""

from __future__ import annotations

import re

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import FeedGroupPermission, Group, GroupMember, User
from cube.errors import BadRequest, Conflict, NotFound

GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,150}$")


async def create_group(session: AsyncSession, name: str) -> Group:
    """Create a group.

    Raises:
        BadRequest: an invalid name.
        Conflict: the name is taken.
    """
    if not GROUP_NAME_RE.fullmatch(name):
        raise BadRequest.field("name", "1 to 150 characters of letters, digits and _ . @ + -")
    if (await session.exec(select(Group).where(Group.name == name))).first() is not None:
        raise Conflict(f"group {name!r} exists", fields={"name": ["already exists"]})
    group = Group(name=name)
    session.add(group)
    await session.flush()
    return group


async def add_member(session: AsyncSession, group: Group, username: str) -> GroupMember:
    """Add the user named ``username`` to ``group``.

    Raises:
        BadRequest: no such user.
        Conflict: already a member.
    """
    user = (await session.exec(select(User).where(User.username == username))).first()
    if user is None:
        raise BadRequest.field("username", f"no user {username!r}")
    found = await session.exec(
        select(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id == user.id)
    )
    if found.first() is not None:
        raise Conflict(f"{username} is already in {group.name}")
    assert group.id is not None and user.id is not None
    member = GroupMember(group_id=group.id, user_id=user.id)
    session.add(member)
    await session.flush()
    return member


async def delete_group(session: AsyncSession, group_id: int) -> None:
    """Delete a group, its memberships and the feed shares made with it.

    Raises:
        NotFound: no such group.
    """
    group = await session.get(Group, group_id)
    if group is None:
        raise NotFound("Not found.")
    for model in (GroupMember, FeedGroupPermission):
        rows = await session.exec(select(model).where(model.group_id == group_id))  # type: ignore[attr-defined]
        for row in rows.all():
            await session.delete(row)
    await session.flush()
    await session.delete(group)
    await session.flush()


async def is_member(session: AsyncSession, user: User, group_name: str) -> bool:
    """Whether ``user`` is in the group named ``group_name``."""
    found = await session.exec(
        select(GroupMember.id)
        .join(Group, Group.id == GroupMember.group_id)  # type: ignore[arg-type]
        .where(Group.name == group_name, GroupMember.user_id == user.id)
    )
    return found.first() is not None
