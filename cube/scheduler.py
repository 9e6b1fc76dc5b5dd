"""The durable scheduler: drives plugin instances on compute sites.

State lives only in the database. A worker *claims* a batch of instances in
one statement: an UPDATE that writes its id and a lease expiry on rows picked
by ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite, which has one
writer at a time, runs the same UPDATE under its write lock), so any number
of workers on one database never drive one instance twice. A worker renews
its leases while it lives; a lease it finds it no longer holds (taken over,
or the row deleted) stops its task without touching the site, and an
instance it finds ended elsewhere (cancelled through another process) stops
its task and stops the remote job. A crashed or restarted worker's instances
become claimable again when their lease lapses, and its successor picks up
where the row says (``scheduled`` → ask the site whether the job is already
there before submitting, so nothing is submitted twice; ``started`` → watch;
``registeringFiles`` → register again, idempotently).

Each claimed instance gets its own task, so one unreachable site never
starves another instance (ChRIS #558). Status changes arrive by long-polling
the site (``?wait=&status=``): no fixed multi-second poll. Dispatch of new
work is immediate through :meth:`Scheduler.kick`; a slow sweep only catches
leases that lapsed in other processes.

A ``scheduled`` instance is submitted only once it holds one of its compute
resource's ``max_concurrent_jobs`` slots (:mod:`cube.services.placement`);
until then it stays ``scheduled``, says so in ``error_message``, may move to
another eligible resource with room, and sleeps until an instance of this
process ends (or a sweep interval, for ends in other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from chris_sdk.descriptor import ParameterType, PluginType
from sqlalchemy import bindparam, case, insert, update
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.engine import SessionMaker
from cube.db.models import (
    ComputeResource,
    Plugin,
    PluginInstance,
    PluginMeta,
    StoredFile,
    User,
    Workflow,
    WorkflowInstance,
    as_utc,
    utcnow,
)
from cube.errors import ComputeError, OutputMismatch, TsInputMissing
from cube.schema import ErrorCode, InstanceStatus
from cube.services import innetwork, placement, topology, workflows
from cube.services import instances as svc
from cube.settings import CubeSettings
from cube.storage import Storage
from pfcon.client import PfconClient
from pfcon.errors import (
    JobConflict,
    JobNotFound,
    PfconError,
    PfconUnavailable,
    SiteStorageFull,
)
from pfcon.schema import JobDescriptor, JobInfo, JobStatus, JobSubmitted
from pfioh.archive import CompressionPolicy, LinkMeter, aiter_sync, zip_stream
from pfioh.errors import ArchiveError, InsufficientStorage
from pfioh.unzip import ExtractLimits, extract_async

log = logging.getLogger(__name__)
S = InstanceStatus
DRIVEN = [S.SCHEDULED.value, S.STARTED.value, S.REGISTERING_FILES.value]
#: A worker claims these too: ended instances whose job may still be at the site.
CLEANUP = col(PluginInstance.remote_cleanup_pending).is_(True)
#: Instances claimed per statement (a worker claims batch after batch up to
#: ``worker_max_instances``).
CLAIM_BATCH = 100
#: Rows per executemany when registering output files (bounds one statement's memory).
REGISTER_BATCH = 5000


class StatusHub:
    """Wakes long-polling API requests when an instance changes in this process."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()

    async def changed(self) -> None:
        """Tell every waiter that some instance changed."""
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, timeout: float) -> None:
        """Wait for a change or ``timeout`` seconds, whichever comes first."""
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait(), timeout)


class _SlotWaiter:
    """An instance of this process waiting for a job slot of a compute resource."""

    def __init__(self, resource_id: int, *, movable: bool) -> None:
        self.resource_id = resource_id
        #: may take a slot of another resource (the user did not name this one)
        self.movable = movable
        self.woken = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until woken by a freed slot, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), timeout)


class _Retry(Exception):
    """A temporary failure: try the same step again after a backoff."""


class _Ended(Exception):
    """A step failed for good: the instance is cancelled with this message."""


def job_id(settings: CubeSettings, inst_id: int) -> str:
    """The compute job id of an instance (``chris-jid-<id>``)."""
    return f"{settings.job_id_prefix}{inst_id}"


def _failure_message(summary: dict[str, Any]) -> str:
    """A failed instance's message, with the site's reason when it gave one
    ("out of memory (OOMKilled)", "exited with code 3")."""
    returned = (summary.get("compute") or {}).get("return") or {}
    reason = str(returned.get("message") or "")
    return f"the plugin failed: {reason}" if reason else "the plugin exited with an error"


