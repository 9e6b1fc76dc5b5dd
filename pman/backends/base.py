"""The compute backend family: an abstract base every backend implements.

A backend runs :class:`~pman.schema.JobSpec` jobs somewhere (host processes,
Docker containers, later swarm and Kubernetes) and reports them as
:class:`~pman.schema.JobInfo`. It must find its jobs again after a pman
restart, from the state the compute system itself keeps (process state files,
container labels), never from pman's memory alone.

Long-polling (:meth:`Backend.wait_for_change`) is implemented here once: a
backend that can tell when a job changes calls :meth:`Backend.notify`, which
wakes the waiters at once; a backend that cannot sets :attr:`Backend.poll_interval`
and waiters re-check it at that interval.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar

from pman.errors import InvalidJob
from pman.schema import JobId, JobInfo, JobSpec, JobStatus
from pman.settings import BackendName, PmanSettings

#: Job ids that would collide with pman's own routes (``/api/v1/jobs/``, ...).
RESERVED_JIDS = frozenset({"jobs", "health"})


class Backend(ABC):
    """A compute backend.

    Lifecycle: construct, ``await start()`` (connect, find existing jobs,
    start background tasks), use, ``await close()`` (stop background tasks;
    jobs keep running). The app's ``cleanup_ctx`` owns this lifecycle.

    All methods raise :class:`~pman.errors.PmanError` subclasses only:
    :class:`~pman.errors.JobNotFound`, :class:`~pman.errors.JobConflict`,
    :class:`~pman.errors.InvalidJob` (the backend refuses the spec) and
    :class:`~pman.errors.BackendError` (the compute system failed).
    """

    #: The name reported as ``container_env``.
    name: ClassVar[BackendName]
    #: Seconds between re-checks while a long-poll waits; ``None`` when the
    #: backend calls :meth:`notify` itself on every status change.
    poll_interval: ClassVar[float | None] = 0.25

    def __init__(self, settings: PmanSettings) -> None:
        self.settings = settings
        self._events: dict[JobId, asyncio.Event] = {}

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Connect and pick up jobs left by a previous pman. Raises BackendError."""

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Stop background work; running jobs are left running."""

    def check_spec(self, spec: JobSpec) -> None:
        """Refuse specs this backend cannot run.

        The base refuses reserved job ids and ``number_of_workers`` other than 1
        (no backend so far runs parallel workers). Subclasses extend it.

        Raises:
            InvalidJob: with a message saying what to change.
        """
        if spec.jid in RESERVED_JIDS:
            raise InvalidJob(f"job id {spec.jid!r} is reserved")
        if spec.number_of_workers != 1:
            raise InvalidJob(
                f"number_of_workers must be 1 on the {self.name} backend "
                f"(got {spec.number_of_workers}); it runs one process per job"
            )

    @abstractmethod
    async def schedule(self, spec: JobSpec) -> JobInfo:
        """Start ``spec``; returns its info. Raises JobConflict, InvalidJob, BackendError."""

    @abstractmethod
    async def info(self, jid: JobId, *, logs: bool = True) -> JobInfo:
        """The job's current info, with the logs tail when ``logs``. Raises JobNotFound."""

    @abstractmethod
    async def list_jobs(self) -> list[JobInfo]:
        """Every job this backend manages, without logs."""

    @abstractmethod
    async def remove(self, jid: JobId) -> None:
        """Stop the job if it runs and forget it (container/state removed). Raises JobNotFound."""

    # -- change notification and long-poll ------------------------------------

    def notify(self, jid: JobId) -> None:
        """Wake every long-poll waiting on ``jid`` (its status may have changed)."""
        event = self._events.pop(jid, None)
        if event is not None:
            event.set()

    def _event(self, jid: JobId) -> asyncio.Event:
        event = self._events.get(jid)
        if event is None:
            event = self._events[jid] = asyncio.Event()
        return event

    async def wait_for_change(self, jid: JobId, known: JobStatus, wait: float) -> JobInfo:
        """The job's info once its status differs from ``known``, or after ``wait`` seconds.

        Returns at once when the status already differs. Raises JobNotFound
        (also when the job is removed while waiting) and BackendError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        while True:
            # take the event before reading the status, so that a change
            # between the read and the wait still wakes us
            event = self._event(jid)
            # without logs while waiting: they can be costly (docker) and only the answer needs them
            info = await self.info(jid, logs=False)
            remaining = deadline - loop.time()
            if info.status != known or remaining <= 0:
                return await self.info(jid)
            if self.poll_interval is not None:
                remaining = min(remaining, self.poll_interval)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
