"""The registry client and plugin registration by image reference.

Three layers: reference parsing and challenge parsing (pure); a scripted
registry with bearer-token authentication on a real socket (the protocol
Docker Hub and most hosted registries speak); and Debian's real
``docker-registry`` with htpasswd authentication, with images pushed by the
Docker engine (marked ``docker``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from cube.app import create_app
from cube.errors import (
    ImageNotFound,
    InvalidImageReference,
    NotAPluginImage,
    RegistryError,
    RegistryUnauthorized,
    RegistryUnreachable,
)
from cube.registry import (
    DESCRIPTOR_LABEL,
    ImageRef,
    RegistryClient,
    RegistryCredentials,
    is_loopback,
    parse_challenge,
)
from cube.registry.schema import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from cube.services.plugin_images import descriptor_from_image
from cube.settings import CubeSettings
from tests.cube.conftest import DS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.support.busybox import ensure_busybox_image
from tests.support.components import free_port
from tests.support.registry import Registry, build_labelled_image, push

DIGEST = "sha256:" + "ab" * 32


def creds(user: str, password: str) -> RegistryCredentials:
    return RegistryCredentials.model_validate({"username": user, "password": password})


# -- references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        (
            "127.0.0.1:5000/chris/pl-dircopy:1.0.0",
            "127.0.0.1:5000",
            "chris/pl-dircopy",
            "1.0.0",
            None,
        ),
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("fnndsc/pl-dircopy", "docker.io", "fnndsc/pl-dircopy", "latest", None),
        ("docker.io/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("index.docker.io/fnndsc/pl-x:2", "docker.io", "fnndsc/pl-x", "2", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/a/b/c@" + DIGEST, "localhost:5000", "a/b/c", None, DIGEST),
        ("ghcr.io/fnndsc/pl-x:1.2@" + DIGEST, "ghcr.io", "fnndsc/pl-x", "1.2", DIGEST),
        ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None),
        ("Registry.Example.COM/team/x", "registry.example.com", "team/x", "latest", None),
        ("my_org/a.b__c-d---e:v_1.0-rc", "docker.io", "my_org/a.b__c-d---e", "v_1.0-rc", None),
        ("reg.example:443/x:" + "t" * 128, "reg.example:443", "x", "t" * 128, None),
    ],
)
def test_parse_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.reference == (digest or tag)
    assert ImageRef.parse(str(ref)) == ref  # the canonical form reads back the same


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (" ubuntu", "whitespace"),
        ("ubu ntu", "whitespace"),
        ("http://127.0.0.1:5000/x", "scheme"),
        ("chris/Pl-Dircopy", "lowercase"),
        ("127.0.0.1:5000/x:bad/tag", "repository component"),
        ("x:-tag", "malformed tag"),
        ("x:", "malformed tag"),
        ("x:" + "t" * 129, "malformed tag"),
        ("x@sha256:abc", "digest"),
        ("x@sha256:" + "ab" * 40, "64"),
        ("x@notadigest", "digest"),
        ("127.0.0.1:5000/", "no repository"),
        ("a//b", "repository component"),
        ("-x/y", "repository component"),
        ("reg-.example/x", "registry host"),
        ("127.0.0.1:5000/" + "a" * 250, "longer than 255"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidImageReference, match=why) as info:
        ImageRef.parse(text)
    assert info.value.status == 400


def test_docker_hub_defaults_and_api_host() -> None:
    ref = ImageRef.parse("ubuntu")
    assert str(ref) == "docker.io/library/ubuntu:latest"
    assert ref.api_host == "registry-1.docker.io"
    assert ImageRef.parse("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


def test_loopback_and_plain_http() -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"):
        assert is_loopback(host), host
    for host in ("ghcr.io", "10.0.0.1:5000", "localhost.example:5000", "[2001:db8::1]:5000"):
        assert not is_loopback(host), host
    client = RegistryClient(insecure=["reg.lan", "other.lan:5000"], session=object())  # type: ignore[arg-type]
    assert client.plain_http("127.0.0.1:5000")
    assert client.plain_http("reg.lan:8443") and client.plain_http("reg.lan")
    assert client.plain_http("other.lan:5000") and not client.plain_http("other.lan:5001")
    assert not client.plain_http("ghcr.io")
    assert str(client.base_url(ImageRef.parse("ghcr.io/a/b"))) == "https://ghcr.io/v2/"
    assert str(client.base_url(ImageRef.parse("ubuntu"))) == "https://registry-1.docker.io/v2/"


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull",error="insufficient_scope"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull",
        "error": "insufficient_scope",
    }
    assert parse_challenge('Basic realm="a \\"quoted\\" realm"') == (
        "basic",
        {"realm": 'a "quoted" realm'},
    )
    assert parse_challenge("Bearer realm=http://x/token, service=svc") == (
        "bearer",
        {"realm": "http://x/token", "service": "svc"},
    )


# -- a scripted registry with bearer tokens ---------------------------------------------


@dataclass
class FakeRegistry:
    """A registry speaking token authentication, like hosted registries do.

    ``/v2/`` answers 401 with a ``Bearer`` challenge whose realm is its own
    ``/token``; the token service grants ``user:secret``, and anonymous
    callers only for repositories under ``public/``.
    """

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, str | None] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    #: digest → bytes served instead of the real content (a lying registry)
    corrupt: dict[str, bytes] = field(default_factory=dict)

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return {"mediaType": "application/json", "digest": digest, "size": len(data)}

    def image(self, repo: str, labels: dict[str, str] | None, arch: str = "amd64") -> str:
        """Store an OCI image manifest; returns its digest."""
        config = self.blob(
            json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": labels}}).encode()
        )
        manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.manifests[(repo, digest)] = (OCI_MANIFEST, manifest)
        return digest

    def index(self, repo: str, tag: str, entries: list[tuple[str, str, str]]) -> None:
        """Store an OCI index under ``tag``: entries of (digest, os, architecture)."""
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": d,
                        "size": 1,
                        "platform": {"os": os_, "architecture": arch},
                    }
                    for d, os_, arch in entries
                ],
            }
        ).encode()
        self.manifests[(repo, tag)] = (OCI_INDEX, body)

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self.manifests[(repo, tag)] = self.manifests[(repo, digest)]

    def _authorized(self, request: web.Request, repo: str) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return header.removeprefix("Bearer ") in self.tokens

    def _challenge(self, request: web.Request, repo: str) -> web.Response:
        realm = f"http://{request.host}/token"
        header = f'Bearer realm="{realm}",service="fake-registry",scope="repository:{repo}:pull"'
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": header},
        )

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        scope = request.query.get("scope", "")
        user: str | None = None
        if "Authorization" in request.headers:
            scheme, _, value = request.headers["Authorization"].partition(" ")
            if (scheme, base64.b64decode(value)) != ("Basic", b"user:secret"):
                return web.json_response({"details": "incorrect username or password"}, status=401)
            user = "user"
        elif not scope.startswith("repository:public/"):
            return web.json_response({"details": "access denied"}, status=401)
        token = f"token-{len(self.tokens)}"
        self.tokens[token] = user
        # Docker Hub sends both fields; some registries only access_token
        return web.json_response({"access_token": token, "expires_in": 300})

    async def manifest(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        if not self._authorized(request, repo):
            return self._challenge(request, repo)
        found = self.manifests.get((repo, ref))
        if found is None:
            return web.json_response(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                status=404,
            )
        media_type, body = found
        return web.Response(body=self.corrupt.get(ref, body), content_type=media_type)

    async def get_blob(self, request: web.Request) -> web.Response:
        repo, digest = request.match_info["repo"], request.match_info["digest"]
        if not self._authorized(request, repo):
            return self._challenge(request, repo)
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=self.corrupt.get(digest, self.blobs[digest]))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_get(r"/v2/{repo:.+}/manifests/{ref}", self.manifest)
        app.router.add_get(r"/v2/{repo:.+}/blobs/{digest}", self.get_blob)
        return app


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Any]) -> tuple[FakeRegistry, str]:
    """A scripted registry and its ``127.0.0.1:<port>``."""
    reg = FakeRegistry()
    server: TestServer = await aiohttp_server(reg.app())
    return reg, f"127.0.0.1:{server.port}"


async def test_bearer_token_flow_and_index_platform(fake: tuple[FakeRegistry, str]) -> None:
    reg, host = fake
    amd = reg.image("team/pl-x", {DESCRIPTOR_LABEL: "{}", "arch": "amd64"})
    arm = reg.image("team/pl-x", {"arch": "arm64"}, arch="arm64")
    attestation = reg.image("team/pl-x", {})
    reg.index(
        "team/pl-x",
        "1.0",
        [(arm, "linux", "arm64"), (attestation, "unknown", "unknown"), (amd, "linux", "amd64")],
    )
    async with RegistryClient(credentials={host: creds("user", "secret")}) as client:
        labels = await client.image_labels(ImageRef.parse(f"{host}/team/pl-x:1.0"))
    assert labels == {DESCRIPTOR_LABEL: "{}", "arch": "amd64"}
    # one token for the manifest, reused for the platform's manifest and the config blob
    assert len(reg.token_requests) == 1
    assert reg.token_requests[0] == {
        "scope": "repository:team/pl-x:pull",
        "service": "fake-registry",
        "account": "user",
    }


async def test_bearer_wrong_password_and_anonymous(fake: tuple[FakeRegistry, str]) -> None:
    reg, host = fake
    reg.tag("team/pl-x", "1.0", reg.image("team/pl-x", {"a": "b"}))
    reg.tag("public/pl-y", "2", reg.image("public/pl-y", {"c": "d"}))
    async with RegistryClient(credentials={host: creds("user", "wrong")}) as client:
        with pytest.raises(RegistryUnauthorized, match="refused the credentials"):
            await client.image_labels(ImageRef.parse(f"{host}/team/pl-x:1.0"))
    async with RegistryClient() as client:
        with pytest.raises(RegistryUnauthorized, match="anonymous access"):
            await client.image_labels(ImageRef.parse(f"{host}/team/pl-x:1.0"))
        # an anonymous token is enough for a public image, as on Docker Hub
        assert await client.image_labels(ImageRef.parse(f"{host}/public/pl-y:2")) == {"c": "d"}
        with pytest.raises(ImageNotFound, match="MANIFEST_UNKNOWN"):
            await client.image_labels(ImageRef.parse(f"{host}/public/pl-y:3"))


async def test_index_without_the_platform_and_single_entry(fake: tuple[FakeRegistry, str]) -> None:
    reg, host = fake
    arm = reg.image("public/a", {"only": "arm"}, arch="arm64")
    ppc = reg.image("public/a", {}, arch="ppc64le")
    reg.index("public/a", "one", [(arm, "linux", "arm64")])
    reg.index("public/a", "two", [(arm, "linux", "arm64"), (ppc, "linux", "ppc64le")])
    async with RegistryClient() as client:
        # the only image of an index is taken whatever its platform
        assert await client.image_labels(ImageRef.parse(f"{host}/public/a:one")) == {"only": "arm"}
        with pytest.raises(
            ImageNotFound, match=r"no linux/amd64 entry \(has: linux/arm64, linux/ppc64le\)"
        ):
            await client.image_labels(ImageRef.parse(f"{host}/public/a:two"))


async def test_content_must_match_its_digest(fake: tuple[FakeRegistry, str]) -> None:
    reg, host = fake
    digest = reg.image("public/b", {"x": "y"})
    reg.tag("public/b", "t", digest)
    async with RegistryClient() as client:
        by_digest = ImageRef.parse(f"{host}/public/b@{digest}")
        assert await client.image_labels(by_digest) == {"x": "y"}
        reg.corrupt[digest] = b'{"schemaVersion": 2, "config": {"digest": "sha256:00"}}'
        with pytest.raises(RegistryError, match="does not match its digest"):
            await client.image_labels(by_digest)
        config_digest = json.loads(reg.manifests[("public/b", "t")][1])["config"]["digest"]
        reg.corrupt[config_digest] = b'{"config": {"Labels": {"x": "forged"}}}'
        with pytest.raises(RegistryError, match="image configuration does not match"):
            await client.image_labels(ImageRef.parse(f"{host}/public/b:t"))


async def test_unreachable_registry() -> None:
    port = free_port()  # nothing listens there
    async with RegistryClient(timeout=5) as client:
        with pytest.raises(RegistryUnreachable, match=f"127.0.0.1:{port} unreachable") as info:
            await client.image_labels(ImageRef.parse(f"127.0.0.1:{port}/a/b:1"))
    assert info.value.status == 502


async def test_credentials_never_sent_to_a_plain_http_realm_elsewhere(
    aiohttp_server: Callable[..., Any],
) -> None:
    async def challenge(request: web.Request) -> web.Response:
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="http://auth.example.com/token"'},
        )

    app = web.Application()
    app.router.add_get(r"/v2/{tail:.*}", challenge)
    server: TestServer = await aiohttp_server(app)
    host = f"127.0.0.1:{server.port}"
    async with RegistryClient(credentials={host: creds("u", "p")}) as client:
        with pytest.raises(RegistryUnauthorized, match="refusing to send credentials"):
            await client.image_labels(ImageRef.parse(f"{host}/a/b:1"))


# -- CUBE's API: error cases that need no registry -----------------------------------------


async def plugin_count(api: TestClient, headers: dict[str, str]) -> int:
    return int((await (await api.get("/api/v1/plugins/", headers=headers)).json())["count"])


async def test_register_by_image_refusals_write_nothing(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    before = await plugin_count(api, admin)
    port = free_port()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"image": "Not A Reference", "compute_names": "site"}, 400, "invalid image reference"),
        ({"image": "127.0.0.1:5000/UPPER/x:1", "compute_names": "site"}, 400, "lowercase"),
        ({"image": 42, "compute_names": "site"}, 400, "string"),
        ({"image": "a" * 600, "compute_names": "site"}, 400, "at most"),
        ({"image": f"127.0.0.1:{port}/a/b:1"}, 400, "compute resource"),
        (
            {
                "image": f"127.0.0.1:{port}/a/b:1",
                "descriptor": DS_DESCRIPTOR,
                "compute_names": "site",
            },
            400,
            "not both",
        ),
        ({"image": f"127.0.0.1:{port}/a/b:1", "compute_names": "site"}, 502, "unreachable"),
    ]
    for body, status, why in cases:
        resp = await api.post("/chris-admin/api/v1/", json=body, headers=admin)
        assert resp.status == status, (body, await resp.text())
        assert why in json.dumps(await resp.json()), (body, await resp.text())
    # the multipart form's image field goes the same way
    form = FormData()
    form.add_field("image", f"127.0.0.1:{port}/a/b:1")
    form.add_field("compute_names", "site")
    resp = await api.post("/chris-admin/api/v1/", data=form, headers=admin)
    assert resp.status == 502 and "unreachable" in (await resp.json())["detail"]
    assert await plugin_count(api, admin) == before


async def test_register_by_image_needs_staff_before_any_registry_call(
    api: TestClient, registered: dict[str, int], aiohttp_server: Callable[..., Any]
) -> None:
    calls: list[str] = []

    async def record(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get(r"/{tail:.*}", record)
    server: TestServer = await aiohttp_server(app)
    image = f"127.0.0.1:{server.port}/a/b:1"
    anonymous = await api.post(
        "/chris-admin/api/v1/", json={"image": image, "compute_names": "site"}
    )
    assert anonymous.status == 401
    created = await api.post(
        "/api/v1/users/",
        json={"username": "bobby", "password": "bob-pass-1", "email": "bob@example.org"},
    )
    assert created.status == 201, await created.text()
    bob = await token_for(api, "bobby", "bob-pass-1")
    resp = await api.post(
        "/chris-admin/api/v1/", json={"image": image, "compute_names": "site"}, headers=bob
    )
    assert resp.status == 403
    assert calls == []  # CUBE contacted no registry for them


# -- the real registry (Debian's docker-registry) and the Docker engine --------------------


TINY_DESCRIPTOR = dict(
    DS_DESCRIPTOR, name="pl-tiny", version="1.0", dock_image="chris-test/pl-tiny:1.0"
)


@dataclass(frozen=True)
class Pushed:
    """Images pushed to the session's registry."""

    plugin: str  #: a plugin image (descriptor label), by tag
    plugin_digest: str
    plain: str  #: an image without the label
    local_plugin: str  #: the local plugin image, not pushed under this name