class Scheduler:
    """Claims instances from the database and drives each to a terminal status."""

    def __init__(
        self,
        settings: CubeSettings,
        sessions: SessionMaker,
        storage: Storage,
        hub: StatusHub,
        client_factory: Callable[[ComputeResource], PfconClient] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.hub = hub
        self._client_factory = client_factory or self._default_client
        self._clients: dict[tuple[int, str, str], PfconClient] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Instances whose lease this worker lost: their tasks stop without
        #: touching the site or the row (another worker drives them now).
        self._abandoned: set[int] = set()
        #: Instances whose tasks only delete an ended job at its site.
        self._cleaning: set[int] = set()
        #: Instances that ended here and woke a waiter for their job slot then.
        self._slot_passed_on: set[int] = set()
        self._kick = asyncio.Event()
        #: Instances of this process waiting for a job slot, per compute
        #: resource id, first come first served (see :meth:`_room_freed`).
        self._slot_queues: dict[int, list[_SlotWaiter]] = {}
        #: per compute resource id, the loop time when its waiters (of this
        #: process) may next ask the database for a slot (see _wait_for_slot)
        self._next_probe: dict[int, float] = {}
        self._stopping = False
        self._policy = CompressionPolicy(
            level=settings.transfer_compression_level,
            adaptive=settings.transfer_adaptive_compression,
        )
        self._limits = ExtractLimits(
            max_bytes=settings.transfer_max_output_bytes,
            max_ratio=settings.transfer_max_ratio,
            reserve_bytes=settings.storage_reserve_bytes,
        )
        #: in-network or zip mode of each compute resource, confirmed with its site
        self._modes = innetwork.SiteModes(sessions)
        #: what a task reads at each step, built once (building a statement
        #: costs more than running it)
        self._drive_read = (
            select(PluginInstance, ComputeResource, PluginMeta.type)
            .join(
                ComputeResource,
                col(ComputeResource.id) == col(PluginInstance.compute_resource_id),
            )
            .join(Plugin, col(Plugin.id) == col(PluginInstance.plugin_id))
            .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
            .where(col(PluginInstance.id) == bindparam("id"))
        )
        #: what a job is built from: the plugin, the owner, the workflow (if any)
        self._job_read = (
            select(  # type: ignore[call-overload]
                Plugin, PluginMeta, User, WorkflowInstance.workflow_id, Workflow.pipeline_id
            )
            .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
            .join(User, col(User.id) == bindparam("owner"))
            .outerjoin(WorkflowInstance, col(WorkflowInstance.plugin_inst_id) == bindparam("inst"))
            .outerjoin(Workflow, col(Workflow.id) == col(WorkflowInstance.workflow_id))
            .where(col(Plugin.id) == bindparam("plugin"))
        )

    # -- lifecycle ---------------------------------------------------------

    def kick(self) -> None:
        """Look for claimable work now (new instances, children made ready)."""
        self._kick.set()

    def stop_instance(self, inst_ids: list[int]) -> None:
        """Interrupt the tasks driving these (cancelled) instances at once.

        A task already deleting its ended job at the site is left to finish:
        interrupted, it would delete the job a second time on its way out.
        """
        for inst_id in inst_ids:
            task = self._tasks.get(inst_id)
            if task is not None and not task.done() and inst_id not in self._cleaning:
                task.cancel(msg="instance cancelled")

    async def run(self) -> None:
        """Claim and drive instances until cancelled."""
        renewer = asyncio.create_task(self._renew_leases())
        loop = asyncio.get_running_loop()
        settled_at = -math.inf
        try:
            while not self._stopping:
                self._kick.clear()
                try:
                    # the safety net runs on the sweep, not at every kick (each
                    # new instance kicks): it scans all waiting instances
                    if loop.time() - settled_at >= self.settings.sweep_seconds:
                        settled_at = loop.time()
                        await self._settle_waiting()
                    await self._claim_all()
                except Exception:
                    log.exception("claiming work failed; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.settings.sweep_seconds)
        finally:
            self._stopping = True
            renewer.cancel()
            # the ids before the tasks end: each task takes itself out of _tasks
            held, tasks = list(self._tasks), list(self._tasks.values())
            for t in tasks:
                t.cancel(msg="scheduler stopping")
            await asyncio.gather(renewer, *tasks, return_exceptions=True)
            # let go at once: another worker takes them over without waiting
            # for the leases to lapse (the abandoned ones are not ours anymore;
            # _release only touches rows this worker still owns)
            await self._release(held)
            await self.close()

    async def close(self) -> None:
        """Close the compute sites' clients (also those :meth:`delete_jobs` opened
        in an API process that runs no scheduler)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def _claim_all(self) -> None:
        """Claim what this worker has room for, batch by batch, and drive it."""
        while not self._stopping:
            room = self.settings.worker_max_instances - len(self._tasks)
            if room <= 0:
                return
            ids = await self.claim(min(room, CLAIM_BATCH))
            for inst_id in ids:
                self._tasks[inst_id] = asyncio.create_task(self._drive(inst_id))
            if len(ids) < min(room, CLAIM_BATCH):
                return

    async def _settle_waiting(self) -> None:
        """Schedule or cancel waiting instances whose parents all ended.

        A safety net only: creating an instance and ending a parent lock the
        rows involved (:func:`cube.services.instances.create_instance`,
        :func:`~cube.services.instances.settle_waiting`), so no child is left
        waiting in normal operation; this one query finds any that were
        (a database written by a version without those locks)."""
        async with self.sessions() as s:
            scheduled: list[int] = []
            for inst_id in await topology.waiting_with_parents_done(s):
                scheduled += await svc.settle_waiting(s, inst_id)
            await s.commit()
        if scheduled:
            self.kick()

    async def claim(self, limit: int) -> list[int]:
        """Lease up to ``limit`` claimable instances to this worker; returns their ids.

        Claimable: driven by the scheduler (``scheduled``, ``started``,
        ``registeringFiles``, or ended with its job still to delete at the
        site) and not leased, or leased with an expired
        lease, or leased by this worker id without a task here (a restart
        under the same id). One statement: concurrent workers skip the rows
        another is claiming instead of waiting for them, and never get the
        same row.
        """
        now = utcnow()
        mine = list(self._tasks)
        # never one this worker drives already (its lease may have lapsed
        # while the event loop was busy: the renewer will extend it)
        claimable = col(PluginInstance.id).not_in(mine) & or_(
            col(PluginInstance.lease_owner).is_(None),
            col(PluginInstance.lease_expires) < now,
            col(PluginInstance.lease_owner) == self.settings.worker_id,
        )
        work = or_(col(PluginInstance.status).in_(DRIVEN), CLEANUP)
        picked = (
            select(PluginInstance.id)
            .where(work)
            .where(claimable)
            .order_by(col(PluginInstance.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(PluginInstance)
            .where(col(PluginInstance.id).in_(picked.scalar_subquery()))
            .where(work)
            .where(claimable)
            .values(
                lease_owner=self.settings.worker_id,
                lease_expires=now + timedelta(seconds=self.settings.lease_seconds),
            )
            .returning(col(PluginInstance.id))
        )
        async with self.sessions() as s:
            ids = sorted((await s.exec(stmt)).scalars().all())  # type: ignore[call-overload]
            await s.commit()
        return ids

    async def _renew_leases(self) -> None:
        """Extend this worker's leases; stop tasks whose lease or instance is gone.

        When renewals keep failing (database unreachable) for most of a
        lease, every task stops before the lease can lapse, so a worker cut
        off from the database never drives an instance another took over.
        """
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self.renew()
                last_ok = asyncio.get_running_loop().time()
            except Exception:
                log.exception("renewing leases failed")
                if asyncio.get_running_loop().time() - last_ok > self.settings.lease_seconds * 0.8:
                    log.error("leases could not be renewed in time: letting go of all instances")
                    self._abandon(list(self._tasks))

    async def renew(self) -> None:
        """Renew the leases of this worker's tasks once (see :meth:`_renew_leases`)."""
        ids = [i for i, t in self._tasks.items() if not t.done()]
        if not ids:
            return
        async with self.sessions() as s:
            rows = (
                await s.exec(
                    update(PluginInstance)  # type: ignore[call-overload]
                    .where(col(PluginInstance.id).in_(ids))
                    .where(col(PluginInstance.lease_owner) == self.settings.worker_id)
                    .values(lease_expires=utcnow() + timedelta(seconds=self.settings.lease_seconds))
                    .returning(col(PluginInstance.id), col(PluginInstance.status))
                )
            ).all()
            await s.commit()
        held = {inst_id: status for inst_id, status in rows}
        lost = [i for i in ids if i not in held]
        if lost:
            log.warning("lost the lease of instances %s: another worker has them", lost)
            self._abandon(lost)
        # ended by another process (e.g. cancelled through another API process)
        self.stop_instance([i for i, status in held.items() if status not in DRIVEN])

    def _abandon(self, ids: list[int]) -> None:
        """Stop driving these instances without touching their rows or sites."""
        for inst_id in ids:
            task = self._tasks.get(inst_id)
            if task is not None and not task.done():
                self._abandoned.add(inst_id)
                task.cancel(msg="lease lost")

    async def _release(self, ids: list[int]) -> None:
        if not ids:
            return
        with contextlib.suppress(Exception):
            async with self.sessions() as s:
                await s.exec(
                    update(PluginInstance)  # type: ignore[call-overload]
                    .where(col(PluginInstance.id).in_(ids))
                    .where(col(PluginInstance.lease_owner) == self.settings.worker_id)
                    .values(lease_owner=None, lease_expires=None)
                )
                await s.commit()

    # -- compute site clients ----------------------------------------------

    def _default_client(self, resource: ComputeResource) -> PfconClient:
        return PfconClient(
            resource.compute_url,
            username=resource.compute_user,
            password=resource.compute_password,
            auth_url=resource.compute_auth_url,
        )

    def _client(self, resource: ComputeResource) -> PfconClient:
        assert resource.id is not None
        key = (resource.id, resource.compute_url, resource.compute_user)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._client_factory(resource)
        return client

    # -- driving one instance ----------------------------------------------

    async def _drive(self, inst_id: int) -> None:
        delay = self.settings.retry_min_seconds
        resource_id: int | None = None
        released = False  # the lease let go of already (with the cleanup's update)
        try:
            while True:
                async with self.sessions() as s:
                    # the instance with its resource: one query per step, not two
                    found = (await s.exec(self._drive_read, params={"id": inst_id})).first()
                    if found is None:
                        return  # its feed was deleted
                    inst, resource, ptype = found
                status = S(inst.status)
                resource_id = resource.id
                try:
                    if status is S.SCHEDULED:
                        # a slot taken afresh here means no job was ever submitted
                        # (a submission holds the slot until the instance ends)
                        fresh = inst.slot_reserved_at is None
                        admitted = await self._wait_for_slot(inst, resource)
                        await self._submit(inst, admitted, fresh=fresh)
                    elif status is S.STARTED:
                        await self._watch(inst, resource)
                    elif status is S.REGISTERING_FILES:
                        await self._register(inst, resource, PluginType(ptype))
                    else:
                        self._cleaning.add(inst_id)
                        released = await self._cleanup(inst, resource)
                        return
                    delay = self.settings.retry_min_seconds
                except _Retry as exc:
                    log.warning("instance %s: %s; retrying in %.1fs", inst_id, exc, delay)
                    await self._note(inst_id, f"{exc}; retrying in {delay:.1f}s")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.retry_max_seconds)
        except asyncio.CancelledError:
            if not self._stopping and inst_id not in self._abandoned:
                # cancelled by the user: stop the remote job now
                await self._cleanup_after_cancel(inst_id)
            raise
        except Exception as exc:
            log.exception("instance %s: scheduler task crashed", inst_id)
            with contextlib.suppress(Exception):
                await self._end(inst_id, S.CANCELLED, ErrorCode.CRASH, f"scheduler error: {exc}")
        finally:
            self._tasks.pop(inst_id, None)
            self._cleaning.discard(inst_id)
            passed_on = inst_id in self._slot_passed_on
            self._slot_passed_on.discard(inst_id)
            if inst_id in self._abandoned:
                self._abandoned.discard(inst_id)
            elif not self._stopping:
                if not released:
                    await self._release([inst_id])
                if not passed_on:
                    self._room_freed(resource_id)  # e.g. cancelled by the user: its slot is free

    async def _note(self, inst_id: int, message: str) -> None:
        """Show why an active instance is not progressing (its status is unchanged)."""
        async with self.sessions() as s:
            await s.exec(
                update(PluginInstance)  # type: ignore[call-overload]
                .where(col(PluginInstance.id) == inst_id)
                .where(col(PluginInstance.status).in_(DRIVEN))
                .values(error_message=message[:1000])
            )
            await s.commit()
        await self.hub.changed()

    async def _cleanup_after_cancel(self, inst_id: int) -> None:
        with contextlib.suppress(Exception):
            async with self.sessions() as s:
                inst = await s.get(PluginInstance, inst_id)
                resource = await s.get(ComputeResource, inst.compute_resource_id) if inst else None
            if inst is not None and resource is not None and inst.remote_cleanup_pending:
                if await self._cleanup_remote(inst, resource):
                    await self._cleanup_done(inst_id)

    async def _end(
        self, inst_id: int, status: InstanceStatus, code: ErrorCode | None, message: str
    ) -> None:
        """Move an active instance to a terminal status and settle its children."""
        async with self.sessions() as s:
            scheduled = await svc.finish(
                s,
                inst_id,
                [x for x in S if x.is_active],
                status,
                note=message,
                error_code=code.value if code else "",
                error_message=message,
            )
            await s.commit()
            row = await s.get(PluginInstance, inst_id)
            resource_id = row.compute_resource_id if row is not None else None
        await self._changed(inst_id, scheduled, resource_id)

    async def _changed(self, inst_id: int, scheduled: list[int], resource_id: int | None) -> None:
        """After an instance ended: wake long-polls, instances waiting for a
        job slot, and dispatch children that just became ready."""
        await self.hub.changed()
        self._room_freed(resource_id)
        # its task need not free the slot again on its way out (a second
        # waiter woken for one slot only finds the resource full)
        self._slot_passed_on.add(inst_id)
        if scheduled:
            self.kick()

    # -- job slots (placement) -----------------------------------------------

    async def _admit(
        self, inst: PluginInstance, resource: ComputeResource
    ) -> ComputeResource | None:
        """The resource to submit ``inst`` to, with a job slot held for it there.

        Tries the instance's resource, then (unless the user named it) the
        other eligible resources with room, moving the instance to the first
        that grants a slot. None when all are full: the instance waits,
        noted in ``error_message``.
        """
        assert inst.id is not None
        if inst.slot_reserved_at is not None:
            return resource  # held before a restart; the job may be at the site already
        async with self.sessions() as s:
            taken = await placement.reserve_slot(s, inst.id, resource)
            await s.commit()
        if taken:
            return resource
        async with self.sessions() as s:
            others = await placement.movable_resources(s, inst)
        for other in others:
            # one transaction per try: never hold two resources' locks at once
            async with self.sessions() as s:
                taken = await placement.reserve_slot(s, inst.id, other)
                await s.commit()
            if taken:
                log.info("instance %s moved from %s to %s", inst.id, resource.name, other.name)
                return other
        await self._note_waiting(inst, resource)
        return None

    async def _note_waiting(self, inst: PluginInstance, resource: ComputeResource) -> None:
        """Say in the instance's ``error_message`` that it waits for a job slot."""
        assert inst.id is not None
        message = (
            f"waiting for room on {resource.name} "
            f"(at most {resource.max_concurrent_jobs} jobs at once)"
        )
        if inst.error_message != message:  # each note wakes every long-poll
            await self._note(inst.id, message)
            inst.error_message = message  # (a detached copy: for the next try's check)

    async def _wait_for_slot(
        self, inst: PluginInstance, resource: ComputeResource
    ) -> ComputeResource:
        """Hold a job slot for a ``scheduled`` instance: the resource to submit it to.

        The instance waits in this process's queue of its resource, first come
        first served. A slot freed here wakes one waiter (:meth:`_room_freed`),
        which asks the database. Otherwise the database is asked once per sweep
        interval *per resource*, by whichever waiter's turn it is, not once per
        waiter: a thousand queued instances each asking every sweep would keep
        the database busy with hundreds of futile reservations a second. That
        one probe notices slots freed by other processes; when it finds room it
        wakes the next waiter, so a burst of room fills at once.
        """
        assert resource.id is not None
        rid, sweep = resource.id, self.settings.sweep_seconds
        loop = asyncio.get_running_loop()
        # in the queue before asking: a slot freed meanwhile wakes it
        waiter = self._queue_for_slot(resource, inst.compute_resource_pinned)
        # each asks once on arrival, unless one that could take any slot this
        # one could is waiting already: the resource was full at its last ask,
        # and a slot freed since would have gone to it first (a slot held
        # before a restart is this instance's own: it never waits)
        first = inst.slot_reserved_at is not None or not self._waiting_ahead(waiter)
        try:
            if not first:
                await self._note_waiting(inst, resource)
            while True:
                now = loop.time()
                woken = waiter.woken.is_set()
                if first or woken or now >= self._next_probe.get(rid, 0.0):
                    waiter.woken.clear()
                    if not (first or woken):
                        # this waiter probes for all: the others wait for the next turn
                        self._next_probe[rid] = now + sweep
                    admitted = await self._admit(inst, resource)
                    if admitted is not None:
                        if not woken:
                            # found room by asking: there may be more, for those
                            # behind that did not ask (the next one asks now)
                            if not first:
                                self._next_probe.pop(rid, None)
                            self._room_freed(rid)
                        return admitted
                    self._next_probe[rid] = loop.time() + sweep
                    first = False
                await waiter.wait(max(self._next_probe.get(rid, 0.0) - loop.time(), 0.01))
        finally:
            self._leave_slot_queue(waiter)
            if waiter.woken.is_set():
                self._room_freed(rid)  # woken but gone (cancelled): pass it on

    def _queue_for_slot(self, resource: ComputeResource, pinned: bool) -> _SlotWaiter:
        assert resource.id is not None
        waiter = _SlotWaiter(resource.id, movable=not pinned)
        self._slot_queues.setdefault(resource.id, []).append(waiter)
        return waiter

    def _waiting_ahead(self, waiter: _SlotWaiter) -> bool:
        """Whether an earlier waiter of the same resource, not woken, would get
        any slot ``waiter`` could: a pinned one waits behind anyone, a movable
        one only behind another movable one (which tried the other resources)."""
        for other in self._slot_queues.get(waiter.resource_id, []):
            if other is waiter:
                return False
            if not other.woken.is_set() and (other.movable or not waiter.movable):
                return True
        return False

    def _leave_slot_queue(self, waiter: _SlotWaiter) -> None:
        queue = self._slot_queues.get(waiter.resource_id, [])
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            self._slot_queues.pop(waiter.resource_id, None)

    def _room_freed(self, resource_id: int | None) -> None:
        """A job slot of ``resource_id`` may be free: wake one instance waiting for it.

        The first waiting for that resource, else the first that may move
        to another resource. One per freed slot, not all: every waiter woken
        asks the database again, and waking them all at each end made the
        scheduler's work grow with the square of the queue. A waiter woken
        that got no slot simply waits again; ends in other processes are not
        signalled here, the sweep interval bounds how long they go unnoticed.
        """
        queues = [self._slot_queues.get(resource_id or -1, [])]
        queues += [q for rid, q in self._slot_queues.items() if rid != resource_id]
        for n, queue in enumerate(queues):
            for waiter in queue:
                if not waiter.woken.is_set() and (n == 0 or waiter.movable):
                    waiter.woken.set()
                    return

    async def _submit(
        self, inst: PluginInstance, resource: ComputeResource, *, fresh: bool
    ) -> None:
        """Submit the job, unless the site has it already.

        A slot held before this step (``fresh`` false: a restart, or a retry
        after a submission whose answer was lost) may have been used by a
        submission whose outcome was not recorded: the site is asked first.
        A slot taken afresh needs no question (one round trip through pfcon
        and pman less per instance); should the site have the job anyway (a
        database from before job slots), its refusal leads to the question.
        """
        assert inst.id is not None
        jid = job_id(self.settings, inst.id)
        client = self._client(resource)
        try:
            info = None if fresh else await self._submitted_before(client, jid, resource)
            if info is None:
                try:
                    info = await self._send(inst, client, resource)
                except JobConflict as exc:
                    info = await self._submitted_before(client, jid, resource)
                    if info is None:  # refused as a duplicate, yet unknown there
                        raise _Retry(f"{resource.name} refused {jid} as a duplicate") from exc
        except _Ended as ended:
            await self._end(inst.id, S.CANCELLED, ErrorCode.SUBMIT, str(ended))
            return
        await self._record_submission(inst, info)

    async def _submitted_before(
        self, client: PfconClient, jid: str, resource: ComputeResource
    ) -> JobInfo | None:
        """The job at the site, or None when the site has no such job.

        Raises _Retry (site unreachable) or _Ended (the site failed the question).
        """
        try:
            return await client.status(jid)
        except JobNotFound:
            return None
        except PfconUnavailable as exc:
            raise _Retry(f"compute site {resource.name} unreachable: {exc}") from exc
        except PfconError as exc:
            raise _Ended(f"status check failed: {exc}") from exc

    async def _send(
        self, inst: PluginInstance, client: PfconClient, resource: ComputeResource
    ) -> JobInfo:
        """Submit the job with its input; the site's word on it.

        Raises _Retry (unreachable, out of space), JobConflict (the site has
        a job of this id), or _Ended (refused).
        """
        try:
            if await self._modes.innetwork(resource, client):
                submitted = await self._submit_innetwork(inst, client)
            else:
                descriptor, entries = await self._job_of(inst)
                meter = LinkMeter()
                stream = zip_stream(entries, policy=self._policy, meter=meter)
                body = aiter_sync(stream, meter=meter)
                submitted = await client.submit(descriptor, body)
        except PfconUnavailable as exc:
            raise _Retry(f"compute site {resource.name} unreachable: {exc}") from exc
        except SiteStorageFull as exc:
            raise _Retry(f"compute site {resource.name} is out of space: {exc}") from exc
        except JobConflict:
            raise
        except (PfconError, ComputeError) as exc:
            raise _Ended(f"submit failed: {exc}") from exc
        return submitted.compute

    async def _record_submission(self, inst: PluginInstance, info: JobInfo) -> None:
        """``scheduled`` → ``started``, with what the site said of the job."""
        assert inst.id is not None
        summary = dict(inst.summary)
        summary["pushPath"] = {"status": True}
        summary["compute"] = {
            "submit": {"status": True},
            "return": summary.get("compute", {}).get("return", {}),
        }
        async with self.sessions() as s:
            await svc.transition(
                s,
                inst.id,
                [S.SCHEDULED],
                S.STARTED,
                job_status=info.status.value,
                summary=summary,
                error_message="",
                # the same instant as ``started``, so start_date is never before it
                running=_running_since(info) is not None,
            )
            await s.commit()
        await self.hub.changed()

    async def _submit_innetwork(self, inst: PluginInstance, client: PfconClient) -> JobSubmitted:
        """Submit to an in-network site: storage paths instead of a zip (no data sent)."""
        descriptor, _entries = await self._job_of(inst)  # also checks the owner's path access
        async with self.sessions() as s:
            dirs = await innetwork.job_dirs(s, inst)
        return await client.submit_innetwork(descriptor, dirs)

    async def _watch(self, inst: PluginInstance, resource: ComputeResource) -> None:
        assert inst.id is not None
        jid = job_id(self.settings, inst.id)
        known = JobStatus(inst.job_status) if inst.job_status in set(JobStatus) else None
        if resource.max_job_exec_seconds > 0 and inst.start_date is not None:
            started = as_utc(inst.start_date)
            assert started is not None
            if (utcnow() - started).total_seconds() > resource.max_job_exec_seconds:
                await self._end(
                    inst.id,
                    S.CANCELLED,
                    ErrorCode.MAX_EXEC_TIME,
                    f"exceeded {resource.max_job_exec_seconds}s on {resource.name}",
                )
                return
        wait = self.settings.status_wait_seconds
        if resource.max_job_exec_seconds > 0:
            wait = min(wait, max(1.0, resource.max_job_exec_seconds / 2))
        if known is not None and known.is_terminal:
            # the job ended before its submission was answered: a long-poll for
            # a change from an end would only return after ``wait`` seconds
            wait = 0
        try:
            info = await self._client(resource).status(jid, wait=wait, known=known)
        except JobNotFound:
            await self._end(
                inst.id, S.CANCELLED, ErrorCode.UNDEFINED_STATUS, "job vanished at the site"
            )
            return
        except PfconUnavailable as exc:
            raise _Retry(f"status of {jid} unavailable: {exc}") from exc
        except PfconError as exc:
            raise _Retry(f"status of {jid} failed: {exc}") from exc
        summary = self._summary_with(inst.summary, info)
        running = _running_since(info) if inst.start_date is None else None
        dates: dict[str, Any] = {"start_date": running} if running else {}
        async with self.sessions() as s:
            if info.status is JobStatus.UNDEFINED:
                pass
            elif info.status.is_terminal:
                await svc.transition(
                    s,
                    inst.id,
                    [S.STARTED],
                    S.REGISTERING_FILES,
                    job_status=info.status.value,
                    summary=summary,
                    error_message="",
                    **dates,
                )
            else:
                await s.exec(
                    update(PluginInstance)  # type: ignore[call-overload]
                    .where(col(PluginInstance.id) == inst.id)
                    .where(col(PluginInstance.status) == S.STARTED.value)
                    .values(
                        job_status=info.status.value, summary=summary, error_message="", **dates
                    )
                )
            await s.commit()
        if info.status is JobStatus.UNDEFINED:
            await self._end(
                inst.id, S.CANCELLED, ErrorCode.UNDEFINED_STATUS, info.message or "undefined status"
            )
        elif info.status.value != inst.job_status or dates:
            await self.hub.changed()

    def _summary_with(self, summary: dict[str, Any], info: JobInfo) -> dict[str, Any]:
        out = dict(summary)
        compute = dict(out.get("compute", {}))
        compute["return"] = {
            "status": info.status.is_terminal or info.status is JobStatus.UNDEFINED,
            "job_status": info.status.value,
            "job_logs": (info.logs or "")[-self.settings.job_logs_tail :],
            "message": info.message,
            "exit_code": info.exit_code,
        }
        out["compute"] = compute
        return out

    async def _register(
        self, inst: PluginInstance, resource: ComputeResource, ptype: PluginType
    ) -> None:
        """Unpack the output zip while it arrives, then register its files in one bulk insert.

        The archive is checked member by member and against its SHA-256
        manifest into a staging directory, which replaces the instance's
        output folder only once complete. A cut transfer, or storage too full
        to take it, is retried with backoff.
        """
        if resource.compute_innetwork:
            await self._register_innetwork(inst, resource, ptype)
            return
        assert inst.id is not None
        jid = job_id(self.settings, inst.id)
        staged = self.storage.staging_dir()
        try:
            report = await extract_async(
                self._client(resource).iter_output(jid),
                staged,
                limits=self._limits,
                rename=_sanitise_path,
            )
        except PfconUnavailable as exc:
            raise _Retry(f"output of {jid} unavailable: {exc}") from exc
        except InsufficientStorage as exc:
            raise _Retry(f"no room for the output of {jid}: {exc}") from exc
        except ArchiveError as exc:
            await self._end(
                inst.id, S.FINISHED_WITH_ERROR, ErrorCode.BAD_ZIP, f"bad output archive: {exc}"
            )
            return
        except PfconError as exc:
            await self._end(
                inst.id,
                S.FINISHED_WITH_ERROR,
                ErrorCode.FETCH_OUTPUT,
                f"fetching output failed: {exc}",
            )
            return
        await self.storage.install_tree(staged, inst.output_path)
        files = [
            (f"{inst.output_path}/{name}", size)
            for name, size in zip(report.files, report.sizes, strict=True)
        ]
        await self._record_files(inst, ptype, files)

    async def _register_innetwork(
        self, inst: PluginInstance, resource: ComputeResource, ptype: PluginType
    ) -> None:
        """Register the output an in-network job wrote into CUBE's storage (no transfer).

        Output the site did not list as safe, or that does not match CUBE's
        storage, is deleted, as a refused output zip leaves nothing.
        """
        assert inst.id is not None
        jid = job_id(self.settings, inst.id)
        try:
            listing = await self._client(resource).output_listing(
                jid, job_output_path=inst.output_path
            )
        except PfconUnavailable as exc:
            raise _Retry(f"output listing of {jid} unavailable: {exc}") from exc
        except PfconError as exc:
            await self.storage.delete_tree(inst.output_path)
            await self._end(
                inst.id,
                S.FINISHED_WITH_ERROR,
                ErrorCode.FETCH_OUTPUT,
                f"listing output failed: {exc}",
            )
            return
        try:
            files = await asyncio.to_thread(
                innetwork.stored_outputs, self.storage, inst.output_path, listing
            )
        except OutputMismatch as exc:
            await self.storage.delete_tree(inst.output_path)
            await self._end(inst.id, S.FINISHED_WITH_ERROR, ErrorCode(exc.error_code), str(exc))
            return
        await self._record_files(inst, ptype, files)

    async def _record_files(
        self, inst: PluginInstance, ptype: PluginType, files: list[tuple[str, int]]
    ) -> None:
        """Register ``(fname, size)`` files of an instance (of a ``ptype``
        plugin) in one bulk insert and end it."""
        assert inst.id is not None
        succeeded = inst.job_status == JobStatus.FINISHED_SUCCESSFULLY.value
        final = S.FINISHED_SUCCESSFULLY if succeeded else S.FINISHED_WITH_ERROR
        if succeeded:
            # ts hook: CUBE joins the parents' outputs into a ts instance's (as ChRIS)
            try:
                async with self.sessions() as s:
                    joined = await topology.join_outputs(s, self.storage, inst, ptype)
            except TsInputMissing as exc:
                await self._end(
                    inst.id, S.FINISHED_WITH_ERROR, ErrorCode.TS_INPUT_MISSING, str(exc)
                )
                return
            files = list(dict([*files, *joined]).items())  # a joined file replaces its namesake
        summary = dict(inst.summary)
        summary["pullPath"] = {"status": True}
        async with self.sessions() as s:
            message = "" if succeeded else _failure_message(inst.summary)
            # the end first: only the worker that ends the instance registers
            # its files (after a lease was taken over, two may get here), so
            # none are there to replace, and a cancelled one gets none
            ended = await svc.transition(
                s,
                inst.id,
                [S.REGISTERING_FILES],
                final,
                size=sum(size for _, size in files),
                summary=summary,
                error_message=message,
            )
            scheduled: list[int] = []
            if ended:
                await register_files(s, inst.id, inst.owner_id, files, replace=False)
                scheduled = await svc.resolve_children(s, inst.id)
            await s.commit()
        await self._changed(inst.id, scheduled, inst.compute_resource_id)

    async def _cleanup(self, inst: PluginInstance, resource: ComputeResource) -> bool:
        """Delete an ended instance's job at its site, retrying while that fails.

        Never changes the instance's outcome. Gives up (with an error in the
        log) ``cleanup_give_up_seconds`` after the instance ended, as ChRIS
        retries its CODE12 deletions for two days. Returns whether it
        recorded the cleanup, which also let go of the instance's lease.
        """
        assert inst.id is not None
        if not inst.remote_cleanup_pending:
            return False
        if not await self._cleanup_remote(inst, resource):
            ended = as_utc(inst.end_date) or utcnow()
            if (utcnow() - ended).total_seconds() < self.settings.cleanup_give_up_seconds:
                raise _Retry(f"deleting job {job_id(self.settings, inst.id)} at the site failed")
            log.error(
                "giving up deleting job %s at %s: its data may remain there",
                job_id(self.settings, inst.id),
                resource.name,
            )
        await self._cleanup_done(inst.id)
        return True

    async def _cleanup_done(self, inst_id: int) -> None:
        """Record that the job is gone from its site, and let go of the instance
        (nothing is left to drive: one update instead of two)."""
        mine = col(PluginInstance.lease_owner) == self.settings.worker_id
        async with self.sessions() as s:
            await s.exec(
                update(PluginInstance)  # type: ignore[call-overload]
                .where(col(PluginInstance.id) == inst_id)
                .values(
                    remote_cleanup_pending=False,
                    lease_owner=case((mine, None), else_=col(PluginInstance.lease_owner)),
                    lease_expires=case((mine, None), else_=col(PluginInstance.lease_expires)),
                )
            )
            await s.commit()

    async def _cleanup_remote(self, inst: PluginInstance, resource: ComputeResource) -> bool:
        """Delete the job's data and container at the site; whether that worked."""
        assert inst.id is not None
        try:
            await self._client(resource).delete(job_id(self.settings, inst.id))
        except JobNotFound:
            pass
        except Exception as exc:
            log.warning("cleanup of instance %s at %s failed: %s", inst.id, resource.name, exc)
            return False
        if resource.compute_innetwork and inst.status == S.CANCELLED.value:
            # the stopped job wrote into CUBE's storage; a cancelled instance
            # registers nothing, so what it left there goes too (as no zip would arrive)
            await self.storage.delete_tree(inst.output_path)
        return True

    async def delete_jobs(self, jobs: list[tuple[ComputeResource, int]]) -> list[int]:
        """Delete the jobs of these instances at their sites now (a feed is
        being deleted); returns the ids whose deletion failed.

        At most 8 at once, each bounded by ``status_wait_seconds``, so an
        unreachable site delays the caller by that much, not more.
        """
        gate = asyncio.Semaphore(8)

        async def one(resource: ComputeResource, inst_id: int) -> int | None:
            async with gate:
                try:
                    await asyncio.wait_for(
                        self._client(resource).delete(job_id(self.settings, inst_id)),
                        self.settings.status_wait_seconds,
                    )
                except JobNotFound:
                    return None
                except Exception as exc:
                    log.warning("deleting job of %s at %s: %s", inst_id, resource.name, exc)
                    return inst_id
                return None

        failed = await asyncio.gather(*(one(r, i) for r, i in jobs))
        return [i for i in failed if i is not None]

    # -- building the job ----------------------------------------------------

    async def _job_of(self, inst: PluginInstance) -> tuple[JobDescriptor, list[tuple[Path, str]]]:
        """The job of an instance and its input files ``(path here, path in the job)``.

        Raises _Ended when its plugin or owner is gone.
        """
        assert inst.id is not None
        async with self.sessions() as s:
            found = (
                await s.exec(
                    self._job_read,
                    params={"plugin": inst.plugin_id, "owner": inst.owner_id, "inst": inst.id},
                )
            ).first()
            if found is None:
                raise _Ended(f"plugin {inst.plugin_id} or user {inst.owner_id} no longer exists")
            plugin, meta, owner, workflow_id, pipeline_id = found
            values = await svc.parameter_values(s, inst.id)
            entries: dict[str, Path] = {}
            args: list[str] = []
            path_flags: list[str] = []
            for value, param in values:
                ptype = ParameterType(param.type)
                if ptype in (ParameterType.PATH, ParameterType.UNEXTPATH):
                    path_flags.append(param.flag)
                    for one in str(value.value).split(","):
                        if one.strip():
                            await self._add_path_entries(s, owner, one, entries)
                if param.action == "store":
                    args += [param.flag, str(value.value)]
                elif (param.action == "store_true" and value.value is True) or (
                    param.action == "store_false" and value.value is False
                ):
                    args.append(param.flag)
            env = [
                f"CHRIS_JID={job_id(self.settings, inst.id)}",
                f"CHRIS_PLG_INST_ID={inst.id}",
                f"CHRIS_USER_USERNAME={owner.username}",
                f"CHRIS_USER_EMAIL={owner.email}",
            ]
            if inst.previous_id is not None:
                env += [
                    f"CHRIS_PREV_PLG_INST_ID={inst.previous_id}",
                    f"CHRIS_PREV_JID={job_id(self.settings, inst.previous_id)}",
                ]
            if workflow_id is not None:
                env += await workflows.workflow_job_env(s, workflow_id, pipeline_id)
            # ts hook: what the job gets from its parents (ds: the previous output)
            for fname, arc in await topology.instance_inputs(s, inst):
                entries.setdefault(arc, self.storage.local_path(fname))
        entrypoint = [plugin.execshell] if plugin.execshell else []
        entrypoint.append(
            f"{plugin.selfpath.rstrip('/')}/{plugin.selfexec}"
            if plugin.selfpath
            else plugin.selfexec
        )
        descriptor = JobDescriptor(
            jid=job_id(self.settings, inst.id),
            args=args,
            args_path_flags=path_flags,
            auid=owner.username,
            number_of_workers=inst.number_of_workers,
            cpu_limit=inst.cpu_limit,
            memory_limit=inst.memory_limit,
            gpu_limit=inst.gpu_limit,
            image=plugin.dock_image,
            entrypoint=entrypoint,
            type=PluginType(meta.type),
            env=env,
        )
        return descriptor, [(path, arc) for arc, path in entries.items()]

    async def _add_path_entries(
        self, s: Any, owner: User, path: str, entries: dict[str, Path]
    ) -> None:
        files = await svc.check_path_access(s, owner, path)
        root = path.strip().strip("/")
        for f in files:
            arc = (
                f.fname.rsplit("/", 1)[-1] if f.fname == root else f.fname.removeprefix(root + "/")
            )
            entries.setdefault(arc, self.storage.local_path(f.fname))


async def register_files(
    session: AsyncSession,
    inst_id: int,
    owner_id: int,
    files: list[tuple[str, int]],
    *,
    replace: bool = True,
) -> None:
    """Register an instance's output files ``(fname, size)``, replacing any
    before (``replace``; a caller that knows there are none saves a DELETE).

    One executemany of plain rows (no ORM objects: ChRIS #521, per-file
    registration of large outputs took minutes); 10,000 files take well
    under a second on SQLite and PostgreSQL. Idempotent with ``replace``,
    so a registration can be redone whole. The caller commits.
    """
    table = StoredFile.__table__  # type: ignore[attr-defined]
    if replace:
        await session.exec(table.delete().where(table.c.plugin_inst_id == inst_id))
    if not files:
        return
    now = utcnow()
    rows = [
        {
            "fname": fname,
            "fsize": size,
            "owner_id": owner_id,
            "plugin_inst_id": inst_id,
            "public": False,
            "creation_date": now,
        }
        for fname, size in files
    ]
    for start in range(0, len(rows), REGISTER_BATCH):
        await session.exec(insert(table), params=rows[start : start + REGISTER_BATCH])


def _running_since(info: JobInfo) -> datetime | None:
    """When a job was first seen running: now, if the site says it runs or ran.

    A job the site still queues (``notStarted``) has not started: the time it
    waits there is not run time (ChRIS #408). A job first seen already ended
    ran between submission and now; now is the bound CUBE knows.
    """
    if info.status is JobStatus.STARTED or info.status.is_terminal:
        return utcnow()
    return None


def _sanitise_path(path: str) -> str:
    """An output path without commas, which separate paths in path parameters
    (ChRIS removes them too); a name made only of commas becomes ``_``."""
    return "/".join(part.replace(",", "") or "_" for part in path.split("/"))
