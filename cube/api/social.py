"""Handlers: a feed's note, comments, tags and taggings, and feed sharing.

Who may do what (see :mod:`cube.services.feeds`): readers of a feed (owner,
shared with them, public) read its note, comments and taggings and may
comment; only its owner (or staff) edits the note, tags it and shares it.
Tags belong to their owner.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    anonymous_or,
    current_user,
    fetch_page,
    get_or_404,
    int_param,
    model_response,
    origin,
    read_body,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import (
    Comment,
    Feed,
    FeedGroupPermission,
    FeedUserPermission,
    Group,
    Tag,
    Tagging,
    User,
)
from cube.errors import BadRequest, Conflict, NotFound, PermissionDenied
from cube.services import feeds as fsvc

routes = ApiRoutes()


def _text(data: dict[str, Any], name: str, limit: int | None = None) -> str | None:
    """An optional text field of a body, bounded to ``limit`` characters."""
    if name not in data:
        return None
    value = str(data[name] if data[name] is not None else "")
    if limit is not None and len(value) > limit:
        raise BadRequest.field(name, f"at most {limit} characters")
    return value


# -- note --------------------------------------------------------------------------


@routes.get("/api/v1/note{id:\\d+}/", model=schema.Note, public=True)
async def get_note(request: web.Request) -> web.Response:
    """The note of a feed (path ``note<feed id>/``, as ChRIS; a public feed's: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        assert feed.id is not None
        note = await fsvc.note_of(s, feed.id)
        await s.commit()
        return model_response(ser.note(origin(request), note))


@routes.put("/api/v1/note{id:\\d+}/", model=schema.Note, body=("title", "content"))
async def update_note(request: web.Request) -> web.Response:
    """Edit the note of a feed (owner only)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        assert feed.id is not None
        note = await fsvc.note_of(s, feed.id)
        if (title := _text(data, "title", 100)) is not None:
            note.title = title
        if (content := _text(data, "content")) is not None:
            note.content = content
        s.add(note)
        await s.commit()
        return model_response(ser.note(origin(request), note))


# -- comments ----------------------------------------------------------------------

COMMENT_FILTERS = (
    Filter("id", Comment.id, int),
    Filter("title", Comment.title, op="icontains"),
    Filter("owner_username", User.username),
)


async def _comment_page(request: web.Request, s: AsyncSession, q: Any) -> web.Response:
    page = await fetch_page(request, s, q, col(Comment.id))
    base = origin(request)
    return page.response(request, [ser.comment(base, c, u.username) for c, u in page.rows])


@routes.get("/api/v1/{id:\\d+}/comments/", model=schema.Comment, many=True, public=True)
@routes.get(
    "/api/v1/{id:\\d+}/comments/search/",
    model=schema.Comment,
    many=True,
    filters=COMMENT_FILTERS,
    public=True,
)
async def feed_comments(request: web.Request) -> web.Response:
    """The comments on a feed the user may read (a public feed's: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        q = (
            select(Comment, User)
            .join(User, col(User.id) == col(Comment.owner_id))
            .where(Comment.feed_id == feed.id)
        )
        return await _comment_page(request, s, apply_filters(request, q, search_filters(request)))


@routes.post("/api/v1/{id:\\d+}/comments/", model=schema.Comment, body=("title", "content"))
async def add_comment(request: web.Request) -> web.Response:
    """Comment on a feed the user may read."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.readable_feed(s, user, int_param(request, "id"))
        assert feed.id is not None and user.id is not None
        comment = Comment(
            feed_id=feed.id,
            owner_id=user.id,
            title=_text(data, "title", 100) or "",
            content=_text(data, "content") or "",
        )
        s.add(comment)
        await s.commit()
        return model_response(ser.comment(origin(request), comment, user.username), 201)


async def _comment(s: AsyncSession, user: User, comment_id: int) -> Comment:
    comment = await get_or_404(s, Comment, comment_id)
    await fsvc.readable_feed(s, user, comment.feed_id)
    return comment


@routes.get("/api/v1/comments/{id:\\d+}/", model=schema.Comment)
async def get_comment(request: web.Request) -> web.Response:
    """One comment."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        comment = await _comment(s, user, int_param(request, "id"))
        owner = await s.get(User, comment.owner_id)
        assert owner is not None
        return model_response(ser.comment(origin(request), comment, owner.username))


@routes.put("/api/v1/comments/{id:\\d+}/", model=schema.Comment, body=("title", "content"))
async def update_comment(request: web.Request) -> web.Response:
    """Edit one's own comment."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        comment = await _comment(s, user, int_param(request, "id"))
        if comment.owner_id != user.id and not user.is_staff:
            raise PermissionDenied("only its author may edit a comment")
        if (title := _text(data, "title", 100)) is not None:
            comment.title = title
        if (content := _text(data, "content")) is not None:
            comment.content = content
        s.add(comment)
        await s.commit()
        owner = await s.get(User, comment.owner_id)
        assert owner is not None
        return model_response(ser.comment(origin(request), comment, owner.username))


@routes.delete("/api/v1/comments/{id:\\d+}/")
async def delete_comment(request: web.Request) -> web.Response:
    """Delete a comment (its author, or the feed's owner)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        comment = await _comment(s, user, int_param(request, "id"))
        feed = await s.get(Feed, comment.feed_id)
        assert feed is not None
        if user.id not in (comment.owner_id, feed.owner_id) and not user.is_staff:
            raise PermissionDenied("only its author or the feed's owner may delete a comment")
        await s.delete(comment)
        await s.commit()
    return web.Response(status=204)


# -- tags and taggings -------------------------------------------------------------

TAG_FILTERS = (
    Filter("id", Tag.id, int),
    Filter("name", Tag.name, op="icontains"),
    Filter("name_exact", Tag.name),
    Filter("color", Tag.color),
    Filter("owner_username", User.username),
)


def _tags_of(user: User) -> Any:
    return (
        select(Tag, User)
        .join(User, col(User.id) == col(Tag.owner_id))
        .where(Tag.owner_id == user.id)
    )


async def _tag_page(request: web.Request, s: AsyncSession, q: Any) -> web.Response:
    page = await fetch_page(request, s, q, col(Tag.id))
    base = origin(request)
    return page.response(request, [ser.tag(base, t, u.username) for t, u in page.rows])


@routes.get("/api/v1/tags/", model=schema.Tag, many=True, name="tag-list")
@routes.get("/api/v1/tags/search/", model=schema.Tag, many=True, filters=TAG_FILTERS)
async def list_tags(request: web.Request) -> web.Response:
    """The user's tags."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = apply_filters(request, _tags_of(user), search_filters(request))
        return await _tag_page(request, s, q)


def _tag_fields(data: dict[str, Any], tag: Tag) -> None:
    if (name := _text(data, "name", 100)) is not None:
        if not name:
            raise BadRequest.field("name", "This field may not be blank.")
        tag.name = name
    if (color := _text(data, "color", 20)) is not None:
        if not color:
            raise BadRequest.field("color", "This field may not be blank.")
        tag.color = color


@routes.post("/api/v1/tags/", model=schema.Tag, body=("name", "color"))
async def create_tag(request: web.Request) -> web.Response:
    """Create a tag (``name``, ``color``)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        assert user.id is not None
        tag = Tag(name="", color="", owner_id=user.id)
        _tag_fields(data, tag)
        if not tag.name or not tag.color:
            missing = [k for k in ("name", "color") if not getattr(tag, k)]
            raise BadRequest(
                "name and color are required",
                fields={k: ["This field is required."] for k in missing},
            )
        s.add(tag)
        await s.commit()
        return model_response(ser.tag(origin(request), tag, user.username), 201)


async def _own_tag(s: AsyncSession, user: User, tag_id: int) -> Tag:
    tag = await s.get(Tag, tag_id)
    if tag is None or (tag.owner_id != user.id and not user.is_staff):
        raise NotFound("Not found.")
    return tag


@routes.get("/api/v1/tags/{id:\\d+}/", model=schema.Tag)
async def get_tag(request: web.Request) -> web.Response:
    """One of the user's tags."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tag = await _own_tag(s, user, int_param(request, "id"))
        owner = await s.get(User, tag.owner_id)
        assert owner is not None
        return model_response(ser.tag(origin(request), tag, owner.username))


@routes.put("/api/v1/tags/{id:\\d+}/", model=schema.Tag, body=("name", "color"))
async def update_tag(request: web.Request) -> web.Response:
    """Rename or recolour a tag."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tag = await _own_tag(s, user, int_param(request, "id"))
        _tag_fields(data, tag)
        s.add(tag)
        await s.commit()
        owner = await s.get(User, tag.owner_id)
        assert owner is not None
        return model_response(ser.tag(origin(request), tag, owner.username))


@routes.delete("/api/v1/tags/{id:\\d+}/")
async def delete_tag(request: web.Request) -> web.Response:
    """Delete a tag and its taggings."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tag = await _own_tag(s, user, int_param(request, "id"))
        for tagging in (await s.exec(select(Tagging).where(Tagging.tag_id == tag.id))).all():
            await s.delete(tagging)
        await s.flush()
        await s.delete(tag)
        await s.commit()
    return web.Response(status=204)


@routes.get("/api/v1/tags/{id:\\d+}/feeds/", model=schema.Feed, many=True)
async def tag_feeds(request: web.Request) -> web.Response:
    """The feeds carrying a tag that the user may read."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tag = await _own_tag(s, user, int_param(request, "id"))
        q = (
            fsvc.visible_feeds(user)
            .join(Tagging, col(Tagging.feed_id) == col(Feed.id))
            .where(Tagging.tag_id == tag.id)
        )
        page = await fetch_page(request, s, q, col(Feed.id).desc())
        base = origin(request)
        return page.response(request, await ser.feeds(base, s, page.rows))


@routes.get("/api/v1/tags/{id:\\d+}/taggings/", model=schema.Tagging, many=True)
async def tag_taggings(request: web.Request) -> web.Response:
    """The taggings of a tag."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tag = await _own_tag(s, user, int_param(request, "id"))
        page = await fetch_page(
            request, s, select(Tagging).where(Tagging.tag_id == tag.id), col(Tagging.id)
        )
        base = origin(request)
        return page.response(request, [ser.tagging(base, t) for t in page.rows])


@routes.get("/api/v1/{id:\\d+}/tags/", model=schema.Tag, many=True, public=True)
async def feed_tags(request: web.Request) -> web.Response:
    """The tags on a feed the user may read (a public feed's: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        q = (
            select(Tag, User)
            .join(User, col(User.id) == col(Tag.owner_id))
            .join(Tagging, col(Tagging.tag_id) == col(Tag.id))
            .where(Tagging.feed_id == feed.id)
        )
        return await _tag_page(request, s, q)


@routes.get("/api/v1/{id:\\d+}/taggings/", model=schema.Tagging, many=True, public=True)
async def feed_taggings(request: web.Request) -> web.Response:
    """The taggings of a feed the user may read (a public feed's: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        page = await fetch_page(
            request, s, select(Tagging).where(Tagging.feed_id == feed.id), col(Tagging.id)
        )
        base = origin(request)
        return page.response(request, [ser.tagging(base, t) for t in page.rows])


@routes.post("/api/v1/{id:\\d+}/taggings/", model=schema.Tagging, body=("tag_id",))
async def tag_feed(request: web.Request) -> web.Response:
    """Put one of the user's tags (``tag_id``) on a feed they own."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        try:
            tag_id = int(data.get("tag_id", ""))
        except (TypeError, ValueError):
            raise BadRequest.field("tag_id", "a tag id is required") from None
        tag = await s.get(Tag, tag_id)
        if tag is None or tag.owner_id != user.id:
            raise BadRequest.field("tag_id", f"no tag {tag_id} of yours")
        found = await s.exec(
            select(Tagging).where(Tagging.tag_id == tag_id, Tagging.feed_id == feed.id)
        )
        if found.first() is not None:
            raise Conflict("the feed already has this tag")
        assert feed.id is not None
        tagging = Tagging(tag_id=tag_id, feed_id=feed.id)
        s.add(tagging)
        await s.commit()
        return model_response(ser.tagging(origin(request), tagging), 201)


async def _tagging(s: AsyncSession, user: User, tagging_id: int) -> Tagging:
    tagging = await get_or_404(s, Tagging, tagging_id)
    await fsvc.readable_feed(s, user, tagging.feed_id)
    return tagging


@routes.get("/api/v1/taggings/{id:\\d+}/", model=schema.Tagging)
async def get_tagging(request: web.Request) -> web.Response:
    """One tagging."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tagging = await _tagging(s, user, int_param(request, "id"))
        return model_response(ser.tagging(origin(request), tagging))


@routes.delete("/api/v1/taggings/{id:\\d+}/")
async def delete_tagging(request: web.Request) -> web.Response:
    """Take a tag off a feed (the feed's owner)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        tagging = await _tagging(s, user, int_param(request, "id"))
        await fsvc.owned_feed(s, user, tagging.feed_id)
        await s.delete(tagging)
        await s.commit()
    return web.Response(status=204)


# -- sharing -----------------------------------------------------------------------

USER_PERMISSION_FILTERS = (
    Filter("id", FeedUserPermission.id, int),
    Filter("username", User.username),
)
GROUP_PERMISSION_FILTERS = (
    Filter("id", FeedGroupPermission.id, int),
    Filter("group_name", Group.name),
)


@routes.get("/api/v1/{id:\\d+}/userpermissions/", model=schema.FeedUserPermission, many=True)
@routes.get(
    "/api/v1/{id:\\d+}/userpermissions/search/",
    model=schema.FeedUserPermission,
    many=True,
    filters=USER_PERMISSION_FILTERS,
)
async def user_permissions(request: web.Request) -> web.Response:
    """The users a feed is shared with (its owner sees them)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        q = (
            select(FeedUserPermission, User)
            .join(User, col(User.id) == col(FeedUserPermission.user_id))
            .where(FeedUserPermission.feed_id == feed.id)
        )
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(FeedUserPermission.id))
        base = origin(request)
        return page.response(request, [ser.user_permission(base, p, feed, u) for p, u in page.rows])


@routes.post(
    "/api/v1/{id:\\d+}/userpermissions/", model=schema.FeedUserPermission, body=("username",)
)
async def share_with_user(request: web.Request) -> web.Response:
    """Share a feed with a user (``username``): they may read it and comment."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        username = str(data.get("username", ""))
        target = (await s.exec(select(User).where(User.username == username))).first()
        if target is None:
            raise BadRequest.field("username", f"no user {username!r}")
        if target.id == feed.owner_id:
            raise BadRequest.field("username", "the owner already has the feed")
        assert feed.id is not None and target.id is not None
        perm = FeedUserPermission(feed_id=feed.id, user_id=target.id)
        s.add(perm)
        await s.commit()
        return model_response(ser.user_permission(origin(request), perm, feed, target), 201)


async def _share(s: AsyncSession, user: User, model: Any, perm_id: int) -> tuple[Any, Feed]:
    perm = await get_or_404(s, model, perm_id)
    feed = await fsvc.owned_feed(s, user, perm.feed_id)
    return perm, feed


@routes.get("/api/v1/userpermissions/{id:\\d+}/", model=schema.FeedUserPermission)
async def get_user_permission(request: web.Request) -> web.Response:
    """One share of a feed with a user (the feed's owner)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        perm, feed = await _share(s, user, FeedUserPermission, int_param(request, "id"))
        target = await s.get(User, perm.user_id)
        assert target is not None
        return model_response(ser.user_permission(origin(request), perm, feed, target))


@routes.delete("/api/v1/userpermissions/{id:\\d+}/")
async def unshare_user(request: web.Request) -> web.Response:
    """Stop sharing a feed with a user."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        perm, _ = await _share(s, user, FeedUserPermission, int_param(request, "id"))
        await s.delete(perm)
        await s.commit()
    return web.Response(status=204)


@routes.get("/api/v1/{id:\\d+}/grouppermissions/", model=schema.FeedGroupPermission, many=True)
@routes.get(
    "/api/v1/{id:\\d+}/grouppermissions/search/",
    model=schema.FeedGroupPermission,
    many=True,
    filters=GROUP_PERMISSION_FILTERS,
)
async def group_permissions(request: web.Request) -> web.Response:
    """The groups a feed is shared with (its owner sees them)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        q = (
            select(FeedGroupPermission, Group)
            .join(Group, col(Group.id) == col(FeedGroupPermission.group_id))
            .where(FeedGroupPermission.feed_id == feed.id)
        )
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(FeedGroupPermission.id))
        base = origin(request)
        return page.response(
            request, [ser.group_permission(base, p, feed, g) for p, g in page.rows]
        )


@routes.post(
    "/api/v1/{id:\\d+}/grouppermissions/",
    model=schema.FeedGroupPermission,
    body=("grp_name",),
)
async def share_with_group(request: web.Request) -> web.Response:
    """Share a feed with a group (``grp_name``, as ChRIS; ``group_name`` too)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.owned_feed(s, user, int_param(request, "id"))
        name = str(data.get("grp_name") or data.get("group_name") or "")
        group = (await s.exec(select(Group).where(Group.name == name))).first()
        if group is None:
            raise BadRequest.field("grp_name", f"no group {name!r}")
        assert feed.id is not None and group.id is not None
        perm = FeedGroupPermission(feed_id=feed.id, group_id=group.id)
        s.add(perm)
        await s.commit()
        return model_response(ser.group_permission(origin(request), perm, feed, group), 201)


@routes.get("/api/v1/grouppermissions/{id:\\d+}/", model=schema.FeedGroupPermission)
async def get_group_permission(request: web.Request) -> web.Response:
    """One share of a feed with a group (the feed's owner)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        perm, feed = await _share(s, user, FeedGroupPermission, int_param(request, "id"))
        group = await s.get(Group, perm.group_id)
        assert group is not None
        return model_response(ser.group_permission(origin(request), perm, feed, group))


@routes.delete("/api/v1/grouppermissions/{id:\\d+}/")
async def unshare_group(request: web.Request) -> web.Response:
    """Stop sharing a feed with a group."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        perm, _ = await _share(s, user, FeedGroupPermission, int_param(request, "id"))
        await s.delete(perm)
        await s.commit()
    return web.Response(status=204)
