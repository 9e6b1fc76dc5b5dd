"""pfcon's bearer tokens: HS256 JWTs carrying the ``pfcon_user`` claim.

Compatible with ChRIS pfcon (``reference/chris.md`` §3.1): CUBE logs in with
``pfcon_user``/``pfcon_password`` and sends ``Authorization: Bearer <jwt>``.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

import jwt

from pfcon.errors import AuthError

ALGORITHM = "HS256"


class TokenAuthority:
    """Checks credentials, issues tokens and verifies them.

    ``lifetime`` is in seconds; ``secret_key`` signs the tokens (HS256).
    """

    def __init__(self, *, user: str, password: str, secret_key: str, lifetime: float) -> None:
        self._user = user
        self._password = password
        self._key = secret_key
        self._lifetime = timedelta(seconds=lifetime)

    def login(self, user: str, password: str) -> str:
        """A fresh token for valid credentials.

        Raises :class:`AuthError` with status 400 (as ChRIS pfcon does) when the
        credentials are wrong.
        """
        # compare_digest on both, and always both, so timing tells nothing
        user_ok = hmac.compare_digest(user.encode(), self._user.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        if not (user_ok and password_ok):
            raise AuthError("invalid pfcon_user or pfcon_password", status=400)
        return self.issue(user)

    def issue(self, user: str, *, now: datetime | None = None) -> str:
        """A token for ``user`` valid for the configured lifetime from ``now``."""
        issued = now or datetime.now(UTC)
        claims = {"pfcon_user": user, "iat": issued, "exp": issued + self._lifetime}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> str:
        """The ``pfcon_user`` of a valid token.

        Raises :class:`AuthError` (401) when the token is malformed, badly
        signed, expired, or names another user.
        """
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid token") from exc
        user = claims.get("pfcon_user")
        if not isinstance(user, str) or not hmac.compare_digest(user.encode(), self._user.encode()):
            raise AuthError("invalid token")
        return user

    def verify_header(self, authorization: str | None) -> str:
        """The user of an ``Authorization: Bearer <jwt>`` header value.

        Raises :class:`AuthError` (401) when the header is missing or not a
        valid bearer token.
        """
        if not authorization:
            raise AuthError("authentication credentials were not provided")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected 'Authorization: Bearer <token>'")
        return self.verify(token.strip())
