"""Deleting a feed: its instances stop, their jobs and data at the sites go,
then their files in storage and every row of the feed.

Deletion runs in two transactions around the remote work: first every
active instance is cancelled (so no worker submits or registers anything
more), then, once the sites were told to delete the jobs, the rows go in a
few bulk DELETEs. The caller deletes the feed's folder in storage last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    Comment,
    ComputeResource,
    Feed,
    FeedGroupPermission,
    FeedUserPermission,
    Note,
    ParameterValue,
    PluginInstance,
    PluginInstanceParent,
    PluginInstanceSplit,
    StatusChange,
    StoredFile,
    Tagging,
    User,
    WorkflowInstance,
)
from cube.schema import InstanceStatus
from cube.services.feeds import forget_folders, owned_feed
from cube.services.instances import ACTIVE, transition

S = InstanceStatus


@dataclass(frozen=True)
class FeedDeletion:
    """What deleting one feed involves beyond its rows."""

    feed_id: int
    #: the feed's folder in storage (every output of its instances is under it)
    folder: str
    #: instances cancelled by the deletion (their scheduler tasks must stop)
    cancelled: list[int]
    #: jobs that may remain at compute sites: (resource, instance id)
    jobs: list[tuple[ComputeResource, int]]


async def begin_feed_deletion(session: AsyncSession, user: User, feed_id: int) -> FeedDeletion:
    """Cancel a feed's active instances and list its jobs that sites may hold.

    The caller commits, deletes the jobs, then calls :func:`finish_feed_deletion`.

    Raises:
        NotFound: no such feed, or not readable by the user.
        PermissionDenied: readable (public or shared) but neither the
            user's nor the user staff.
    """
    feed = await owned_feed(session, user, feed_id)
    owner = await session.get(User, feed.owner_id)
    assert owner is not None
    active = (
        await session.exec(
            select(PluginInstance.id)
            .where(PluginInstance.feed_id == feed_id)
            .where(col(PluginInstance.status).in_(ACTIVE))
        )
    ).all()
    cancelled = []
    for inst_id in active:
        assert inst_id is not None
        note = f"feed deleted by {user.username}"
        if await transition(session, inst_id, [S(s) for s in ACTIVE], S.CANCELLED, note=note):
            cancelled.append(inst_id)
    rows = (
        await session.exec(
            select(PluginInstance.id, ComputeResource)
            .join(
                ComputeResource,
                col(ComputeResource.id) == col(PluginInstance.compute_resource_id),
            )
            .where(PluginInstance.feed_id == feed_id)
            .where(col(PluginInstance.remote_cleanup_pending).is_(True))
        )
    ).all()
    return FeedDeletion(
        feed_id=feed_id,
        folder=f"home/{owner.username}/feeds/feed_{feed_id}",
        cancelled=cancelled,
        jobs=[(resource, inst_id) for inst_id, resource in rows if inst_id is not None],
    )


async def finish_feed_deletion(session: AsyncSession, deletion: FeedDeletion) -> None:
    """Delete the feed's rows: files, parameter values, status history, ts
    parents and workflow membership, instances, then sharing, note, comments,
    taggings and the feed. Bulk statements, whatever the feed's size. The
    caller commits.

    Rows that reference the instances or the feed are deleted explicitly,
    not left to ``ON DELETE CASCADE``: a database migrated from before those
    foreign keys existed may lack them.
    """
    feed_id = deletion.feed_id
    instances = select(PluginInstance.id).where(PluginInstance.feed_id == feed_id)
    for model, column in (
        (StoredFile, StoredFile.plugin_inst_id),
        (ParameterValue, ParameterValue.plugin_inst_id),
        (StatusChange, StatusChange.plugin_inst_id),
        (PluginInstanceParent, PluginInstanceParent.plugin_inst_id),
        # a parent in this feed has its ts children in this feed too
        (PluginInstanceParent, PluginInstanceParent.parent_id),
        (WorkflowInstance, WorkflowInstance.plugin_inst_id),
        (PluginInstanceSplit, PluginInstanceSplit.plugin_inst_id),
    ):
        await session.exec(delete(model).where(col(column).in_(instances)))  # type: ignore[call-overload]
    # one statement for all instances: parent and child rows go together
    await session.exec(
        delete(PluginInstance).where(col(PluginInstance.feed_id) == feed_id)  # type: ignore[call-overload]
    )
    annotations: tuple[tuple[Any, Any], ...] = (
        (FeedUserPermission, FeedUserPermission.feed_id),
        (FeedGroupPermission, FeedGroupPermission.feed_id),
        (Note, Note.feed_id),
        (Comment, Comment.feed_id),
        (Tagging, Tagging.feed_id),
    )
    for model, column in annotations:
        await session.exec(delete(model).where(col(column) == feed_id))  # type: ignore[call-overload]
    await session.exec(delete(Feed).where(col(Feed.id) == feed_id))  # type: ignore[call-overload]
    await forget_folders(session, deletion.folder)
