"""Routing rules: a feed and a pipeline for each registered series that matches a rule.

Once a series is registered in CUBE, :class:`Router` finds the first
:class:`~pacs_bridge.settings.RoutingRule` it matches and, through CUBE's
REST API (:class:`CubeFeedClient`, the bridge's own wire models):

1. runs the newest ``pl-dircopy`` with ``dir`` set to the series' folder
   (``SERVICES/PACS/<pacs>/<patient>/<study>/<series>``), which makes a feed of
   the series, as ChRIS does for PACS series;
2. starts the rule's pipeline as a workflow on that instance
   (``POST /api/v1/pipelines/<id>/workflows/`` with ``previous_plugin_inst_id``).

A failure (no such pipeline, CUBE down) is logged and kept in
:attr:`Router.routed` for the status endpoint; the registration it follows
stands. CUBE unreachable is retried like a registration, resuming at the step
that failed (a feed made before CUBE went away is not made twice). Each series
is routed once, when its first part is registered. With a
:class:`~pacs_bridge.state.StateStore` the record is saved at each step and
reloaded at start, so the record (and which series were routed) survives a
restart.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections import deque
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pacs_bridge.errors import RoutingError, RoutingUnavailable, StateError
from pacs_bridge.registrar import CubeHttp
from pacs_bridge.schema import RoutedSeries, RouteState, SeriesRegistration
from pacs_bridge.settings import BridgeSettings, RoutingRule
from pacs_bridge.state import StateStore

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: The fs plugin that makes a feed from a storage folder.
DIRCOPY = "pl-dircopy"


class _CubeWire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CubePlugin(_CubeWire):
    """A plugin as ``GET /api/v1/plugins/search/`` lists it."""

    id: int
    name: str
    version: str


class CubePipeline(_CubeWire):
    """A pipeline as ``GET /api/v1/pipelines/search/`` lists it."""

    id: int
    name: str


class CubeInstance(_CubeWire):
    """A plugin instance, as CUBE answers its creation."""

    id: int
    feed_id: int
    output_path: str = ""


class CubeWorkflow(_CubeWire):
    """A workflow, as CUBE answers its creation."""

    id: int


class _Page(_CubeWire):
    results: list[dict[str, Any]]
    next: str | None = None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in version.split("."))


class CubeFeedClient:
    """The calls routing makes to CUBE: plugin and pipeline look-ups, an instance, a workflow.

    ``api_url`` is CUBE's API root (``http://cube:8000/api/v1/``); credentials
    as :class:`~pacs_bridge.registrar.CubeRegistrar`'s.

    Raises (every method):
        RoutingUnavailable: connection failure, timeout or a 5xx.
        RoutingError: a 4xx, an unexpected answer, or nothing found.
    """

    def __init__(
        self,
        api_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._http = CubeHttp(
            api_url,
            token=token,
            username=username,
            password=password,
            timeout=timeout,
            unavailable=RoutingUnavailable,
            refused=RoutingError,
        )
        self.api_url = self._http.api_url

    async def _call(self, method: str, url: str, **kwargs: Any) -> str:
        status, text = await self._http.send(method, url, **kwargs)
        if status >= 500:
            raise RoutingUnavailable(f"CUBE answered {status} to {method} {url}: {text[:500]}")
        if status >= 400:
            raise RoutingError(f"CUBE refused {method} {url} ({status}): {text[:500]}")
        return text

    async def _list(self, model: type[M], path: str, params: dict[str, str]) -> list[M]:
        out: list[M] = []
        url: str | None = path
        query: dict[str, str] | None = {**params, "limit": "100"}
        while url:
            text = await self._call("GET", url, params=query)
            try:
                page = _Page.model_validate_json(text)
                out.extend(model.model_validate(item) for item in page.results)
            except ValidationError as exc:
                raise RoutingError(f"unexpected answer from CUBE to {path}: {exc}") from exc
            url, query = page.next, None
        return out

    async def _create(self, model: type[M], path: str, body: dict[str, Any]) -> M:
        text = await self._call("POST", path, json=body)
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            raise RoutingError(f"unexpected answer from CUBE to {path}: {exc}") from exc

    async def newest_plugin(self, name: str) -> CubePlugin:
        """The newest version of the plugin ``name``."""
        found = await self._list(CubePlugin, "plugins/search/", {"name_exact": name})
        found = [p for p in found if p.name == name]
        if not found:
            raise RoutingError(f"CUBE has no plugin {name!r}")
        return max(found, key=lambda p: _version_key(p.version))

    async def pipeline(self, name: str) -> CubePipeline:
        """The pipeline named exactly ``name``."""
        found = await self._list(CubePipeline, "pipelines/search/", {"name_exact": name})
        found = [p for p in found if p.name == name]
        if not found:
            raise RoutingError(f"CUBE has no pipeline named {name!r}")
        return found[0]

    async def create_feed(self, plugin: CubePlugin, folder: str, title: str) -> CubeInstance:
        """Run the fs plugin on ``folder`` (a storage path): a new feed."""
        body = {"dir": folder, "title": title}
        return await self._create(CubeInstance, f"plugins/{plugin.id}/instances/", body)

    async def start_workflow(
        self, pipeline: CubePipeline, previous_id: int, title: str
    ) -> CubeWorkflow:
        """Start ``pipeline`` on the instance ``previous_id``."""
        body = {"previous_plugin_inst_id": previous_id, "title": title}
        return await self._create(CubeWorkflow, f"pipelines/{pipeline.id}/workflows/", body)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()


def feed_title(rule: RoutingRule, calling_aet: str, registration: SeriesRegistration) -> str:
    """The rule's feed title filled in from the series (CUBE keeps at most 100 characters)."""
    fields = {
        **registration.meta.model_dump(),
        "pacs": registration.pacs_identifier,
        "calling_aet": calling_aet,
    }
    title = " ".join(rule.feed_title.format_map(fields).split())
    return (title or registration.meta.SeriesInstanceUID)[:100]


