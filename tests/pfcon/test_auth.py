"""pfcon's token authentication, through the real client and raw HTTP."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import aiohttp
import jwt
import pytest

from pfcon.app import create_app
from pfcon.auth import TokenAuthority
from pfcon.client import PfconClient
from pfcon.errors import AuthError
from tests.pfcon.conftest import PASSWORD, SECRET, USER, Site, pfcon_settings, serve


async def test_health_needs_no_login(site: Site) -> None:
    async with site.client(password="wrong") as client:
        assert await client.health() is True
    async with aiohttp.ClientSession() as http, http.get(site.pfcon_url + "health/") as resp:
        assert resp.status == 200
        assert await resp.json() == {"health": "OK"}


async def test_login_issues_hs256_token_for_the_user(site: Site) -> None:
    async with site.client() as client:
        token = await client.login()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["pfcon_user"] == USER
    assert claims["exp"] - claims["iat"] == 2 * 24 * 3600


async def test_login_accepts_a_form(site: Site) -> None:
    form = {"pfcon_user": USER, "pfcon_password": PASSWORD}
    async with (
        aiohttp.ClientSession() as http,
        http.post(site.pfcon_url + "auth-token/", data=form) as resp,
    ):
        assert resp.status == 200
        token = (await resp.json())["token"]
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["pfcon_user"] == USER


@pytest.mark.parametrize(
    "body",
    [
        {"pfcon_user": USER, "pfcon_password": "wrong"},
        {"pfcon_user": "someone", "pfcon_password": PASSWORD},
        {"pfcon_user": USER},
    ],
)
async def test_bad_credentials_are_a_400(site: Site, body: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(site.pfcon_url + "auth-token/", json=body) as resp,
    ):
        assert resp.status == 400
        assert "pfcon_password" in (await resp.json())["message"]


async def test_client_reports_bad_credentials(site: Site) -> None:
    async with site.client(password="wrong") as client:
        with pytest.raises(AuthError) as caught:
            await client.server_info()
    assert caught.value.status == 400


OTHER_SECRET = "another-secret-key-of-sufficient-length!"


def _token(secret: str, *, expires_in: timedelta) -> str:
    issued = datetime.now(UTC) - timedelta(days=3)
    authority = TokenAuthority(
        user=USER,
        password=PASSWORD,
        secret_key=secret,
        lifetime=(timedelta(days=3) + expires_in).total_seconds(),
    )
    return authority.issue(USER, now=issued)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "missing"),
        ("Bearer not-a-jwt", "garbage"),
        ("Bearer " + _token(SECRET, expires_in=timedelta(seconds=-5)), "expired"),
        (
            "Bearer "
            + _token("another-secret-key-of-sufficient-length!", expires_in=timedelta(hours=1)),
            "forged",
        ),
        ("Token " + _token(SECRET, expires_in=timedelta(hours=1)), "wrong scheme"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "jobs/"),
        ("GET", "jobs/chris-jid-1/"),
        ("DELETE", "jobs/chris-jid-1/"),
        ("GET", "jobs/chris-jid-1/file/"),
        ("POST", "jobs/"),
    ],
)
async def test_requests_without_a_valid_token_are_401(
    site: Site, header: str | None, why: str, method: str, path: str
) -> None:
    headers = {"Authorization": header} if header else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, site.pfcon_url + path, headers=headers) as resp,
    ):
        assert resp.status == 401, why
        body = await resp.json()
    assert body["message"]
    assert body["code"] == "unauthorized"


async def test_a_valid_token_is_accepted(site: Site) -> None:
    token = _token(SECRET, expires_in=timedelta(minutes=5))
    async with (
        aiohttp.ClientSession() as http,
        http.get(site.pfcon_url + "jobs/", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200


async def test_client_logs_in_again_after_pfcon_restarts_with_a_new_key(site: Site) -> None:
    """A 401 on a cached token makes the client log in once more and retry."""
    old_settings = pfcon_settings(site.pfioh_url, site.pman_url)
    new_settings = pfcon_settings(
        site.pfioh_url, site.pman_url, secret_key="a-rotated-secret-key-also-long-enough-for-hs256"
    )
    async with AsyncExitStack() as first:
        url = await serve(first, create_app(old_settings))
        client = PfconClient(url, username=USER, password=PASSWORD)
        old_token = await client.login()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with client, AsyncExitStack() as second:
        await serve(second, create_app(new_settings), port=port)
        info = await client.server_info()
        assert info.storage_env == "zipfile"
        assert await client.login() != old_token


async def test_client_gives_up_after_one_new_login(site: Site) -> None:
    """Tokens from an auth URL the server does not trust: one retry, then AuthError."""
    async with AsyncExitStack() as stack:
        foreign = await serve(
            stack,
            create_app(
                pfcon_settings(
                    site.pfioh_url,
                    site.pman_url,
                    secret_key="a-foreign-secret-key-that-is-long-enough-too",
                )
            ),
        )
        client = PfconClient(
            site.pfcon_url, username=USER, password=PASSWORD, auth_url=foreign + "auth-token/"
        )
        async with client:
            with pytest.raises(AuthError) as caught:
                await client.server_info()
    assert caught.value.status == 401
