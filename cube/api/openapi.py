"""The OpenAPI 3.1 document of CUBE's API, built from the routes' own descriptions.

Every route registered through :class:`cube.api.render.ApiRoutes` already
says what it returns (a wire model, one or a page), which search filters it
takes and which fields its body has; this module only reshapes that, so the
document cannot drift from the handlers. Served at ``/schema/`` (as CUBE)
and ``/api/v1/schema/``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import cube
from cube.api.render import COLLECTION_JSON, ENDPOINTS, JSON, ApiRoutes, Endpoint

routes = ApiRoutes()

_PARAM = re.compile(r"\{(\w+)\}")
_KINDS = {int: "integer", bool: "boolean", float: "number", str: "string"}


def _page_schema(ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["count", "next", "previous", "results"],
        "properties": {
            "count": {"type": "integer"},
            "next": {"type": ["string", "null"]},
            "previous": {"type": ["string", "null"]},
            "results": {"type": "array", "items": ref},
            "collection_links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(ep.canonical)
    ]
    if ep.many:
        for name in ("limit", "offset"):
            params.append({"name": name, "in": "query", "schema": {"type": "integer"}})
    for f in ep.filters:
        schema: dict[str, Any] = (
            {"type": "string", "format": "date-time"}
            if f.kind.__name__ == "datetime"
            else {"type": _KINDS.get(f.kind, "string")}
        )
        params.append({"name": f.name, "in": "query", "schema": schema})
    return params


def build_document() -> dict[str, Any]:
    """The OpenAPI document of every described route."""
    models: dict[str, type[BaseModel]] = {
        ep.model.__name__: ep.model for ep in ENDPOINTS.values() if ep.model is not None
    }
    _, defs = models_json_schema(
        [(m, "serialization") for m in models.values()],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), ep in sorted(ENDPOINTS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{method.lower()}_{ep.handler.__name__}_{len(paths)}",
            "parameters": _parameters(ep),
            "responses": {},
        }
        if not ep.public:
            op["security"] = [{"token": []}, {"basic": []}]
        if ep.body:
            props: dict[str, Any] = {name: {} for name in ep.body}
            op["requestBody"] = {
                "content": {
                    JSON: {"schema": {"type": "object", "properties": props}},
                    COLLECTION_JSON: {
                        "schema": {
                            "type": "object",
                            "description": "A Collection+JSON template with these fields: "
                            + ", ".join(ep.body),
                        }
                    },
                }
            }
        ok = "201" if method == "POST" else "204" if method == "DELETE" else "200"
        if ep.model is not None:
            ref = {"$ref": f"#/components/schemas/{ep.model.__name__}"}
            body = _page_schema(ref) if ep.many else ref
            op["responses"][ok] = {
                "description": "OK",
                "content": {
                    JSON: {"schema": body},
                    COLLECTION_JSON: {"schema": {"type": "object"}},
                },
            }
        else:
            op["responses"][ok] = {"description": "OK"}
        op["responses"]["default"] = {"description": "Error: DRF JSON or a Collection+JSON error"}
        paths.setdefault(path_key(path), {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "CUBE (ChRIS-compatible) API", "version": cube.__version__},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }


def path_key(path: str) -> str:
    """An aiohttp route path as an OpenAPI path (regex constraints dropped)."""
    return ENDPOINT_CANONICAL.sub(r"{\1}", path)


ENDPOINT_CANONICAL = re.compile(r"\{(\w+):[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")


@routes.get("/schema/", public=True)
@routes.get("/api/v1/schema/", public=True)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.json_response(build_document())