@pytest.fixture(scope="session")
def pushed(docker_engine: Any, registry: Registry) -> Iterator[Pushed]:
    local = build_labelled_image(docker_engine, "chris-test/pl-tiny:1.0", TINY_DESCRIPTOR)
    plugin = f"{registry.host}/chris/pl-tiny:1.0"
    plain = f"{registry.host}/test/plain:1"
    digest = push(docker_engine, local, plugin, registry)
    push(docker_engine, ensure_busybox_image(docker_engine), plain, registry)
    yield Pushed(plugin, digest, plain, local)
    for ref in (plugin, plain):  # untag only: the local images stay for other tests
        docker_engine.images.remove(ref)


@pytest.fixture
def reg_client_creds(registry: Registry) -> dict[str, RegistryCredentials]:
    return {registry.host: creds(registry.username, registry.password)}


@pytest.mark.docker
@pytest.mark.slow
async def test_real_registry_labels_and_errors(
    pushed: Pushed, registry: Registry, reg_client_creds: dict[str, RegistryCredentials]
) -> None:
    ref = ImageRef.parse(pushed.plugin)
    async with RegistryClient(credentials=reg_client_creds) as client:
        manifest = await client.manifest(ref)
        assert manifest.media_type in (DOCKER_MANIFEST, OCI_MANIFEST)
        labels = await client.image_labels(ref)
        assert json.loads(labels[DESCRIPTOR_LABEL])["name"] == "pl-tiny"
        by_digest = ImageRef.parse(f"{registry.host}/chris/pl-tiny@{pushed.plugin_digest}")
        assert await client.image_labels(by_digest) == labels
        with pytest.raises(ImageNotFound, match="MANIFEST_UNKNOWN"):
            await client.image_labels(ImageRef.parse(f"{registry.host}/chris/pl-tiny:9.9"))
        with pytest.raises(ImageNotFound, match="not found in registry"):
            await client.image_labels(ImageRef.parse(f"{registry.host}/chris/pl-nosuch:1"))
        with pytest.raises(ImageNotFound):
            await client.image_labels(ImageRef.parse(f"{registry.host}/chris/pl-tiny@{DIGEST}"))
        # an image without the label reads fine, and is refused as a plugin
        assert DESCRIPTOR_LABEL not in await client.image_labels(ImageRef.parse(pushed.plain))
        with pytest.raises(NotAPluginImage, match="not a ChRIS plugin image"):
            await descriptor_from_image(client, pushed.plain)
        descriptor = await descriptor_from_image(client, pushed.plugin)
        assert descriptor["dock_image"] == pushed.plugin
    async with RegistryClient(credentials={registry.host: creds(registry.username, "wrong")}) as c:
        with pytest.raises(RegistryUnauthorized, match="refused access") as info:
            await c.image_labels(ref)
        assert info.value.status == 403
    async with RegistryClient() as c:
        with pytest.raises(RegistryUnauthorized, match="CUBE_REGISTRY_CREDENTIALS"):
            await c.image_labels(ref)


