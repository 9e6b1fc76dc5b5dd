"""The site coordinator: pfcon's logic, free of HTTP request objects.

:class:`Coordinator` pushes a job's input to pfioh, schedules the job on pman,
relays status and output, and deletes both halves of a job. It reaches pfioh
and pman only through :class:`pfioh.client.PfiohClient` and
:class:`pman.client.PmanClient`; their exceptions are translated here, at the
edge, into :mod:`pfcon.errors` (status and message preserved, ``from exc``).

In in-network mode (a :class:`pfcon.innetwork.SharedStorage` given) pfioh is
not used: the job's dirs in the storage shared with CUBE go to pman as they
are, the output is listed rather than zipped, and a DELETE removes only
pfcon's own ``key-<jid>`` dir.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from pydantic import ValidationError

import pfioh.errors as pfioh_errors
import pman.errors as pman_errors
from pfcon.errors import (
    InvalidJob,
    JobConflict,
    JobNotFound,
    PfconError,
    PfconUnavailable,
    SiteStorageFull,
    StorageError,
    UpstreamError,
)
from pfcon.innetwork import SharedStorage
from pfcon.schema import (
    InNetworkDirs,
    JobData,
    JobDescriptor,
    JobInfo,
    JobStatus,
    JobSubmitted,
    OutputListing,
    PfconServerInfo,
    StorageEnv,
)
from pfioh.client import PfiohClient
from pman.client import PmanClient
from pman.schema import JobId, JobSpec

log = logging.getLogger(__name__)


def _server_version() -> str:
    try:
        return version("chris-fabric")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


SERVER_VERSION = _server_version()

#: Only host paths under a shared storebase are implemented (reference §3.4).
COMPUTE_VOLUME_TYPE = "host"


@contextmanager
def pfioh_errors_translated() -> Iterator[None]:
    """Translate :mod:`pfioh.errors` raised inside the block into :mod:`pfcon.errors`.

    Unreachable → :class:`PfconUnavailable` (503); pfioh refusing pfcon's own
    token → :class:`UpstreamError` (502, a site misconfiguration, not the
    caller's fault); a full disk → :class:`SiteStorageFull` (507); other 4xx
    keep their status; 5xx → :class:`UpstreamError`.
    """
    try:
        yield
    except pfioh_errors.PfiohUnavailable as exc:
        raise PfconUnavailable(f"pfioh unreachable: {exc}") from exc
    except pfioh_errors.JobNotFound as exc:
        raise JobNotFound(str(exc)) from exc
    except pfioh_errors.Conflict as exc:
        raise JobConflict(str(exc)) from exc
    except pfioh_errors.Unauthorized as exc:
        raise UpstreamError(f"pfioh refused pfcon's credentials: {exc}") from exc
    except pfioh_errors.InsufficientStorage as exc:
        raise SiteStorageFull(f"the site's storage is full: {exc}") from exc
    except pfioh_errors.PfiohError as exc:
        if 400 <= exc.status < 500:
            raise InvalidJob(str(exc), status=exc.status) from exc
        raise UpstreamError(f"pfioh failed: {exc}") from exc


@contextmanager
def pman_errors_translated() -> Iterator[None]:
    """Translate :mod:`pman.errors` raised inside the block into :mod:`pfcon.errors`.

    Unreachable → :class:`PfconUnavailable` (503); 404 → :class:`JobNotFound`;
    409 → :class:`JobConflict`; pman refusing pfcon's token → :class:`UpstreamError`
    (502); other 4xx (an invalid or unsatisfiable job,
    e.g. 422) keep their status as :class:`InvalidJob`; backend failures and
    other 5xx → :class:`UpstreamError` (502).
    """
    try:
        yield
    except pman_errors.PmanUnavailable as exc:
        raise PfconUnavailable(f"pman unavailable: {exc}") from exc
    except pman_errors.JobNotFound as exc:
        raise JobNotFound(str(exc)) from exc
    except pman_errors.JobConflict as exc:
        raise JobConflict(str(exc)) from exc
    except pman_errors.Unauthorized as exc:
        raise UpstreamError(f"pman refused pfcon's credentials: {exc}") from exc
    except pman_errors.PmanError as exc:
        if 400 <= exc.status < 500:
            raise InvalidJob(str(exc), status=exc.status) from exc
        raise UpstreamError(f"pman failed: {exc}") from exc


@dataclass(frozen=True)
class PushedInput:
    """The outcome of pushing a job's input archive to pfioh.

    ``created`` is False when pfioh already held input for the job (an
    idempotent retry); paths are relative to the site's storebase.
    """

    jid: str
    created: bool
    nfiles: int = 0
    path: str = ""
    outgoing: str = ""


@dataclass(frozen=True)
class SubmitOutcome:
    """The reply to a submission and whether it created the job (201) or found it (200)."""

    reply: JobSubmitted
    created: bool


class Coordinator:
    """pfcon's operations on one site's pfioh and pman.

    ``max_status_wait`` (seconds) caps a status long-poll. With ``shared``
    (the storage shared with CUBE) the site is in-network, storage_env
    ``filesystem``; without it, zip mode through pfioh.
    """

    def __init__(
        self,
        pfioh: PfiohClient,
        pman: PmanClient,
        *,
        max_status_wait: float = 60.0,
        shared: SharedStorage | None = None,
    ) -> None:
        self._pfioh = pfioh
        self._pman = pman
        self._max_status_wait = max_status_wait
        self._shared = shared

    @property
    def innetwork(self) -> bool:
        """True when the site shares CUBE's storage (storage_env ``filesystem``)."""
        return self._shared is not None

    @property
    def storage_env(self) -> StorageEnv:
        """How job data reaches this site."""
        return StorageEnv.FILESYSTEM if self.innetwork else StorageEnv.ZIPFILE

    def _shared_storage(self) -> SharedStorage:
        """The shared storage; a zip-mode site refuses in-network requests (400)."""
        if self._shared is None:
            raise InvalidJob(
                "this site is in zip mode (storage_env zipfile): it takes the input as "
                "a zip (data_file) and returns the output as a zip"
            )
        return self._shared

    async def server_info(self) -> PfconServerInfo:
        """This site's description; ``container_env`` comes from pman.

        Raises :class:`PfconUnavailable` when pman cannot be reached.
        """
        with pman_errors_translated():
            info = await self._pman.server_info()
        return PfconServerInfo(
            server_version=SERVER_VERSION,
            pfcon_innetwork=self.innetwork,
            storage_env=self.storage_env,
            container_env=info.container_env,
            compute_volume_type=COMPUTE_VOLUME_TYPE,
        )

    async def push_input(self, jid: str, archive: AsyncIterable[bytes | memoryview]) -> PushedInput:
        """Stream a job's input zip to pfioh, which unpacks it.

        Returns ``created=False`` (without raising) when pfioh already holds
        input for ``jid``; the archive may then be partly unread. Raises
        :class:`InvalidJob` (400/413/422) for a corrupt, unsafe or too large
        archive, :class:`PfconUnavailable` when pfioh cannot be reached.
        pfioh keeps nothing of a failed upload, so nothing is deleted here:
        a failure that hides a conflict must not remove an existing job's input.
        """
        try:
            with pfioh_errors_translated():
                report = await self._pfioh.push_incoming(jid, archive)
        except JobConflict:
            log.info("input of job %s already at pfioh; treating the submission as a retry", jid)
            return PushedInput(jid=jid, created=False)
        return PushedInput(
            jid=jid,
            created=True,
            nfiles=report.nfiles,
            path=report.path,
            outgoing=report.outgoing,
        )

    async def discard_input(self, jid: str) -> None:
        """Best-effort removal of a job's data at pfioh; failures are logged, not raised."""
        try:
            with pfioh_errors_translated():
                await self._pfioh.delete(jid)
        except PfconError as exc:
            log.warning("could not remove the data of job %s at pfioh: %s", jid, exc)

    async def schedule(self, job: JobDescriptor, pushed: PushedInput) -> SubmitOutcome:
        """Run ``job`` on pman over the input just pushed.

        When the input already existed (``pushed.created`` False) and pman
        knows the job with the same image and entrypoint, the current state is
        returned (``created`` False). Raises :class:`JobConflict` (409) when
        the existing job differs or has no pman half, pman's refusal with its
        own status (e.g. :class:`InvalidJob` 422), :class:`PfconUnavailable`.
        The caller discards freshly pushed input when this raises.
        """
        if not pushed.created:
            return await self._existing(job)
        try:
            spec = _spec(job, pushed.path, pushed.outgoing)
        except ValidationError as exc:
            # The descriptor was validated already, so only pfioh's paths can be wrong.
            raise UpstreamError(f"pfioh reported unusable paths for job {job.jid}") from exc
        with pman_errors_translated():
            info = await self._pman.schedule(spec)
        data = JobData(jid=job.jid, nfiles=pushed.nfiles, timestamp=_now(), path=pushed.path)
        return SubmitOutcome(JobSubmitted(data=data, compute=info), created=True)

    async def _existing(self, job: JobDescriptor) -> SubmitOutcome:
        """The state of a job resubmitted after its input reached pfioh."""
        info = await self._existing_compute(job)
        with pfioh_errors_translated():
            stored = await self._pfioh.job_status(job.jid)
        if not stored.incoming:
            raise JobConflict(f"job {job.jid!r} exists but its input is incomplete")
        # pfioh's status has no count of input files nor their path: report 0
        # and the storebase layout pfioh documents (pfioh.schema).
        data = JobData(
            jid=job.jid,
            nfiles=0,
            timestamp=info.timestamp or _now(),
            path=f"key-{job.jid}/incoming",
        )
        return SubmitOutcome(JobSubmitted(data=data, compute=info), created=False)

    async def _existing_compute(self, job: JobDescriptor) -> JobInfo:
        """pman's state of a resubmitted job, if it is the same job (409 otherwise)."""
        info = await self._pman_job(job)
        if info is None:
            raise JobConflict(
                f"input data of job {job.jid!r} already exists but pman has no such job "
                "(another submission is in progress, or one failed midway); "
                "DELETE the job to start over"
            )
        return info

    async def _pman_job(self, job: JobDescriptor) -> JobInfo | None:
        """pman's state of ``job`` (None when pman has no such job).

        Raises :class:`JobConflict` when pman's job has another image or entrypoint.
        """
        try:
            with pman_errors_translated():
                info = await self._pman.get(job.jid)
        except JobNotFound:
            return None
        if info.image != job.image or not all(word in info.cmd for word in job.entrypoint):
            raise JobConflict(
                f"job {job.jid!r} already exists with a different image or entrypoint"
            )
        return info

    async def submit_innetwork(self, job: JobDescriptor, dirs: InNetworkDirs) -> SubmitOutcome:
        """Run ``job`` on pman over dirs of the storage shared with CUBE (in-network).

        :meth:`SharedStorage.prepare` checks the dirs and makes them ready (no
        data copied); pman then gets the input and output dirs themselves. A
        resubmission with the same dirs, image and entrypoint returns the
        current state (``created`` False); if pman has lost the job (pfcon
        stopped between preparing and scheduling it), it is scheduled again
        over the dirs already prepared. Raises :class:`InvalidJob` (400 for
        an unsafe or missing dir, 400 in zip mode; pman's 422), :class:`JobConflict`,
        :class:`StorageError`, :class:`PfconUnavailable`. pfcon's scratch for
        the job is removed again when pman refuses it; the shared dirs never are.
        """
        shared = self._shared_storage()
        prepared = await asyncio.to_thread(shared.prepare, job.jid, dirs)
        record = prepared.record
        data = JobData(
            jid=job.jid,
            nfiles=record.nfiles,
            timestamp=record.timestamp,
            path=record.pman_input_dir,
        )
        if not prepared.created:
            existing = await self._pman_job(job)
            if existing is not None:
                return SubmitOutcome(JobSubmitted(data=data, compute=existing), created=False)
            log.info("job %s: prepared before but unknown to pman; scheduling it now", job.jid)
        try:
            try:
                spec = _spec(job, record.pman_input_dir, record.pman_output_dir)
            except ValidationError as exc:  # the dirs were resolved by pfcon itself
                raise StorageError(f"unusable storage paths for job {job.jid}: {exc}") from exc
            with pman_errors_translated():
                info = await self._pman.schedule(spec)
        except JobConflict:
            raise  # pman runs this job already (a concurrent submission): its dirs stay
        except BaseException:
            if prepared.created:  # a resumed job's dirs may serve a concurrent retry
                await self._discard_scratch(job.jid)
            raise
        return SubmitOutcome(JobSubmitted(data=data, compute=info), created=True)

    async def _discard_scratch(self, jid: str) -> None:
        """Best-effort removal of pfcon's ``key-<jid>`` dir; failures are logged."""
        try:
            await asyncio.to_thread(self._shared_storage().discard, jid)
        except PfconError as exc:
            log.warning("could not remove pfcon's dir of job %s: %s", jid, exc)

    async def list_output(self, jid: str, job_output_path: str) -> OutputListing:
        """The output files of a finished in-network job, unsafe entries removed.

        Raises :class:`InvalidJob` (400) in zip mode or when
        ``job_output_path`` is not the job's output dir, :class:`JobNotFound`,
        :class:`JobConflict` (409) while the job runs (a running plugin could
        add a link after the check), :class:`StorageError`, :class:`PfconUnavailable`.
        """
        shared = self._shared_storage()
        info = await self.status(jid)
        if not info.status.is_terminal:
            raise JobConflict(
                f"job {jid!r} is {info.status.value}; its output is listed once it has ended"
            )
        return await asyncio.to_thread(shared.list_output, jid, job_output_path)

    async def status(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        """The job's compute state from pman.

        With ``wait`` (seconds, capped at ``max_status_wait``), pman answers as
        soon as the status differs from ``known`` (default: the current
        status), or after ``wait``. Raises :class:`JobNotFound`,
        :class:`PfconUnavailable`.
        """
        if wait is not None:
            wait = min(max(wait, 0.0), self._max_status_wait)
        with pman_errors_translated():
            if wait and known is None:
                # a long-poll needs a status to differ from: the current one
                known = (await self._pman.get(jid)).status
            return await self._pman.get(jid, wait=wait, known=known)

    async def open_output(self, jid: str) -> AsyncGenerator[bytes, None]:
        """The job's output zip from pfioh, as a stream of chunks.

        The first chunk is fetched before returning, so an unknown job raises
        :class:`JobNotFound` (and an unreachable pfioh :class:`PfconUnavailable`)
        here, before the caller starts a response. Later failures raise
        :class:`PfconError` from the iterator. An in-network site has no zip:
        :class:`InvalidJob` (400).
        """
        if self.innetwork:
            raise InvalidJob(
                "this site is in-network (storage_env filesystem): ask for the output "
                "listing with ?job_output_path=<the job's output dir>"
            )
        source = self._pfioh.iter_outgoing(jid)
        try:
            with pfioh_errors_translated():
                first = await anext(source, None)
        except BaseException:
            await _aclose(source)
            raise
        return _relay(first, source)

    async def delete(self, jid: str) -> None:
        """Remove the job at pman (stopping it), then its data at pfioh.

        In-network, the second half is pfcon's own ``key-<jid>`` dir (the
        hard-link input and the record); the input and output dirs are CUBE's
        and are never deleted. A half that is already gone is not an error.
        Both are attempted; if either fails otherwise, :class:`UpstreamError`
        (502) names the failures.
        """
        failures: list[str] = []
        try:
            with pman_errors_translated():
                await self._pman.delete(jid)
        except JobNotFound:
            pass
        except PfconError as exc:
            failures.append(str(exc))
        try:
            if self._shared is not None:
                await asyncio.to_thread(self._shared.discard, jid)
            else:
                with pfioh_errors_translated():
                    await self._pfioh.delete(jid)
        except JobNotFound:
            pass
        except PfconError as exc:
            failures.append(str(exc))
        if failures:
            raise UpstreamError(f"could not delete job {jid!r}: " + "; ".join(failures))


async def _relay(first: bytes | None, source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Yield ``first`` then the rest of ``source``, translating pfioh's errors."""
    try:
        if first is None:
            return
        yield first
        with pfioh_errors_translated():
            async for chunk in source:
                yield chunk
    finally:
        await _aclose(source)


async def _aclose(source: AsyncIterator[bytes]) -> None:
    """Close an async generator early so its HTTP response is released."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _spec(job: JobDescriptor, input_dir: str, output_dir: str) -> JobSpec:
    """pman's job spec for ``job`` over dirs relative to the storebase.

    Raises ValidationError when pman would refuse the dirs.
    """
    return JobSpec(
        jid=JobId(job.jid),
        image=job.image,
        entrypoint=job.entrypoint,
        args=job.args,
        args_path_flags=job.args_path_flags,
        auid=job.auid,
        type=job.type,
        cpu_limit=job.cpu_limit,
        memory_limit=job.memory_limit,
        gpu_limit=job.gpu_limit,
        number_of_workers=job.number_of_workers,
        env=job.env,
        input_dir=input_dir,
        output_dir=output_dir,
    )
