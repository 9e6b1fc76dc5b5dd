"""Typed async client of CUBE's API (used by the ``chris`` CLI and the tests).

All HTTP lives here; responses are parsed into :mod:`cube.schema` models and
errors are raised as :class:`CubeClientError` (with the server's status and
body), transport failures as :class:`CubeUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from cube import schema
from cube.errors import CubeError

M = TypeVar("M", bound=BaseModel)


class CubeClientError(CubeError):
    """CUBE answered with an error; ``status`` and ``body`` are the server's."""

    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else None
        super().__init__(str(detail or body))
        self.status = status  # type: ignore[misc]
        self.body = body  # type: ignore[assignment]


class CubeUnavailable(CubeError):
    """CUBE could not be reached."""

    status = 503
    code = "unavailable"


class CubeClient:
    """A session with CUBE for one user; ``async with`` it, or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 3600.0,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.token = token
        self._own = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        )

    @classmethod
    async def from_login(cls, url: str, username: str, password: str) -> CubeClient:
        """Log in with a password and keep the API token."""
        client = cls(url)
        try:
            token = await client._json(
                "POST", "api/v1/auth-token/", json={"username": username, "password": password}
            )
        except BaseException:
            await client.close()
            raise
        client.token = token["token"]
        return client

    async def __aenter__(self) -> CubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own:
            await self._session.close()

    # -- transport -------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        return headers

    def _abs(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.url + path_or_url.lstrip("/")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._session.request(
                method, self._abs(path), headers=self._headers(), **kwargs
            ) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except json.JSONDecodeError:
                    body = {"detail": text[:500]}
                if resp.status >= 400:
                    raise CubeClientError(resp.status, body)
                return body
        except aiohttp.ClientError as exc:
            raise CubeUnavailable(f"CUBE unreachable at {self.url}: {exc}") from exc
        except TimeoutError as exc:
            raise CubeUnavailable(f"CUBE timed out at {self.url}") from exc

    async def _get(self, model: type[M], path: str, params: Mapping[str, Any] | None = None) -> M:
        return model.model_validate(await self._json("GET", path, params=params))

    async def _list(
        self, model: type[M], path: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[M]:
        url: str | None = self._abs(path)
        query = dict(params or {})
        query.setdefault("limit", 100)
        while url:
            page = await self._json("GET", url, params=query)
            for item in page["results"]:
                yield model.model_validate(item)
            url, query = page.get("next"), {}

    # -- resources -------------------------------------------------------------

    async def plugins(self, **filters: Any) -> list[schema.Plugin]:
        """Plugins matching ``search/`` filters (name, name_exact, version, type)."""
        path = "api/v1/plugins/search/" if filters else "api/v1/plugins/"
        return [p async for p in self._list(schema.Plugin, path, filters)]

    async def plugin_by_name(self, name: str, version: str | None = None) -> schema.Plugin:
        """The newest (or the given) version of a plugin.

        Raises:
            CubeClientError: 404 when there is none.
        """
        filters = {"name_exact": name} | ({"version": version} if version else {})
        found = await self.plugins(**filters)
        if not found:
            raise CubeClientError(404, {"detail": f"no plugin {name} {version or ''}".strip()})
        return max(found, key=lambda p: tuple(int(x) for x in p.version.split(".") if x.isdigit()))

    async def plugin_parameters(self, plugin: schema.Plugin) -> list[schema.PluginParameter]:
        return [p async for p in self._list(schema.PluginParameter, plugin.parameters)]

    async def register_plugin(
        self, descriptor: Mapping[str, Any], compute_names: list[str]
    ) -> schema.Plugin:
        """Admin: register a plugin from its descriptor."""
        form = aiohttp.FormData()
        form.add_field(
            "fname",
            json.dumps(descriptor).encode(),
            filename="descriptor.json",
            content_type="application/json",
        )
        form.add_field("compute_names", ",".join(compute_names))
        return schema.Plugin.model_validate(
            await self._json("POST", "chris-admin/api/v1/", data=form)
        )

    async def register_plugin_image(self, image: str, compute_names: list[str]) -> schema.Plugin:
        """Admin: register a plugin from an image reference alone.

        CUBE reads the descriptor from the image's ``org.chrisproject.descriptor``
        label in its registry and records ``image`` as the plugin's ``dock_image``.

        Raises:
            CubeClientError: 400 (bad reference, not a plugin image), 403 (the
                registry refused CUBE), 404 (no such image), 502 (registry unreachable).
        """
        body = {"image": image, "compute_names": ",".join(compute_names)}
        return schema.Plugin.model_validate(
            await self._json("POST", "chris-admin/api/v1/", json=body)
        )

    async def compute_resources(self) -> list[schema.ComputeResource]:
        return [r async for r in self._list(schema.ComputeResource, "api/v1/computeresources/")]

    async def add_compute_resource(
        self,
        name: str,
        compute_url: str,
        compute_user: str,
        compute_password: str,
        *,
        gpus: int = 0,
        max_concurrent_jobs: int = 0,
        **extra: Any,
    ) -> schema.ComputeResource:
        """Admin: register a compute site (a pfcon URL and its credentials).

        ``gpus``: GPUs one job may have there (0: none); ``max_concurrent_jobs``:
        jobs CUBE submits there at once (0: unlimited). ``extra``: other fields
        (``description``, ``max_job_exec_seconds``, ``compute_auth_url``).
        """
        body = {
            "name": name,
            "compute_url": compute_url,
            "compute_user": compute_user,
            "compute_password": compute_password,
            "gpus": gpus,
            "max_concurrent_jobs": max_concurrent_jobs,
            **extra,
        }
        data = await self._json("POST", "chris-admin/api/v1/computeresources/", json=body)
        return schema.ComputeResource.model_validate(data)

    async def upload(self, local: Path, upload_path: str) -> schema.UserFile:
        """Upload a local file (streamed) to ``upload_path`` (``home/<user>/...``)."""
        with local.open("rb") as fh:
            form = aiohttp.FormData()
            form.add_field("upload_path", upload_path)
            form.add_field("fname", fh, filename=local.name)
            return schema.UserFile.model_validate(
                await self._json("POST", "api/v1/userfiles/", data=form)
            )

    async def register_pacs_files(
        self, pacs_name: str, files: Sequence[schema.PacsFileIn]
    ) -> schema.PacsFilesRegistered:
        """Register DICOM files already written under ``SERVICES/PACS/<pacs_name>/``
        in CUBE's storage, in one request (staff)."""
        body = schema.PacsFilesIn(pacs_name=pacs_name, files=list(files))
        data = await self._json("POST", "api/v1/pacs/files/", json=body.model_dump(mode="json"))
        return schema.PacsFilesRegistered.model_validate(data)

    async def pacs_files(self, **filters: Any) -> list[schema.PacsFile]:
        """Registered PACS files, optionally filtered (``SeriesInstanceUID=...``)."""
        path = "api/v1/pacs/files/search/" if filters else "api/v1/pacs/files/"
        return [f async for f in self._list(schema.PacsFile, path, filters)]

    async def create_instance(
        self, plugin_id: int, params: Mapping[str, Any] | None = None, **fields: Any
    ) -> schema.PluginInstance:
        """Run a plugin: ``fields`` are title, previous_id, limits, compute_resource_name."""
        body = {**(params or {}), **{k: v for k, v in fields.items() if v is not None}}
        data = await self._json("POST", f"api/v1/plugins/{plugin_id}/instances/", json=body)
        return schema.PluginInstance.model_validate(data)

    async def instance(
        self, inst_id: int, *, wait: float | None = None, known: schema.InstanceStatus | None = None
    ) -> schema.PluginInstance:
        """An instance; with ``wait`` and ``known``, long-poll for a status change."""
        params = {"wait": wait, "status": known.value} if wait and known else None
        return await self._get(
            schema.PluginInstance, f"api/v1/plugins/instances/{inst_id}/", params
        )

    async def watch(
        self, inst_id: int, *, timeout: float = 3600.0
    ) -> AsyncIterator[schema.PluginInstance]:
        """Yield the instance on every status change until it ends (long-poll)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        inst = await self.instance(inst_id)
        yield inst
        while inst.active:
            if loop.time() > deadline:
                raise TimeoutError(f"instance {inst_id} still {inst.status} after {timeout}s")
            new = await self.instance(inst_id, wait=30, known=inst.status)
            if new.status != inst.status:
                yield new
            inst = new

    async def wait(self, inst_id: int, *, timeout: float = 3600.0) -> schema.PluginInstance:
        """Wait for an instance to reach a terminal status."""
        last = None
        async for inst in self.watch(inst_id, timeout=timeout):
            last = inst
        assert last is not None
        return last

    async def cancel(self, inst_id: int) -> schema.PluginInstance:
        data = await self._json(
            "PUT", f"api/v1/plugins/instances/{inst_id}/", json={"status": "cancelled"}
        )
        return schema.PluginInstance.model_validate(data)

    async def feeds(self) -> list[schema.Feed]:
        return [f async for f in self._list(schema.Feed, "api/v1/")]

    async def feed(self, feed_id: int) -> schema.Feed:
        return await self._get(schema.Feed, f"api/v1/{feed_id}/")

    async def feed_instances(self, feed_id: int) -> list[schema.PluginInstance]:
        return [
            i async for i in self._list(schema.PluginInstance, f"api/v1/{feed_id}/plugininstances/")
        ]

    async def instance_files(self, inst_id: int) -> list[schema.PluginInstanceFile]:
        return [
            f
            async for f in self._list(
                schema.PluginInstanceFile, f"api/v1/plugins/instances/{inst_id}/files/"
            )
        ]

    async def download(self, file_resource: str, dest: Path) -> int:
        """Stream a ``file_resource`` to ``dest``; returns the bytes written."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            async with self._session.get(self._abs(file_resource), headers=self._headers()) as resp:
                if resp.status >= 400:
                    raise CubeClientError(resp.status, {"detail": (await resp.text())[:500]})
                with dest.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        fh.write(chunk)
                        size += len(chunk)
        except aiohttp.ClientError as exc:
            raise CubeUnavailable(f"download failed: {exc}") from exc
        return size

    # -- pipelines and workflows ---------------------------------------------------

    async def pipelines(self, **filters: Any) -> list[schema.Pipeline]:
        """Pipelines you may see, matching ``search/`` filters (id, name, name_exact,
        category, owner_username)."""
        path = "api/v1/pipelines/search/" if filters else "api/v1/pipelines/"
        return [p async for p in self._list(schema.Pipeline, path, filters)]

    async def pipeline(self, pipeline_id: int) -> schema.Pipeline:
        return await self._get(schema.Pipeline, f"api/v1/pipelines/{pipeline_id}/")

    async def pipeline_by_name(self, name: str) -> schema.Pipeline:
        """The pipeline with exactly this name.

        Raises:
            CubeClientError: 404 when there is none you may see.
        """
        found = await self.pipelines(name_exact=name)
        if not found:
            raise CubeClientError(404, {"detail": f"no pipeline named {name!r}"})
        return found[0]

    async def create_pipeline(self, definition: Mapping[str, Any]) -> schema.Pipeline:
        """Create a pipeline from a definition (``name``, ``plugin_tree``, ...)."""
        data = await self._json("POST", "api/v1/pipelines/", json=dict(definition))
        return schema.Pipeline.model_validate(data)

    async def upload_pipeline(
        self, local: Path, kind: str | None = None
    ) -> schema.PipelineSourceFile:
        """Upload a YAML or JSON pipeline file (``kind``: ``yaml``/``json``, by
        default from the file name); CUBE creates the pipeline it defines."""
        form = aiohttp.FormData()
        if kind:
            form.add_field("type", kind)
        form.add_field("fname", local.read_bytes(), filename=local.name)
        data = await self._json("POST", "api/v1/pipelines/sourcefiles/", data=form)
        return schema.PipelineSourceFile.model_validate(data)

    async def export_pipeline(self, pipeline_id: int) -> schema.PipelineExport:
        """A pipeline as ChRIS exports it (``plugin_tree`` is a JSON string)."""
        return await self._get(schema.PipelineExport, f"api/v1/pipelines/{pipeline_id}/json/")

    async def pipeline_pipings(self, pipeline_id: int) -> list[schema.PluginPiping]:
        path = f"api/v1/pipelines/{pipeline_id}/pipings/"
        return [p async for p in self._list(schema.PluginPiping, path)]

    async def pipeline_defaults(self, pipeline_id: int) -> list[schema.PipingDefaultParameter]:
        path = f"api/v1/pipelines/{pipeline_id}/parameters/"
        return [p async for p in self._list(schema.PipingDefaultParameter, path)]

    async def create_workflow(
        self,
        pipeline_id: int,
        previous_id: int,
        *,
        title: str | None = None,
        nodes_info: list[Mapping[str, Any]] | None = None,
    ) -> schema.Workflow:
        """Run a pipeline on instance ``previous_id``; ``nodes_info`` overrides
        per node (``piping_id`` with ``title``, ``plugin_parameter_defaults``,
        limits, ``compute_resource_name``)."""
        body: dict[str, Any] = {"previous_plugin_inst_id": previous_id}
        if title is not None:
            body["title"] = title
        if nodes_info:
            body["nodes_info"] = json.dumps([dict(n) for n in nodes_info])
        data = await self._json("POST", f"api/v1/pipelines/{pipeline_id}/workflows/", json=body)
        return schema.Workflow.model_validate(data)

    async def workflow(self, workflow_id: int) -> schema.Workflow:
        return await self._get(schema.Workflow, f"api/v1/pipelines/workflows/{workflow_id}/")

    async def workflows(self, pipeline_id: int | None = None) -> list[schema.Workflow]:
        """Your workflows, or those of one pipeline."""
        path = (
            f"api/v1/pipelines/{pipeline_id}/workflows/"
            if pipeline_id is not None
            else "api/v1/pipelines/workflows/"
        )
        return [w async for w in self._list(schema.Workflow, path)]

    async def workflow_instances(self, workflow_id: int) -> list[schema.PluginInstance]:
        path = f"api/v1/pipelines/workflows/{workflow_id}/plugininstances/"
        return [i async for i in self._list(schema.PluginInstance, path)]
