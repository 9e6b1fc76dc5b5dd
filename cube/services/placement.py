"""Placement: which compute resource runs a plugin instance, and when.

Two moments decide it.

*At creation* (:func:`place`) the instance gets a resource among those its
plugin is registered on:

1. a resource named by the user (``compute_resource_name``) is taken as is,
   full or not, but refused when it has fewer ``gpus`` than the instance's
   ``gpu_limit``;
2. otherwise only resources with ``gpus >= gpu_limit`` are eligible (none:
   400 on ``gpu_limit``);
3. an instance that needs no GPU keeps to resources without GPUs when one
   of them has room, so GPU sites stay free for GPU work;
4. among what is left, the least loaded wins: lowest ``load /
   max_concurrent_jobs`` (an unlimited resource counts 0), then fewest
   active instances, then lowest id. A resource has room while its load is
   below ``max_concurrent_jobs``; when every candidate is full the instance
   is still accepted and queues on the one with the lowest ratio, the
   likeliest to drain first.

The *load* at creation is every active instance assigned to the resource
that is past waiting for its parent (``scheduled``, ``started``,
``registeringFiles``), so a burst of submissions spreads even before the
scheduler has run any of them.

*At submission* (:func:`reserve_slot`) the scheduler takes one of the
resource's ``max_concurrent_jobs`` slots; only instances holding one
(``started``, ``registeringFiles``, or ``scheduled`` with
``slot_reserved_at`` set) count, so queued instances do not block each
other. The reservation is one guarded UPDATE whose WHERE counts the held
slots, so two workers can never both take the last one. An instance that
finds its resource full stays ``scheduled``; unless the user named the
resource it may move, before submission only, to another eligible resource
with room (:func:`movable_resources`, same ranking as above).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import ColumnElement, Integer, Update, and_, bindparam, update
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import ComputeResource, PluginInstance, utcnow
from cube.errors import BadRequest
from cube.schema import InstanceStatus
from cube.services.plugins import plugin_resources

S = InstanceStatus

#: Statuses that count towards a resource's load when placing a new instance.
QUEUED_OR_RUNNING = (S.SCHEDULED.value, S.STARTED.value, S.REGISTERING_FILES.value)
#: Statuses that hold a job slot whatever ``slot_reserved_at`` says.
SUBMITTED = (S.STARTED.value, S.REGISTERING_FILES.value)


@dataclass(frozen=True)
class Candidate:
    """A compute resource and its current load (instances counted against it)."""

    resource: ComputeResource
    load: int

    @property
    def limit(self) -> int:
        """``max_concurrent_jobs``; 0 means unlimited."""
        return self.resource.max_concurrent_jobs

    @property
    def has_room(self) -> bool:
        """True when another job fits under ``max_concurrent_jobs``."""
        return self.limit <= 0 or self.load < self.limit

    def rank(self) -> tuple[Fraction, int, int]:
        """Sort key, best first: load ratio, then load, then id (deterministic)."""
        ratio = Fraction(self.load, self.limit) if self.limit > 0 else Fraction(0)
        return (ratio, self.load, self.resource.id or 0)


def choose_resource(
    candidates: Sequence[Candidate],
    *,
    gpu_limit: int,
    wanted: str | None = None,
    plugin_name: str = "the plugin",
) -> ComputeResource:
    """Pick the resource of a new instance by the rule in the module docstring.

    ``candidates`` are the resources the plugin is registered on with their
    loads; ``wanted`` is the resource the user named, if any.

    Raises:
        BadRequest: on ``compute_resource_name`` (no candidates, or the named
            one is not among them), or on ``gpu_limit`` (no candidate, or not
            the named one, has that many GPUs).
    """
    if wanted:
        named = next((c for c in candidates if c.resource.name == wanted), None)
        if named is None:
            raise BadRequest.field(
                "compute_resource_name", f"{plugin_name} is not registered on {wanted!r}"
            )
        if named.resource.gpus < gpu_limit:
            raise BadRequest.field(
                "gpu_limit",
                f"compute resource {wanted!r} offers {named.resource.gpus} GPUs, {gpu_limit} asked",
            )
        return named.resource
    if not candidates:
        raise BadRequest.field(
            "compute_resource_name", f"{plugin_name} is registered on no compute resource"
        )
    eligible = [c for c in candidates if c.resource.gpus >= gpu_limit]
    if not eligible:
        most = max(c.resource.gpus for c in candidates)
        raise BadRequest.field(
            "gpu_limit",
            f"no compute resource of {plugin_name} offers {gpu_limit} GPUs (at most {most})",
        )
    return _best(eligible, gpu_limit)


def _best(eligible: Sequence[Candidate], gpu_limit: int) -> ComputeResource:
    """The best of GPU-eligible candidates (non-empty)."""
    if gpu_limit == 0:
        # a GPU site running CPU work may keep GPU work waiting
        plain = [c for c in eligible if c.resource.gpus == 0]
        if any(c.has_room for c in plain):
            eligible = plain
    return min(eligible, key=Candidate.rank).resource


async def place(
    session: AsyncSession,
    plugin_id: int,
    *,
    gpu_limit: int,
    wanted: str | None = None,
    plugin_name: str = "the plugin",
) -> ComputeResource:
    """The compute resource of a new instance of ``plugin_id``.

    Raises:
        BadRequest: as :func:`choose_resource`.
    """
    resources = await plugin_resources(session, plugin_id)
    loads: dict[int, int] = {}
    if len(resources) > 1 and not wanted:
        # loads only rank several candidates (a count over the active instances)
        loads = await _count(
            session,
            [r.id for r in resources if r.id is not None],
            col(PluginInstance.status).in_(QUEUED_OR_RUNNING),
        )
    return choose_resource(
        [Candidate(r, loads.get(r.id or 0, 0)) for r in resources],
        gpu_limit=gpu_limit,
        wanted=wanted,
        plugin_name=plugin_name,
    )


def _holds_slot(status: Any, reserved_at: Any) -> ColumnElement[bool]:
    """SQL condition: the instance (of these columns) occupies a job slot of its resource."""
    return or_(
        status.in_(SUBMITTED),
        and_(status == S.SCHEDULED.value, reserved_at.is_not(None)),
    )


async def held_slots(session: AsyncSession, resource_ids: Sequence[int]) -> dict[int, int]:
    """Job slots in use per resource id (resources with none are absent)."""
    return await _count(
        session,
        resource_ids,
        _holds_slot(col(PluginInstance.status), col(PluginInstance.slot_reserved_at)),
    )


async def _count(
    session: AsyncSession, resource_ids: Sequence[int], condition: ColumnElement[bool]
) -> dict[int, int]:
    if not resource_ids:
        return {}
    rows = await session.exec(
        select(PluginInstance.compute_resource_id, func.count())
        .where(col(PluginInstance.compute_resource_id).in_(resource_ids))
        .where(condition)
        .group_by(col(PluginInstance.compute_resource_id))
    )
    return {rid: n for rid, n in rows.all()}


async def reserve_slot(session: AsyncSession, inst_id: int, resource: ComputeResource) -> bool:
    """Take a job slot of ``resource`` for a ``scheduled`` instance, moving it there.

    Succeeds when the instance is still ``scheduled`` without a slot and the
    resource is unlimited or below ``max_concurrent_jobs``. The caller
    commits. Returns whether the slot was taken.
    """
    assert resource.id is not None
    if session.get_bind().dialect.name != "sqlite":
        # PostgreSQL: a row lock serialises reservations on one resource, so the
        # count below (a fresh snapshot under READ COMMITTED) sees the others'.
        # SQLite runs the single UPDATE under its database write lock instead.
        await session.exec(
            select(ComputeResource.id).where(ComputeResource.id == resource.id).with_for_update()
        )
    result = await session.exec(
        _reserve_statement(resource.max_concurrent_jobs > 0),  # type: ignore[call-overload]
        params={
            "inst_id": inst_id,
            "resource_id": resource.id,
            "max_jobs": resource.max_concurrent_jobs,
            "now": utcnow(),
        },
    )
    return bool(result.rowcount == 1)


@functools.cache
def _reserve_statement(limited: bool) -> Update:
    """The slot reservation, built once per process (bind parameters: inst_id,
    resource_id, max_jobs, now): building it per call, with its aliased
    subquery, cost more CPU than running it."""
    table = PluginInstance.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(table.c.id == bindparam("inst_id"))
        .where(table.c.status == S.SCHEDULED.value)
        .where(table.c.slot_reserved_at.is_(None))
    )
    resource_id = bindparam("resource_id", type_=table.c.compute_resource_id.type)
    if limited:
        other = table.alias("other")
        in_use = (
            select(func.count())
            .select_from(other)
            .where(other.c.compute_resource_id == resource_id)
            .where(_holds_slot(other.c.status, other.c.slot_reserved_at))
            .scalar_subquery()
        )
        stmt = stmt.where(in_use < bindparam("max_jobs", type_=Integer()))
    return stmt.values(
        slot_reserved_at=bindparam("now", type_=table.c.slot_reserved_at.type),
        compute_resource_id=resource_id,
        error_message="",
    )


async def movable_resources(session: AsyncSession, inst: PluginInstance) -> list[ComputeResource]:
    """Other resources a queued, unpinned instance could move to now, best first.

    Those its plugin is registered on, with enough GPUs and a free job slot,
    ranked as at creation (slots in use as the load; GPU-less instances keep
    to GPU-less resources when one has room). Empty for a pinned instance.
    """
    if inst.compute_resource_pinned:
        return []
    resources = [
        r
        for r in await plugin_resources(session, inst.plugin_id)
        if r.id != inst.compute_resource_id and r.gpus >= inst.gpu_limit
    ]
    held = await held_slots(session, [r.id for r in resources if r.id is not None])
    free = [c for r in resources if (c := Candidate(r, held.get(r.id or 0, 0))).has_room]
    if inst.gpu_limit == 0 and any(c.resource.gpus == 0 for c in free):
        free = [c for c in free if c.resource.gpus == 0]
    return [c.resource for c in sorted(free, key=Candidate.rank)]
