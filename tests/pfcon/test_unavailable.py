"""pfcon with pfioh or pman down: clear 503s; a pfcon that is down: PfconUnavailable."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from aiohttp import web

from pfcon.app import create_app
from pfcon.client import PfconClient
from pfcon.errors import PfconUnavailable, UpstreamError
from tests.pfcon.conftest import PASSWORD, USER, copy_job, once, pfcon_settings, serve, zip_bytes_of
from tests.support.components import free_port


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/api/v1/"


async def test_services_down_are_503_with_a_clear_message() -> None:
    settings = pfcon_settings(_dead_url(), _dead_url())
    async with AsyncExitStack() as stack:
        url = await serve(stack, create_app(settings))
        client = await stack.enter_async_context(PfconClient(url, username=USER, password=PASSWORD))
        assert await client.health() is True

        with pytest.raises(PfconUnavailable) as caught:
            await client.server_info()
        assert caught.value.status == 503
        assert "pman unavailable" in caught.value.message

        with pytest.raises(PfconUnavailable) as caught:
            data = zip_bytes_of(lambda zf: zf.writestr("a.txt", "alpha"))
            await client.submit(copy_job("chris-jid-1"), once(data))
        assert caught.value.status == 503
        assert "pfioh unreachable" in caught.value.message

        with pytest.raises(PfconUnavailable) as caught:
            await client.status("chris-jid-1", wait=1)
        assert "pman unavailable" in caught.value.message

        with pytest.raises(PfconUnavailable) as caught:
            async for _ in client.iter_output("chris-jid-1"):
                pass
        assert "pfioh unreachable" in caught.value.message

        with pytest.raises(UpstreamError) as caught:
            await client.delete("chris-jid-1")
        assert caught.value.status == 502
        assert "pman unavailable" in caught.value.message
        assert "pfioh unreachable" in caught.value.message


async def test_pfcon_down_is_unavailable() -> None:
    async with PfconClient(_dead_url(), username=USER, password=PASSWORD) as client:
        assert await client.health() is False
        with pytest.raises(PfconUnavailable):
            await client.login()
        with pytest.raises(PfconUnavailable):
            await client.status("chris-jid-1")


async def test_output_broken_midway_is_unavailable_not_a_short_zip() -> None:
    """A pfioh that dies mid-transfer: the client must not mistake the bytes for a whole zip."""
    sent = b"PK\x03\x04" + b"x" * 70_000

    async def broken_outgoing(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(sent)
        assert request.transport is not None
        request.transport.close()  # the scripted failure: drop the connection mid-body
        return resp

    fake_pfioh = web.Application()
    fake_pfioh.router.add_get("/api/v1/jobs/{jid}/outgoing/", broken_outgoing)
    async with AsyncExitStack() as stack:
        pfioh_url = await serve(stack, fake_pfioh)
        url = await serve(stack, create_app(pfcon_settings(pfioh_url, _dead_url())))
        client = await stack.enter_async_context(PfconClient(url, username=USER, password=PASSWORD))
        received = bytearray()
        with pytest.raises(PfconUnavailable):
            async for chunk in client.iter_output("chris-jid-1"):
                received += chunk
        assert bytes(received) == sent[: len(received)]
        # pfcon is still fine afterwards
        assert await client.health() is True
