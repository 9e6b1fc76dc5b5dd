"""Users, passwords and API tokens.

Passwords are hashed with scrypt (stdlib); tokens are random 40-hex keys as
DRF's ``Token`` model, one per user.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import DownloadToken, Token, User, as_utc, utcnow
from cube.errors import BadRequest, Conflict, NotAuthenticated

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{4,32}$")


def hash_password(password: str) -> str:
    """Hash a password as ``scrypt$<salt>$<digest>`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)  # type: ignore[arg-type]
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


@functools.cache
def _unknown_user_hash() -> str:
    # what a password is checked against when the user does not exist: the same
    # scrypt work either way, so the answer's timing does not tell who exists
    return hash_password(secrets.token_hex(16))


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash."""
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), **_SCRYPT)  # type: ignore[arg-type]
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


async def set_password(user: User, password: str) -> None:
    """Give ``user`` a new password (at least 8 characters); the caller commits.

    Raises:
        BadRequest: the password is too short.
    """
    if len(password) < 8:
        raise BadRequest.field("password", "at least 8 characters")
    # scrypt takes tens of CPU-ms: off the event loop, which serves everyone
    user.password_hash = await asyncio.to_thread(hash_password, password)


async def create_user(
    session: AsyncSession, username: str, password: str, email: str = "", *, is_staff: bool = False
) -> User:
    """Create a user (ChRIS rules: 4–32 chars, no ``/`` or ``,``; password ≥ 8).

    Raises:
        BadRequest: invalid username or password.
        Conflict: the username is taken.
    """
    errors: dict[str, list[str]] = {}
    if not USERNAME_RE.fullmatch(username):
        errors["username"] = ["4 to 32 characters of letters, digits and _ . @ + -"]
    if len(password) < 8:
        errors["password"] = ["at least 8 characters"]
    if errors:
        raise BadRequest("invalid user", fields=errors)
    existing = await session.exec(select(User).where(User.username == username))
    if existing.first() is not None:
        raise Conflict(f"username {username!r} is taken", fields={"username": ["already exists"]})
    # scrypt takes tens of CPU-ms: off the event loop, which serves everyone
    password_hash = await asyncio.to_thread(hash_password, password)
    user = User(username=username, email=email, password_hash=password_hash, is_staff=is_staff)
    session.add(user)
    await session.flush()
    return user


async def ensure_admin(session: AsyncSession, username: str, password: str, email: str) -> User:
    """Create the admin on a fresh install; an existing admin is left as it is."""
    found = (await session.exec(select(User).where(User.username == username))).first()
    if found is not None:
        return found
    return await create_user(session, username, password, email, is_staff=True)


async def authenticate(session: AsyncSession, username: str, password: str) -> User:
    """The user with these credentials.

    Raises:
        BadRequest: wrong credentials (DRF answers 400 on auth-token).
    """
    user = (await session.exec(select(User).where(User.username == username))).first()
    stored = user.password_hash if user is not None else _unknown_user_hash()
    # scrypt takes tens of CPU-ms: off the event loop, which serves everyone
    if not await asyncio.to_thread(verify_password, password, stored) or user is None:
        raise BadRequest(
            "Unable to log in with provided credentials.",
            fields={"non_field_errors": ["Unable to log in with provided credentials."]},
        )
    return user


async def get_or_create_token(session: AsyncSession, user: User) -> str:
    """The user's API token, created on first use."""
    token = (await session.exec(select(Token).where(Token.user_id == user.id))).first()
    if token is None:
        assert user.id is not None
        token = Token(key=secrets.token_hex(20), user_id=user.id)
        session.add(token)
        await session.flush()
    return token.key


async def user_for_token(session: AsyncSession, key: str) -> User:
    """The user owning API token ``key``.

    Raises:
        NotAuthenticated: no such token.
    """
    # one query per authenticated request, not two
    user = (
        await session.exec(
            select(User).join(Token, col(Token.user_id) == col(User.id)).where(Token.key == key)
        )
    ).first()
    if user is None:
        raise NotAuthenticated("Invalid token.")
    return user


#: How long a download token lets its owner fetch files by URL (s).
DOWNLOAD_TOKEN_SECONDS = 600


async def create_download_token(session: AsyncSession, user: User) -> DownloadToken:
    """A new download token of ``user`` (for ``?download_token=`` on file URLs)."""
    assert user.id is not None
    row = DownloadToken(token=secrets.token_urlsafe(32), owner_id=user.id)
    session.add(row)
    await session.flush()
    return row


async def user_for_download_token(session: AsyncSession, key: str) -> User:
    """The owner of an unexpired download token.

    Raises:
        NotAuthenticated: no such token, or it expired.
    """
    row = (await session.exec(select(DownloadToken).where(DownloadToken.token == key))).first()
    created = as_utc(row.creation_date) if row else None
    if (
        row is None
        or created is None
        or utcnow() - created > timedelta(seconds=DOWNLOAD_TOKEN_SECONDS)
    ):
        raise NotAuthenticated("Invalid or expired download token.")
    user = await session.get(User, row.owner_id)
    if user is None:
        raise NotAuthenticated("Invalid or expired download token.")
    return user