def series_folder(registration: SeriesRegistration) -> str:
    """The storage folder holding the registered files (one folder per series).

    Raises:
        RoutingError: the files lie in more than one folder.
    """
    folders = {posixpath.dirname(f) for f in registration.files}
    if len(folders) != 1:
        raise RoutingError(f"the series' files lie in {len(folders)} folders, not one")
    return folders.pop()


class Router:
    """Carries out the routing rules of ``settings`` on registered series.

    :meth:`route` is called (on the event loop) after each registration; the
    work runs as a task, so registration never waits for it. ``attempts`` and
    ``retry_seconds`` govern retries while CUBE is unreachable.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        client: CubeFeedClient | None = None,
        *,
        attempts: int | None = None,
        retry_seconds: float | None = None,
        state: StateStore | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        if client is None:
            if not settings.cube_url:
                raise RoutingError("routing rules need CUBE: set PACS_BRIDGE_CUBE_URL")
            client = CubeFeedClient(
                settings.cube_url,
                token=settings.cube_token.get_secret_value() if settings.cube_token else None,
                username=settings.cube_username,
                password=(
                    settings.cube_password.get_secret_value() if settings.cube_password else None
                ),
            )
        self.client = client
        self.attempts = attempts if attempts is not None else settings.register_attempts
        self.retry_seconds = (
            retry_seconds if retry_seconds is not None else settings.register_retry_seconds
        )
        keep = settings.keep_history
        #: The latest routed series, oldest first (those of earlier runs first).
        self.routed: deque[RoutedSeries] = deque(state.routed() if state else (), maxlen=keep)
        self._seen: deque[tuple[str, str]] = deque(
            ((r.pacs, r.series) for r in self.routed), maxlen=keep
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    def route(self, calling_aet: str, registration: SeriesRegistration) -> RoutedSeries | None:
        """Start routing a registered series; its record, or None when no rule applies.

        A series already routed (a later part of it) is not routed again.
        """
        meta = registration.meta
        key = (registration.pacs_identifier, meta.SeriesInstanceUID)
        if key in self._seen:
            return None
        rule = self.settings.rule_for(calling_aet, meta.Modality, meta.SeriesDescription)
        if rule is None:
            return None
        self._seen.append(key)
        record = RoutedSeries(
            pacs=registration.pacs_identifier,
            calling_aet=calling_aet,
            series=meta.SeriesInstanceUID,
            folder="",
            pipeline=rule.pipeline,
            title=feed_title(rule, calling_aet, registration),
            at=datetime.now(UTC),
        )
        self.routed.append(record)
        try:
            record.folder = series_folder(registration)
        except RoutingError as exc:
            self._fail(record, str(exc))
            return record
        self._save(record)
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    def _save(self, record: RoutedSeries) -> None:
        if self.state is None:
            return
        try:
            self.state.save_routed(record)
        except StateError as exc:  # routing goes on; only its record is not kept
            log.error("routing series %s: %s", record.series, exc)

    def _fail(self, record: RoutedSeries, error: str) -> None:
        record.state = RouteState.FAILED
        record.error = error
        self._save(record)
        log.error(
            "routing series %s to pipeline %r failed: %s", record.series, record.pipeline, error
        )

    async def _run(self, record: RoutedSeries) -> None:
        delay = self.retry_seconds
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    await self._steps(record)
                    record.state = RouteState.STARTED
                    record.error = ""
                    self._save(record)
                    log.info(
                        "series %s: feed %s, pipeline %r as workflow %s",
                        record.series,
                        record.feed_id,
                        record.pipeline,
                        record.workflow_id,
                    )
                    return
                except RoutingUnavailable as exc:
                    record.error = str(exc)
                    if attempt == self.attempts:
                        break
                    log.warning("routing attempt %d failed: %s", attempt, exc)
                    await asyncio.sleep(delay)
                    delay *= 2
                except RoutingError as exc:
                    record.error = str(exc)
                    break
                except Exception as exc:  # a bug here must not stop later series' routing
                    log.exception("routing series %s failed", record.series)
                    record.error = f"internal error: {exc}"
                    break
            self._fail(record, record.error)
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _steps(self, record: RoutedSeries) -> None:
        # the pipeline first: a rule naming no pipeline makes no feed
        pipeline = await self.client.pipeline(record.pipeline)
        if record.instance_id is None:
            dircopy = await self.client.newest_plugin(DIRCOPY)
            inst = await self.client.create_feed(dircopy, record.folder, record.title)
            record.instance_id, record.feed_id = inst.id, inst.feed_id
            self._save(record)
        workflow = await self.client.start_workflow(pipeline, record.instance_id, record.title)
        record.workflow_id = workflow.id

    @property
    def failures(self) -> list[RoutedSeries]:
        """The routed series that failed, oldest first."""
        return [r for r in self.routed if r.state is RouteState.FAILED]

    async def wait(self, timeout: float) -> list[RoutedSeries]:
        """Wait until no routing is running; every record.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: all(r.state is not RouteState.RUNNING for r in self.routed)
            )
        return list(self.routed)

    async def close(self) -> None:
        """Wait briefly for routings under way, then close the client."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        for task in list(self._tasks):
            task.cancel()
        await self.client.close()
