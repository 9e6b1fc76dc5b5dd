"""The ChRIS resource paths of ``reference/chris.md`` §1.3 that CUBE serves are
all routed, with the methods ChRIS allows on them (a guard against a route
dropped by a refactoring; the contract tests check what each one answers)."""

from __future__ import annotations

from pathlib import Path

from cube.app import create_app
from cube.settings import CubeSettings

#: (method, path as aiohttp names it) of the ChRIS API; ``{id}`` is any id.
CHRIS_ROUTES = [
    ("POST", "/api/v1/auth-token/"),
    ("GET", "/api/v1/users/"),
    ("POST", "/api/v1/users/"),
    ("GET", "/api/v1/users/{id}/"),
    ("PUT", "/api/v1/users/{id}/"),
    ("GET", "/api/v1/users/{id}/groups/"),
    ("GET", "/api/v1/groups/"),
    ("GET", "/api/v1/groups/search/"),
    ("GET", "/api/v1/groups/{id}/"),
    ("GET", "/api/v1/groups/{id}/users/"),
    ("GET", "/api/v1/groups/{id}/users/search/"),
    ("GET", "/api/v1/groups/users/{id}/"),
    ("GET", "/api/v1/downloadtokens/"),
    ("GET", "/api/v1/downloadtokens/search/"),
    ("GET", "/api/v1/downloadtokens/{id}/"),
    ("GET", "/api/v1/chrisinstance/{id}/"),
    ("GET", "/api/v1/"),
    ("GET", "/api/v1/search/"),
    ("GET", "/api/v1/{id}/"),
    ("PUT", "/api/v1/{id}/"),
    ("DELETE", "/api/v1/{id}/"),
    ("GET", "/api/v1/publicfeeds/"),
    ("GET", "/api/v1/publicfeeds/search/"),
    ("GET", "/api/v1/{id}/plugininstances/"),
    ("GET", "/api/v1/{id}/grouppermissions/"),
    ("GET", "/api/v1/{id}/grouppermissions/search/"),
    ("GET", "/api/v1/grouppermissions/{id}/"),
    ("GET", "/api/v1/{id}/userpermissions/"),
    ("GET", "/api/v1/{id}/userpermissions/search/"),
    ("GET", "/api/v1/userpermissions/{id}/"),
    ("GET", "/api/v1/note{id}/"),
    ("PUT", "/api/v1/note{id}/"),
    ("GET", "/api/v1/{id}/comments/"),
    ("GET", "/api/v1/{id}/comments/search/"),
    ("GET", "/api/v1/comments/{id}/"),
    ("GET", "/api/v1/tags/"),
    ("GET", "/api/v1/tags/search/"),
    ("GET", "/api/v1/tags/{id}/"),
    ("GET", "/api/v1/tags/{id}/feeds/"),
    ("GET", "/api/v1/tags/{id}/taggings/"),
    ("GET", "/api/v1/{id}/tags/"),
    ("GET", "/api/v1/{id}/taggings/"),
    ("GET", "/api/v1/taggings/{id}/"),
    ("GET", "/api/v1/computeresources/"),
    ("GET", "/api/v1/computeresources/search/"),
    ("GET", "/api/v1/computeresources/{id}/"),
    ("GET", "/api/v1/plugins/metas/"),
    ("GET", "/api/v1/plugins/metas/search/"),
    ("GET", "/api/v1/plugins/metas/{id}/"),
    ("GET", "/api/v1/plugins/metas/{id}/plugins/"),
    ("GET", "/api/v1/plugins/"),
    ("GET", "/api/v1/plugins/search/"),
    ("GET", "/api/v1/plugins/{id}/"),
    ("GET", "/api/v1/plugins/{id}/parameters/"),
    ("GET", "/api/v1/plugins/parameters/{id}/"),
    ("GET", "/api/v1/plugins/{id}/computeresources/"),
    ("POST", "/chris-admin/api/v1/"),
    ("GET", "/chris-admin/api/v1/{id}/"),
    ("GET", "/chris-admin/api/v1/computeresources/"),
    ("GET", "/chris-admin/api/v1/computeresources/{id}/"),
    ("GET", "/api/v1/plugins/{id}/instances/"),
    ("POST", "/api/v1/plugins/{id}/instances/"),
    ("GET", "/api/v1/plugins/instances/"),
    ("GET", "/api/v1/plugins/instances/search/"),
    ("GET", "/api/v1/plugins/instances/{id}/"),
    ("PUT", "/api/v1/plugins/instances/{id}/"),
    ("DELETE", "/api/v1/plugins/instances/{id}/"),
    ("GET", "/api/v1/plugins/instances/{id}/descendants/"),
    ("GET", "/api/v1/plugins/instances/{id}/parameters/"),
    ("GET", "/api/v1/plugins/instances/{id}/splits/"),
    ("POST", "/api/v1/plugins/instances/{id}/splits/"),
    ("GET", "/api/v1/plugins/instances/splits/{id}/"),
    ("GET", "/api/v1/pipelines/"),
    ("POST", "/api/v1/pipelines/"),
    ("GET", "/api/v1/pipelines/search/"),
    ("GET", "/api/v1/pipelines/{id}/"),
    ("PUT", "/api/v1/pipelines/{id}/"),
    ("DELETE", "/api/v1/pipelines/{id}/"),
    ("GET", "/api/v1/pipelines/{id}/json/"),
    ("GET", "/api/v1/pipelines/{id}/plugins/"),
    ("GET", "/api/v1/pipelines/{id}/pipings/"),
    ("GET", "/api/v1/pipelines/{id}/parameters/"),
    ("GET", "/api/v1/pipelines/pipings/{id}/"),
    ("GET", "/api/v1/pipelines/sourcefiles/"),
    ("POST", "/api/v1/pipelines/sourcefiles/"),
    ("GET", "/api/v1/pipelines/sourcefiles/search/"),
    ("GET", "/api/v1/pipelines/sourcefiles/{id}/"),
    ("GET", "/api/v1/pipelines/{id}/workflows/"),
    ("POST", "/api/v1/pipelines/{id}/workflows/"),
    ("GET", "/api/v1/pipelines/workflows/"),
    ("GET", "/api/v1/pipelines/workflows/search/"),
    ("GET", "/api/v1/pipelines/workflows/{id}/"),
    ("GET", "/api/v1/pipelines/workflows/{id}/plugininstances/"),
    ("GET", "/api/v1/userfiles/"),
    ("POST", "/api/v1/userfiles/"),
    ("GET", "/api/v1/userfiles/search/"),
    ("GET", "/api/v1/userfiles/{id}/"),
    ("GET", "/api/v1/pacs/"),
    ("GET", "/api/v1/pacs/queries/"),
    ("GET", "/api/v1/pacs/series/"),
    ("GET", "/api/v1/pacs/files/"),
    ("GET", "/api/v1/filebrowser/"),
    ("GET", "/api/v1/filebrowser/search/"),
    ("GET", "/api/v1/filebrowser/{id}/"),
    ("GET", "/api/v1/filebrowser/{id}/children/"),
    ("GET", "/api/v1/filebrowser/{id}/files/"),
    ("GET", "/api/v1/filebrowser/{id}/linkfiles/"),
    ("GET", "/api/v1/filebrowser/files/{id}/"),
    ("GET", "/api/v1/filebrowser/linkfiles/{id}/"),
    ("GET", "/api/v1/filebrowser/{id}/grouppermissions/"),
    ("POST", "/api/v1/filebrowser/{id}/grouppermissions/"),
    ("GET", "/api/v1/filebrowser/{id}/grouppermissions/search/"),
    ("GET", "/api/v1/filebrowser/grouppermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/grouppermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/grouppermissions/{id}/"),
    ("GET", "/api/v1/filebrowser/{id}/userpermissions/"),
    ("POST", "/api/v1/filebrowser/{id}/userpermissions/"),
    ("GET", "/api/v1/filebrowser/{id}/userpermissions/search/"),
    ("GET", "/api/v1/filebrowser/userpermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/userpermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/userpermissions/{id}/"),
    ("GET", "/api/v1/filebrowser/files/{id}/grouppermissions/"),
    ("POST", "/api/v1/filebrowser/files/{id}/grouppermissions/"),
    ("GET", "/api/v1/filebrowser/files/{id}/grouppermissions/search/"),
    ("GET", "/api/v1/filebrowser/files/grouppermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/files/grouppermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/files/grouppermissions/{id}/"),
    ("GET", "/api/v1/filebrowser/files/{id}/userpermissions/"),
    ("POST", "/api/v1/filebrowser/files/{id}/userpermissions/"),
    ("GET", "/api/v1/filebrowser/files/{id}/userpermissions/search/"),
    ("GET", "/api/v1/filebrowser/files/userpermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/files/userpermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/files/userpermissions/{id}/"),
    ("GET", "/api/v1/filebrowser/linkfiles/{id}/grouppermissions/"),
    ("POST", "/api/v1/filebrowser/linkfiles/{id}/grouppermissions/"),
    ("GET", "/api/v1/filebrowser/linkfiles/{id}/grouppermissions/search/"),
    ("GET", "/api/v1/filebrowser/linkfiles/grouppermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/linkfiles/grouppermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/linkfiles/grouppermissions/{id}/"),
    ("GET", "/api/v1/filebrowser/linkfiles/{id}/userpermissions/"),
    ("POST", "/api/v1/filebrowser/linkfiles/{id}/userpermissions/"),
    ("GET", "/api/v1/filebrowser/linkfiles/{id}/userpermissions/search/"),
    ("GET", "/api/v1/filebrowser/linkfiles/userpermissions/{id}/"),
    ("PUT", "/api/v1/filebrowser/linkfiles/userpermissions/{id}/"),
    ("DELETE", "/api/v1/filebrowser/linkfiles/userpermissions/{id}/"),
    # the v5 links older clients follow
    ("GET", "/api/v1/files/"),
    ("GET", "/api/v1/files/search/"),
    ("GET", "/api/v1/files/{id}/"),
    ("GET", "/api/v1/{id}/files/"),
    ("GET", "/api/v1/plugins/instances/{id}/files/"),
    ("GET", "/api/v1/pacsfiles/"),
    ("GET", "/api/v1/servicefiles/"),
]


def routed(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path with every variable written ``{id}``) of the app's routes."""
    app = create_app(CubeSettings(home=tmp_path))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = str(info.get("formatter") or info.get("path") or "")
        for name in ("id", "type", "name"):
            path = path.replace("{" + name + "}", "{id}")
        found.add((route.method, path))
    return found


def test_every_chris_route_is_served(tmp_path: Path) -> None:
    found = routed(tmp_path)
    missing = [r for r in CHRIS_ROUTES if r not in found]
    assert missing == []


def test_the_route_listing_sees_a_missing_route(tmp_path: Path) -> None:
    # the listing itself: a path CUBE does not serve is reported missing
    assert ("GET", "/api/v1/uploadedfiles/") not in routed(tmp_path)
    assert ("DELETE", "/api/v1/plugins/instances/{id}/splits/") not in routed(tmp_path)
