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


async def test_openapi_describes_the_file_browser_grants(api: TestClient) -> None:
    paths = (await (await api.get("/api/v1/schema/")).json())["paths"]
    schemas = {
        "/api/v1/filebrowser/{id}/userpermissions/": "FolderUserPermission",
        "/api/v1/filebrowser/files/{id}/grouppermissions/": "FileGroupPermission",
        "/api/v1/filebrowser/linkfiles/{id}/userpermissions/": "LinkFileUserPermission",
    }
    for path, name in schemas.items():
        assert set(paths[path]) == {"get", "post"}, path
        page = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert page["properties"]["results"]["items"] == {"$ref": f"#/components/schemas/{name}"}
        assert "security" in paths[path]["get"]
    search = paths["/api/v1/filebrowser/{id}/grouppermissions/search/"]["get"]
    assert {"id", "permission", "group_name"} <= {p["name"] for p in search["parameters"]}
    detail = paths["/api/v1/filebrowser/files/userpermissions/{id}/"]
    assert set(detail) == {"get", "put", "delete"}
