"""Handlers: users (sign-up, own account) and groups (staff-managed) with members."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    SETTINGS,
    fetch_page,
    get_or_404,
    int_param,
    model_response,
    origin,
    read_body,
    require_staff,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import Group, GroupMember, User
from cube.errors import NotFound
from cube.services import groups as gsvc
from cube.services import users as usvc

routes = ApiRoutes()


@routes.post(
    "/api/v1/users/",
    model=schema.User,
    body=("username", "email", "password"),
    name="user-list",
    public=True,
)
async def create_user(request: web.Request) -> web.Response:
    """Create an account (no credentials needed, unless sign-up is disabled)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        if request.app[SETTINGS].disable_user_account_creation:
            await require_staff(request, s)
        user = await usvc.create_user(
            s,
            str(data.get("username", "")),
            str(data.get("password", "")),
            str(data.get("email", "")),
        )
        await s.commit()
    return model_response(ser.user(origin(request), user), status=201)


@routes.get("/api/v1/users/", model=schema.User, many=True)
async def list_users(request: web.Request) -> web.Response:
    """One's own account as a list (staff: every account)."""
    async with request.app[SESSIONS]() as s:
        me = await require_user(request, s)
        q = select(User) if me.is_staff else select(User).where(User.id == me.id)
        page = await fetch_page(request, s, q, col(User.id))
        base = origin(request)
        return page.response(request, [ser.user(base, u) for u in page.rows])


async def _own_user(request: web.Request, s: AsyncSession) -> tuple[User, User]:
    me = await require_user(request, s)
    target = await s.get(User, int_param(request, "id"))
    if target is None or (target.id != me.id and not me.is_staff):
        raise NotFound("Not found.")
    return me, target


@routes.get("/api/v1/users/{id:\\d+}/", model=schema.User, name="user-detail")
async def get_user(request: web.Request) -> web.Response:
    """A user's account: one's own (staff: anyone's)."""
    async with request.app[SESSIONS]() as s:
        _, target = await _own_user(request, s)
        return model_response(ser.user(origin(request), target))


@routes.put("/api/v1/users/{id:\\d+}/", model=schema.User, body=("email", "password"))
async def update_user(request: web.Request) -> web.Response:
    """Change one's own email or password."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        _, target = await _own_user(request, s)
        if "email" in data:
            target.email = str(data["email"] or "")
        if "password" in data:
            await usvc.set_password(target, str(data["password"] or ""))
        s.add(target)
        await s.commit()
        return model_response(ser.user(origin(request), target))


@routes.get("/api/v1/users/{id:\\d+}/groups/", model=schema.Group, many=True)
async def user_groups(request: web.Request) -> web.Response:
    """The groups a user is in (one's own; staff: anyone's)."""
    async with request.app[SESSIONS]() as s:
        _, target = await _own_user(request, s)
        q = (
            select(Group)
            .join(GroupMember, col(GroupMember.group_id) == col(Group.id))
            .where(GroupMember.user_id == target.id)
        )
        page = await fetch_page(request, s, q, col(Group.id))
        base = origin(request)
        return page.response(request, [ser.group(base, g) for g in page.rows])


GROUP_FILTERS = (
    Filter("id", Group.id, int),
    Filter("name", Group.name),
    Filter("name_icontains", Group.name, op="icontains"),
)


@routes.get("/api/v1/groups/", model=schema.Group, many=True, name="group-list")
@routes.get("/api/v1/groups/search/", model=schema.Group, many=True, filters=GROUP_FILTERS)
async def list_groups(request: web.Request) -> web.Response:
    """Groups (any user may list them, to share feeds with one)."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        q = apply_filters(request, select(Group), search_filters(request))
        page = await fetch_page(request, s, q, col(Group.id))
        base = origin(request)
        return page.response(request, [ser.group(base, g) for g in page.rows])


@routes.post("/api/v1/groups/", model=schema.Group, body=("name",))
async def create_group(request: web.Request) -> web.Response:
    """Create a group (staff)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        group = await gsvc.create_group(s, str(data.get("name", "")))
        await s.commit()
        return model_response(ser.group(origin(request), group), status=201)


@routes.get("/api/v1/groups/{id:\\d+}/", model=schema.Group)
async def get_group(request: web.Request) -> web.Response:
    """One group."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        group = await get_or_404(s, Group, int_param(request, "id"))
        return model_response(ser.group(origin(request), group))


@routes.delete("/api/v1/groups/{id:\\d+}/")
async def delete_group(request: web.Request) -> web.Response:
    """Delete a group with its memberships and feed shares (staff)."""
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        await gsvc.delete_group(s, int_param(request, "id"))
        await s.commit()
    return web.Response(status=204)


MEMBER_FILTERS = (
    Filter("id", GroupMember.id, int),
    Filter("username", User.username),
    Filter("user_id", GroupMember.user_id, int),
)


@routes.get("/api/v1/groups/{id:\\d+}/users/", model=schema.GroupUser, many=True)
@routes.get(
    "/api/v1/groups/{id:\\d+}/users/search/",
    model=schema.GroupUser,
    many=True,
    filters=MEMBER_FILTERS,
)
async def group_members(request: web.Request) -> web.Response:
    """The members of a group."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        group = await get_or_404(s, Group, int_param(request, "id"))
        q = (
            select(GroupMember, User)
            .join(User, col(User.id) == col(GroupMember.user_id))
            .where(GroupMember.group_id == group.id)
        )
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(GroupMember.id))
        base = origin(request)
        return page.response(request, [ser.group_user(base, m, group, u) for m, u in page.rows])


@routes.post("/api/v1/groups/{id:\\d+}/users/", model=schema.GroupUser, body=("username",))
async def add_member(request: web.Request) -> web.Response:
    """Add a user to a group by ``username`` (staff)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        group = await get_or_404(s, Group, int_param(request, "id"))
        member = await gsvc.add_member(s, group, str(data.get("username", "")))
        await s.commit()
        user = await s.get(User, member.user_id)
        assert user is not None
        return model_response(ser.group_user(origin(request), member, group, user), status=201)


@routes.get("/api/v1/groups/users/{id:\\d+}/", model=schema.GroupUser)
async def get_member(request: web.Request) -> web.Response:
    """One membership."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        member = await get_or_404(s, GroupMember, int_param(request, "id"))
        group = await s.get(Group, member.group_id)
        user = await s.get(User, member.user_id)
        assert group is not None and user is not None
        return model_response(ser.group_user(origin(request), member, group, user))


@routes.delete("/api/v1/groups/users/{id:\\d+}/")
async def remove_member(request: web.Request) -> web.Response:
    """Remove a user from a group (staff)."""
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        member = await get_or_404(s, GroupMember, int_param(request, "id"))
        await s.delete(member)
        await s.commit()
    return web.Response(status=204)