@pytest.fixture
async def reg_api(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    reg_client_creds: dict[str, RegistryCredentials],
) -> TestClient:
    """CUBE with credentials for the session's registry, and a compute resource ``site``."""
    settings = CubeSettings(
        home=tmp_path / "cube", run_scheduler=False, registry_credentials=reg_client_creds
    )
    api: TestClient = await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)
    admin = await token_for(api, "chris", "chris1234")
    resp = await api.post(
        "/chris-admin/api/v1/computeresources/",
        json={
            "name": "site",
            "compute_url": "http://127.0.0.1:9/api/v1/",
            "compute_user": "u",
            "compute_password": "p",
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    return api


@pytest.mark.docker
@pytest.mark.slow
async def test_cube_registers_a_plugin_from_its_image(
    reg_api: TestClient, pushed: Pushed, registry: Registry
) -> None:
    admin = await token_for(reg_api, "chris", "chris1234")
    resp = await reg_api.post(
        "/chris-admin/api/v1/",
        json={"image": pushed.plugin, "compute_names": "site"},
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    plugin = await resp.json()
    assert (plugin["name"], plugin["version"], plugin["type"]) == ("pl-tiny", "1.0", "ds")
    assert plugin["dock_image"] == pushed.plugin  # what compute sites will pull
    params = await (
        await reg_api.get(f"/api/v1/plugins/{plugin['id']}/parameters/", headers=admin)
    ).json()
    assert [p["name"] for p in params["results"]] == ["prefix", "count", "verbose"]
    # the multipart field, again: idempotent as a descriptor upload is
    form = FormData()
    form.add_field("image", pushed.plugin)
    form.add_field("compute_names", "site")
    again = await reg_api.post("/chris-admin/api/v1/", data=form, headers=admin)
    assert again.status == 201 and (await again.json())["id"] == plugin["id"]

    before = await plugin_count(reg_api, admin)
    cases = [
        (f"{registry.host}/chris/pl-tiny:9.9", 404, "not found"),
        (pushed.plain, 400, "not a ChRIS plugin image"),
        # same name and version under another reference: the existing rule holds
        (f"{registry.host}/chris/pl-tiny@{pushed.plugin_digest}", 409, "exist with another image"),
    ]
    for image, status, why in cases:
        resp = await reg_api.post(
            "/chris-admin/api/v1/", json={"image": image, "compute_names": "site"}, headers=admin
        )
        assert resp.status == status, (image, await resp.text())
        assert why in json.dumps(await resp.json()), (image, await resp.text())
    assert await plugin_count(reg_api, admin) == before


@pytest.mark.docker
@pytest.mark.slow
async def test_cube_without_registry_credentials_is_refused(
    api: TestClient, admin: dict[str, str], registered: dict[str, int], pushed: Pushed
) -> None:
    resp = await api.post(
        "/chris-admin/api/v1/",
        json={"image": pushed.plugin, "compute_names": "site"},
        headers=admin,
    )
    assert resp.status == 403
    assert "CUBE_REGISTRY_CREDENTIALS" in (await resp.json())["detail"]
