"""Plugin registration (from a ChRIS descriptor) and compute resources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chris_sdk.descriptor import DescriptorError, PluginDescriptor
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    ComputeResource,
    Plugin,
    PluginComputeResource,
    PluginMeta,
    PluginParameter,
)
from cube.errors import BadRequest, Conflict, NotFound
from cube.services.innetwork import probe_site

#: Largest ``gpus`` or ``max_concurrent_jobs`` (a 32-bit column in PostgreSQL).
MAX_COUNT = 2**31 - 1


async def create_compute_resource(
    session: AsyncSession,
    *,
    name: str,
    compute_url: str,
    compute_user: str,
    compute_password: str,
    compute_auth_url: str = "",
    description: str = "",
    max_job_exec_seconds: int = -1,
    gpus: Any = 0,
    max_concurrent_jobs: Any = 0,
) -> ComputeResource:
    """Register a compute site (a pfcon endpoint).

    ``gpus`` (GPUs one job may have there; 0: none) and
    ``max_concurrent_jobs`` (jobs submitted there at once; 0 or ``None``:
    unlimited) are non-negative integers, also given as decimal strings (form
    bodies); they drive :mod:`cube.services.placement`. ``compute_innetwork``
    comes from the site: pfcon's server info is read as ChRIS does
    (:func:`cube.services.innetwork.probe_site`).

    Raises:
        BadRequest: missing or malformed fields; a site that refuses the
            credentials or is in-network over storage CUBE cannot share.
        Conflict: the name is taken.
    """
    errors: dict[str, list[str]] = {}
    if not name or len(name) > 100 or "," in name:
        errors["name"] = ["1 to 100 characters, no commas"]
    if not compute_url.startswith(("http://", "https://")):
        errors["compute_url"] = ["must be an http(s) URL"]
    capacity: dict[str, int] = {}
    for field, raw in (("gpus", gpus), ("max_concurrent_jobs", max_concurrent_jobs)):
        try:
            capacity[field] = _count_field(raw)
        except ValueError as exc:
            errors[field] = [str(exc)]
    if errors:
        raise BadRequest("invalid compute resource", fields=errors)
    taken = (
        await session.exec(select(ComputeResource).where(ComputeResource.name == name))
    ).first()
    if taken is not None:
        raise Conflict(f"compute resource {name!r} exists", fields={"name": ["already exists"]})
    url = compute_url if compute_url.endswith("/") else compute_url + "/"
    auth_url = compute_auth_url or url + "auth-token/"
    innetwork = await probe_site(url, compute_user, compute_password, auth_url)
    resource = ComputeResource(
        name=name,
        compute_url=url,
        compute_auth_url=auth_url,
        compute_user=compute_user,
        compute_password=compute_password,
        compute_innetwork=innetwork,
        description=description,
        max_job_exec_seconds=max_job_exec_seconds,
        gpus=capacity["gpus"],
        max_concurrent_jobs=capacity["max_concurrent_jobs"],
    )
    session.add(resource)
    await session.flush()
    return resource


def _count_field(raw: Any) -> int:
    """A non-negative integer from JSON or form input; ``None`` or ``""`` is 0.

    Raises:
        ValueError: anything else, with the message shown to the client.
    """
    if raw is None or raw == "":
        return 0
    # bool is an int in Python, but ``true`` is no count
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        value = int(raw.strip())
    else:
        raise ValueError(f"must be a non-negative integer, got {raw!r}")
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"must be between 0 and {MAX_COUNT}, got {value}")
    return value


async def resources_by_names(session: AsyncSession, names: Sequence[str]) -> list[ComputeResource]:
    """Compute resources by name, in order.

    Raises:
        BadRequest: a name is unknown.
    """
    found: list[ComputeResource] = []
    for name in names:
        row = (
            await session.exec(select(ComputeResource).where(ComputeResource.name == name))
        ).first()
        if row is None:
            raise BadRequest.field("compute_names", f"unknown compute resource {name!r}")
        found.append(row)
    return found


async def register_plugin(
    session: AsyncSession, raw_descriptor: bytes | str | dict[str, object], compute_names: list[str]
) -> Plugin:
    """Register a plugin from its descriptor on the named compute resources.

    Registering the same name and version again only adds compute resources
    when the image is the same (idempotent, as the ChRIS admin API).

    Raises:
        BadRequest: malformed descriptor or unknown compute resource.
        Conflict: same name and version with a different image.
    """
    try:
        desc = PluginDescriptor.parse(raw_descriptor)  # type: ignore[arg-type]
    except DescriptorError as exc:
        fields: dict[str, list[str]] = {}
        for field, msg in exc.errors or [("descriptor", str(exc))]:
            fields.setdefault(f"descriptor.{field}" if field != "descriptor" else field, []).append(
                msg
            )
        raise BadRequest(str(exc), fields=fields) from exc
    if not compute_names:
        raise BadRequest.field("compute_names", "at least one compute resource is required")
    resources = await resources_by_names(session, compute_names)

    meta = (await session.exec(select(PluginMeta).where(PluginMeta.name == desc.name))).first()
    if meta is None:
        meta = PluginMeta(
            name=desc.name,
            title=desc.title,
            type=desc.type.value,
            public_repo=desc.public_repo,
            license=desc.license,
            icon=desc.icon,
            category=desc.category,
            authors=desc.authors,
            documentation=desc.documentation,
        )
        session.add(meta)
        await session.flush()
    elif meta.type != desc.type.value:
        raise Conflict(f"plugin {desc.name!r} is registered as type {meta.type}, not {desc.type}")

    plugin = (
        await session.exec(
            select(Plugin).where(Plugin.meta_id == meta.id, Plugin.version == desc.version)
        )
    ).first()
    if plugin is not None:
        if plugin.dock_image != desc.dock_image:
            raise Conflict(
                f"{desc.name} {desc.version} is registered with image {plugin.dock_image}",
                fields={"version": ["this name and version exist with another image"]},
            )
    else:
        assert meta.id is not None
        plugin = Plugin(
            meta_id=meta.id,
            version=desc.version,
            dock_image=desc.dock_image,
            execshell=desc.execshell,
            selfpath=desc.selfpath,
            selfexec=desc.selfexec,
            description=desc.description,
            min_number_of_workers=desc.min_number_of_workers,
            max_number_of_workers=desc.max_number_of_workers,
            min_cpu_limit=desc.min_cpu_limit,
            max_cpu_limit=desc.max_cpu_limit,
            min_memory_limit=desc.min_memory_limit,
            max_memory_limit=desc.max_memory_limit,
            min_gpu_limit=desc.min_gpu_limit,
            max_gpu_limit=desc.max_gpu_limit or 0,
        )
        session.add(plugin)
        await session.flush()
        assert plugin.id is not None
        for p in desc.parameters:
            session.add(
                PluginParameter(
                    plugin_id=plugin.id,
                    name=p.name,
                    type=p.type.value,
                    optional=p.optional,
                    default=p.default,
                    flag=p.flag,
                    short_flag=p.short_flag or p.flag,
                    action=(p.action.value if p.action else "store"),
                    help=p.help,
                    ui_exposed=p.ui_exposed,
                )
            )
    assert plugin.id is not None
    linked = set(
        (
            await session.exec(
                select(PluginComputeResource.compute_resource_id).where(
                    PluginComputeResource.plugin_id == plugin.id
                )
            )
        ).all()
    )
    for r in resources:
        if r.id not in linked:
            assert r.id is not None
            session.add(PluginComputeResource(plugin_id=plugin.id, compute_resource_id=r.id))
    await session.flush()
    return plugin


async def add_compute_resources(
    session: AsyncSession, plugin_id: int, compute_names: Sequence[str]
) -> tuple[Plugin, PluginMeta]:
    """Make a registered plugin runnable on more compute resources (admin PUT).

    Raises:
        NotFound: no such plugin.
        BadRequest: no name, or an unknown compute resource.
    """
    plugin, meta = await get_plugin(session, plugin_id)
    if not compute_names:
        raise BadRequest.field("compute_names", "at least one compute resource is required")
    linked = {r.id for r in await plugin_resources(session, plugin_id)}
    for r in await resources_by_names(session, compute_names):
        if r.id not in linked:
            assert r.id is not None
            session.add(PluginComputeResource(plugin_id=plugin_id, compute_resource_id=r.id))
            linked.add(r.id)
    await session.flush()
    return plugin, meta


async def get_plugin(session: AsyncSession, plugin_id: int) -> tuple[Plugin, PluginMeta]:
    """A plugin and its meta.

    Raises:
        NotFound: no such plugin.
    """
    # one query for both (each instance created or submitted asks for them)
    found = (
        await session.exec(
            select(Plugin, PluginMeta)
            .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
            .where(col(Plugin.id) == plugin_id)
        )
    ).first()
    if found is None:
        raise NotFound("Not found.")
    return found[0], found[1]


async def plugin_parameters(session: AsyncSession, plugin_id: int) -> list[PluginParameter]:
    """A plugin's parameters in declaration order."""
    rows = await session.exec(
        select(PluginParameter)
        .where(PluginParameter.plugin_id == plugin_id)
        .order_by(col(PluginParameter.id))
    )
    return list(rows.all())


async def plugin_resources(session: AsyncSession, plugin_id: int) -> list[ComputeResource]:
    """Compute resources a plugin is registered on, oldest first."""
    rows = await session.exec(
        select(ComputeResource)
        .join(
            PluginComputeResource,
            col(PluginComputeResource.compute_resource_id) == col(ComputeResource.id),
        )
        .where(PluginComputeResource.plugin_id == plugin_id)
        .order_by(col(ComputeResource.id))
    )
    return list(rows.all())
