"""Unit tests of pfcon's pieces that need no servers: form parsing, errors, settings."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pfcon.app import create_app, error_middleware
from pfcon.auth import TokenAuthority
from pfcon.errors import (
    AuthError,
    InvalidJob,
    JobConflict,
    JobNotFound,
    PfconError,
    PfconUnavailable,
    UpstreamError,
    error_for_status,
)
from pfcon.schema import PluginType
from pfcon.settings import PfconSettings
from pfcon.submission import check_partial_fields, descriptor_from_fields


def _fields(**overrides: list[str]) -> dict[str, list[str]]:
    fields = {
        "jid": ["chris-jid-3"],
        "args": ["--dir", "/x", "--flag"],
        "args_path_flags": ["--dir"],
        "auid": ["chris"],
        "number_of_workers": ["1"],
        "cpu_limit": ["2000"],
        "memory_limit": ["300"],
        "gpu_limit": ["0"],
        "image": ["fnndsc/pl-simpledsapp"],
        "entrypoint": ["python3", "/usr/local/bin/simpledsapp"],
        "type": ["ds"],
        "env": ["A=1", "B=x=y"],
    }
    fields.update(overrides)
    return fields


def test_a_complete_form_becomes_a_descriptor() -> None:
    job = descriptor_from_fields(_fields())
    assert job.cpu_limit == 2000
    assert job.memory_limit == 300
    assert job.args == ["--dir", "/x", "--flag"]
    assert job.entrypoint == ["python3", "/usr/local/bin/simpledsapp"]
    assert job.type is PluginType.DS
    assert job.env == ["A=1", "B=x=y"]


def test_optional_list_fields_may_be_absent() -> None:
    fields = _fields()
    for name in ("args", "args_path_flags", "env"):
        del fields[name]
    job = descriptor_from_fields(fields)
    assert (job.args, job.args_path_flags, job.env) == ([], [], [])


def test_partial_forms_are_checked_only_for_what_is_there() -> None:
    check_partial_fields({"jid": ["chris-jid-3"]})
    check_partial_fields({"jid": ["chris-jid-3"], "cpu_limit": ["10"]})
    with pytest.raises(InvalidJob, match=r"^cpu_limit"):
        check_partial_fields({"jid": ["chris-jid-3"], "cpu_limit": ["ten"]})
    with pytest.raises(InvalidJob, match=r"^jid"):
        check_partial_fields({"jid": ["bad jid"]})
    with pytest.raises(InvalidJob, match=r"^auid: field required"):
        descriptor_from_fields({k: v for k, v in _fields().items() if k != "auid"})


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidJob),
        (401, AuthError),
        (404, JobNotFound),
        (409, JobConflict),
        (413, InvalidJob),
        (422, InvalidJob),
        (500, PfconError),
        (502, UpstreamError),
        (503, PfconUnavailable),
        (504, PfconUnavailable),
    ],
)
def test_statuses_map_to_the_exception_tree(status: int, cls: type[PfconError]) -> None:
    assert error_for_status(status) is cls


def test_upstream_errors_count_as_unavailable() -> None:
    err = UpstreamError("pman failed")
    assert isinstance(err, PfconUnavailable)
    assert (err.status, err.code) == (502, "bad_gateway")
    assert InvalidJob("x", status=422).status == 422
    assert InvalidJob("x").status == 400


def test_token_authority_round_trip() -> None:
    authority = TokenAuthority(user="u", password="p", secret_key="k" * 32, lifetime=60)
    assert authority.verify_header("Bearer " + authority.login("u", "p")) == "u"
    with pytest.raises(AuthError) as caught:
        authority.login("u", "nope")
    assert caught.value.status == 400
    expired = TokenAuthority(user="u", password="p", secret_key="k" * 32, lifetime=-1)
    with pytest.raises(AuthError, match="expired"):
        authority.verify(expired.issue("u"))


def test_default_secret_key_is_fixed_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    assert PfconSettings().secret_key == PfconSettings().secret_key
    with caplog.at_level(logging.WARNING, logger="pfcon.app"):
        create_app(PfconSettings())
    assert "PFCON_SECRET_KEY" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pfcon.app"):
        create_app(PfconSettings(secret_key="a-real-secret-key-for-this-site-0123456789"))  # type: ignore[arg-type]
    assert "PFCON_SECRET_KEY" not in caplog.text


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFCON_PORT", "6006")
    monkeypatch.setenv("PFCON_PMAN_URL", "http://pman:5010/api/v1/")
    monkeypatch.setenv("PFCON_MAX_STATUS_WAIT_SECONDS", "5")
    settings = PfconSettings()
    assert (settings.port, settings.pman_url, settings.max_status_wait_seconds) == (
        6006,
        "http://pman:5010/api/v1/",
        5.0,
    )


async def test_unexpected_errors_are_500s_without_details(
    aiohttp_client: Callable[
        [web.Application], Awaitable[TestClient[web.Request, web.Application]]
    ],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def refused(request: web.Request) -> web.Response:
        raise JobConflict("job exists", status=409)

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom", boom)
    app.router.add_get("/refused", refused)
    client = await aiohttp_client(app)
    resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body == {"message": "internal server error", "code": "error"}
    assert "secret internals" in caplog.text  # logged, not sent
    resp = await client.get("/refused")
    assert resp.status == 409
    assert await resp.json() == {"message": "job exists", "code": "conflict"}
