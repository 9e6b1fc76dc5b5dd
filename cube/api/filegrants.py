"""Handlers: the ``grouppermissions`` and ``userpermissions`` sub-resources of
file browser folders, files and link files (ChRIS v6).

For each kind (``filebrowser/<id>/``, ``filebrowser/files/<id>/``,
``filebrowser/linkfiles/<id>/``): list, search and create under the thing,
and detail, change (``permission``) and delete at
``filebrowser[/files|/linkfiles]/{user,group}permissions/<id>/``. Who may do
what is :mod:`cube.services.filegrants`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from sqlmodel import col, select

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    fetch_page,
    int_param,
    model_response,
    origin,
    read_body,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import Group, User
from cube.services import filegrants as gsvc
from cube.services.filegrants import TargetKind

routes = ApiRoutes()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Spec:
    """One sub-resource: grants on ``kind`` to users or to groups."""

    kind: TargetKind
    #: ``user`` or ``group``.
    who: str
    #: The URL of the things of ``kind``, e.g. ``/api/v1/filebrowser/files/``.
    prefix: str
    wire: type[BaseModel]

    @property
    def model(self) -> Any:
        """The grant table."""
        if self.who == "user":
            return gsvc.user_model(self.kind)
        return gsvc.group_model(self.kind)

    @property
    def subject(self) -> Any:
        """The table granted to (``User`` or ``Group``)."""
        return User if self.who == "user" else Group

    @property
    def target_column(self) -> Any:
        return self.model.folder_id if self.kind is TargetKind.FOLDER else self.model.file_id

    @property
    def subject_column(self) -> Any:
        return self.model.user_id if self.who == "user" else self.model.group_id

    def filters(self) -> tuple[Filter, ...]:
        """Search filters: ``id``, ``permission`` and ``username`` or ``group_name``."""
        by_name = (
            Filter("username", User.username)
            if self.who == "user"
            else Filter("group_name", Group.name)
        )
        return (
            Filter("id", self.model.id, int),
            Filter("permission", self.model.permission),
            by_name,
        )


def _list_handler(spec: _Spec) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        """The grants of a folder, file or link file the user may read."""
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            target = await gsvc.readable_target(s, user, spec.kind, int_param(request, "id"))
            q = (
                select(spec.model, spec.subject)
                .join(spec.subject, col(spec.subject.id) == col(spec.subject_column))
                .where(spec.target_column == target.id)
            )
            q = apply_filters(request, q, search_filters(request))
            page = await fetch_page(request, s, q, col(spec.model.id))
            base = origin(request)
            return page.response(
                request,
                [ser.file_grant(base, spec.kind, g, target.path, who) for g, who in page.rows],
            )

    return handler


def _create_handler(spec: _Spec) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        """Share a folder, file or link file: ``username`` or ``grpname``, and
        ``permission`` (``r``, the default, or ``w``); its owner or staff."""
        data = await read_body(request)
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            target = await gsvc.owned_target(s, user, spec.kind, int_param(request, "id"))
            permission = gsvc.check_permission(data.get("permission"))
            subject: User | Group
            if spec.who == "user":
                name = str(data.get("username") or "")
                grant, subject = await gsvc.grant_user(s, user, target, name, permission)
            else:
                # ChRIS names it ``grpname`` here (``grp_name`` for feeds): take both
                name = str(data.get("grpname") or data.get("grp_name") or "")
                grant, subject = await gsvc.grant_group(s, user, target, name, permission)
            body = ser.file_grant(origin(request), spec.kind, grant, target.path, subject)
            await s.commit()
            return model_response(body, 201)

    return handler


async def _subject(s: Any, spec: _Spec, grant: Any) -> User | Group:
    found = await s.get(spec.subject, grant.user_id if spec.who == "user" else grant.group_id)
    assert found is not None
    return found  # type: ignore[no-any-return]


def _detail_handler(spec: _Spec) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        """One grant on a folder, file or link file the user may read."""
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            grant, target = await gsvc.readable_grant(
                s, user, spec.kind, spec.model, int_param(request, "id")
            )
            subject = await _subject(s, spec, grant)
            return model_response(
                ser.file_grant(origin(request), spec.kind, grant, target.path, subject)
            )

    return handler


def _update_handler(spec: _Spec) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        """Change a grant's ``permission`` (the owner of what it is on, or staff)."""
        data = await read_body(request)
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            if "permission" in data:
                grant, target = await gsvc.change_grant(
                    s, user, spec.kind, spec.model, int_param(request, "id"), data["permission"]
                )
            else:
                grant, target = await gsvc.readable_grant(
                    s, user, spec.kind, spec.model, int_param(request, "id")
                )
            subject = await _subject(s, spec, grant)
            body = ser.file_grant(origin(request), spec.kind, grant, target.path, subject)
            await s.commit()
            return model_response(body)

    return handler


def _delete_handler(spec: _Spec) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        """Revoke a grant (the owner of what it is on, or staff)."""
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            await gsvc.revoke(s, user, spec.kind, spec.model, int_param(request, "id"))
            await s.commit()
        return web.Response(status=204)

    return handler


SPECS = (
    _Spec(TargetKind.FOLDER, "user", "/api/v1/filebrowser/", schema.FolderUserPermission),
    _Spec(TargetKind.FOLDER, "group", "/api/v1/filebrowser/", schema.FolderGroupPermission),
    _Spec(TargetKind.FILE, "user", "/api/v1/filebrowser/files/", schema.FileUserPermission),
    _Spec(TargetKind.FILE, "group", "/api/v1/filebrowser/files/", schema.FileGroupPermission),
    _Spec(
        TargetKind.LINK_FILE,
        "user",
        "/api/v1/filebrowser/linkfiles/",
        schema.LinkFileUserPermission,
    ),
    _Spec(
        TargetKind.LINK_FILE,
        "group",
        "/api/v1/filebrowser/linkfiles/",
        schema.LinkFileGroupPermission,
    ),
)


def _register(spec: _Spec) -> None:
    under = f"{spec.prefix}{{id:\\d+}}/{spec.who}permissions/"
    detail = f"{spec.prefix}{spec.who}permissions/{{id:\\d+}}/"
    listing = _list_handler(spec)
    routes.get(under, model=spec.wire, many=True)(listing)
    routes.get(f"{under}search/", model=spec.wire, many=True, filters=spec.filters())(listing)
    body = ("username", "permission") if spec.who == "user" else ("grpname", "permission")
    routes.post(under, model=spec.wire, body=body)(_create_handler(spec))
    routes.get(detail, model=spec.wire)(_detail_handler(spec))
    routes.put(detail, model=spec.wire, body=("permission",))(_update_handler(spec))
    routes.delete(detail)(_delete_handler(spec))


for _spec in SPECS:
    _register(_spec)
