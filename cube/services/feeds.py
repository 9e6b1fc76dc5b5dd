"""Feeds: who may see them, sharing, notes, comments, tags and instance deletion
(a whole feed is deleted by :mod:`cube.services.lifecycle`).

Permission rules (ChRIS semantics, kept exact):

- the owner and staff may read and change a feed;
- a public feed, a feed shared with the user (``FeedUserPermission``) or with
  a group the user is a member of (``FeedGroupPermission``) may be *read*
  (the feed, its instances, files, note, comments and tags) — sharing grants
  read access and the right to comment, nothing more;
- anyone else gets 404, as if the feed did not exist;
- an anonymous caller (``user`` None in the read functions) may read public
  feeds only, as ChRIS lets its UI show them to visitors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    ComputeResource,
    Feed,
    FeedGroupPermission,
    FeedUserPermission,
    Folder,
    GroupMember,
    Note,
    ParameterValue,
    PluginInstance,
    PluginInstanceSplit,
    StatusChange,
    StoredFile,
    User,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.schema import InstanceStatus
from cube.storage import Storage


def visible_condition(user: User | None) -> Any:
    """A SQL condition on ``Feed`` true for the feeds ``user`` may read
    (``None``, an anonymous caller: the public ones)."""
    if user is None:
        return col(Feed.public).is_(True)
    if user.is_staff:
        return True
    shared_user = select(FeedUserPermission.feed_id).where(FeedUserPermission.user_id == user.id)
    shared_group = (
        select(FeedGroupPermission.feed_id)
        .join(GroupMember, col(GroupMember.group_id) == col(FeedGroupPermission.group_id))
        .where(GroupMember.user_id == user.id)
    )
    return or_(
        Feed.owner_id == user.id,
        col(Feed.public).is_(True),
        col(Feed.id).in_(shared_user),
        col(Feed.id).in_(shared_group),
    )


def visible_feeds(user: User | None) -> Any:
    """A query of the feeds ``user`` may read."""
    return select(Feed).where(visible_condition(user))


async def readable_feed(session: AsyncSession, user: User | None, feed_id: int) -> Feed:
    """A feed ``user`` (``None``: anonymous) may read.

    Raises:
        NotFound: no such feed, or not readable.
    """
    feed = (await session.exec(visible_feeds(user).where(Feed.id == feed_id))).first()
    if feed is None:
        raise NotFound("Not found.")
    return feed  # type: ignore[no-any-return]


async def owned_feed(session: AsyncSession, user: User, feed_id: int) -> Feed:
    """A feed ``user`` may change (owner or staff).

    Raises:
        NotFound: not readable at all.
        PermissionDenied: readable (public or shared) but not the user's.
    """
    feed = await readable_feed(session, user, feed_id)
    if feed.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("You do not have permission to perform this action.")
    return feed


async def can_read(session: AsyncSession, user: User | None, feed_id: int) -> bool:
    """Whether ``user`` (``None``: anonymous) may read feed ``feed_id``."""
    found = await session.exec(
        select(Feed.id).where(Feed.id == feed_id).where(visible_condition(user))
    )
    return found.first() is not None


async def rename(session: AsyncSession, user: User, feed_id: int, data: dict[str, Any]) -> Feed:
    """PUT a feed: ``name`` and (owner only) ``public``.

    Raises:
        NotFound, PermissionDenied: see :func:`owned_feed`.
        BadRequest: a name over 200 characters or a non-boolean ``public``.
    """
    feed = await owned_feed(session, user, feed_id)
    if "name" in data:
        name = str(data["name"] or "")
        if len(name) > 200:
            raise BadRequest.field("name", "at most 200 characters")
        feed.name = name
    if "public" in data:
        public = data["public"]
        if isinstance(public, str) and public.lower() in ("true", "false"):
            public = public.lower() == "true"
        if not isinstance(public, bool):
            raise BadRequest.field("public", "must be a boolean")
        feed.public = public
    session.add(feed)
    await session.flush()
    return feed


async def forget_folders(session: AsyncSession, path: str) -> None:
    """Drop the file browser ids of folder ``path`` and of every folder below
    it, whose files are being deleted: a folder with a row but no files is
    shown as an (empty) folder."""
    await session.exec(
        delete(Folder).where(  # type: ignore[call-overload]
            or_(col(Folder.path) == path, col(Folder.path).startswith(path + "/", autoescape=True))
        )
    )


async def _delete_instances(
    session: AsyncSession, storage: Storage, insts: Sequence[PluginInstance]
) -> list[tuple[ComputeResource, int]]:
    """Delete instances (a subtree) with their files, values and history.

    Returns the jobs that sites may still hold for them, (resource,
    instance id): ended instances whose remote cleanup was pending, which the
    scheduler can no longer do once their rows are gone.

    Raises:
        BadRequest: one of them is still active (cancel it first).
    """
    active = sorted(i.id for i in insts if InstanceStatus(i.status).is_active and i.id)
    if active:
        raise BadRequest(f"instances {active} are still active; cancel them first")
    ids = [i.id for i in insts]
    jobs = [
        (resource, inst_id)
        for inst_id, resource in (
            await session.exec(
                select(PluginInstance.id, ComputeResource)
                .join(
                    ComputeResource,
                    col(ComputeResource.id) == col(PluginInstance.compute_resource_id),
                )
                .where(col(PluginInstance.id).in_(ids))
                .where(col(PluginInstance.remote_cleanup_pending).is_(True))
            )
        ).all()
        if inst_id is not None
    ]
    files = (
        await session.exec(select(StoredFile).where(col(StoredFile.plugin_inst_id).in_(ids)))
    ).all()
    for model, column in (
        (StoredFile, StoredFile.plugin_inst_id),
        (ParameterValue, ParameterValue.plugin_inst_id),
        (StatusChange, StatusChange.plugin_inst_id),
        (PluginInstanceSplit, PluginInstanceSplit.plugin_inst_id),
    ):
        await session.exec(delete(model).where(col(column).in_(ids)))  # type: ignore[call-overload]
    for inst in insts:
        # the instance's own directory (``<plugin>_<id>``), its children's inside it
        await forget_folders(session, inst.output_path.removesuffix("/data"))
    # children first: an instance references its previous one
    for inst in sorted(insts, key=lambda i: i.id or 0, reverse=True):
        await session.delete(inst)
        await session.flush()
    # contents last: a failure above leaves every file in place
    for f in files:
        storage.local_path(f.fname).unlink(missing_ok=True)
    return jobs


async def delete_instance(
    session: AsyncSession, storage: Storage, user: User, inst_id: int
) -> list[tuple[ComputeResource, int]]:
    """Delete a ds/ts instance and its descendants (ChRIS: an fs one goes with its feed).

    Returns the jobs the caller must delete at their sites (see
    :func:`_delete_instances`).

    Raises:
        NotFound: not readable.
        PermissionDenied: not the owner of its feed, or an fs instance.
        BadRequest: an instance of the subtree is still active.
    """
    inst = await session.get(PluginInstance, inst_id)
    if inst is None or not await can_read(session, user, inst.feed_id):
        raise NotFound("Not found.")
    await owned_feed(session, user, inst.feed_id)
    if inst.previous_id is None:
        raise PermissionDenied("an fs instance is deleted with its feed: DELETE the feed")
    subtree = [inst]
    frontier = [inst_id]
    while frontier:
        kids = (
            await session.exec(
                select(PluginInstance).where(col(PluginInstance.previous_id).in_(frontier))
            )
        ).all()
        subtree.extend(kids)
        frontier = [k.id for k in kids if k.id is not None]
    return await _delete_instances(session, storage, subtree)


async def note_of(session: AsyncSession, feed_id: int) -> Note:
    """The feed's note, created empty on first use (ChRIS: one per feed)."""
    note = (await session.exec(select(Note).where(Note.feed_id == feed_id))).first()
    if note is None:
        note = Note(feed_id=feed_id)
        session.add(note)
        await session.flush()
    return note
