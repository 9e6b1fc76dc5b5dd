"""The OpenAPI document: served, valid in shape, and covering every described route."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from cube.api.openapi import path_key
from cube.api.render import ENDPOINTS

pytestmark = pytest.mark.asyncio


async def test_openapi_document_covers_the_api(api: TestClient) -> None:
    resp = await api.get("/api/v1/schema/")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert (await (await api.get("/schema/")).json()) == doc
    paths = doc["paths"]
    for (method, path), ep in ENDPOINTS.items():
        assert method.lower() in paths[path_key(ep.path)], (method, path)
    plugins = paths["/api/v1/plugins/search/"]["get"]
    assert {"name_exact", "limit", "offset"} <= {p["name"] for p in plugins["parameters"]}
    page = plugins["responses"]["200"]["content"]["application/json"]["schema"]
    assert page["properties"]["results"]["items"] == {"$ref": "#/components/schemas/Plugin"}
    # every referenced schema is defined
    schemas = doc["components"]["schemas"]
    assert {"Plugin", "PluginInstance", "Feed", "UserFile", "PacsFile"} <= set(schemas)
    detail = paths["/api/v1/plugins/instances/{id}/"]
    assert set(detail) == {"get", "put", "delete"}
    assert {p["name"] for p in detail["get"]["parameters"]} == {"id"}
    assert "security" not in paths["/api/v1/auth-token/"]["post"]
    assert "security" in detail["put"] and "security" not in detail["get"]
    # a public feed and its instances are readable anonymously; changing them is not
    feed = paths["/api/v1/{id}/"]
    assert "security" not in feed["get"] and "security" in feed["put"]
    assert "security" not in paths["/api/v1/plugins/instances/{id}/descendants/"]["get"]
    assert set(paths["/api/v1/pipelines/{id}/"]) == {"get", "put", "delete"}
