"""A fake Kubernetes API server that checks every request body against the API schema.

It serves, on a real loopback socket, just what pman's kubernetes backend
uses: create, get, list and delete of namespaced ``batch/v1`` Jobs, list of
pods, a pod's log, and ``/version``. Requests need ``Authorization: Bearer
<token>``; :meth:`FakeKube.write_kubeconfig` writes a kubeconfig pointing at
it, so the backend is tested through the official client, its
serialisation and its error handling.

Every JSON body is walked against the schema the client's models describe
(:func:`schema_errors`): each model's ``openapi_types`` (the type of every
attribute) and ``attribute_map`` (its JSON name), with the required fields
taken from the model's pydantic fields. Unknown fields, wrong primitive
types, wrong list or map shapes and missing required fields are answered
422 with a ``Status`` body like the API server's (reason ``Invalid``, one
cause per problem). Unlike a real server in its default ``Warn`` mode,
unknown fields are always refused, so nothing passes unnoticed. On top of
the schema, Jobs get the server-side checks that matter to pman
(:func:`job_errors`): DNS-1123 names, label keys and values, quantities,
volume references, restart policy, enums.

Tests drive what the cluster would do with the helpers :meth:`FakeKube.pending`,
:meth:`FakeKube.running`, :meth:`FakeKube.succeed`, :meth:`FakeKube.fail`,
:meth:`FakeKube.oom_kill`, :meth:`FakeKube.exceed_deadline`, or set a Job's
status and pods directly; every object the fake stores is checked against the
schema as well, so a scripted status is one a real cluster could report.
:meth:`FakeKube.fail_next` makes the next matching requests fail with a status.
"""

from __future__ import annotations

import base64
import copy
import functools
import itertools
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
from aiohttp import web
from pydantic import BaseModel

from tests.support.components import free_port

# -- schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """One problem of a body, as in a Status's ``details.causes``."""

    field: str
    reason: str
    message: str

    def as_json(self) -> dict[str, str]:
        """The cause as the API server writes it."""
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_bytes(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


_PRIMITIVES = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "datetime": _is_datetime,
    "date": _is_datetime,
    "bytes": _is_bytes,
    "object": lambda v: True,  # IntOrString, RawExtension: anything JSON
}


def model_class(type_name: str) -> type[BaseModel]:
    """The client's model class named ``type_name`` (e.g. ``V1Job``)."""
    cls = getattr(kubernetes.client, type_name, None)
    if not (isinstance(cls, type) and hasattr(cls, "openapi_types")):
        raise LookupError(f"no kubernetes model {type_name!r}")
    return cls


@functools.cache
def _model_schema(type_name: str) -> tuple[dict[str, str], frozenset[str]]:
    """``({json name: type}, required json names)`` of a model."""
    cls = model_class(type_name)
    openapi_types: dict[str, str] = cls.openapi_types  # type: ignore[attr-defined]
    attribute_map: dict[str, str] = cls.attribute_map  # type: ignore[attr-defined]
    by_json = {attribute_map[attr]: kind for attr, kind in openapi_types.items()}
    required = set()
    for name, info in cls.model_fields.items():
        if info.is_required():
            # a few attributes are renamed for Python (var_continue, var_field)
            required.add(attribute_map.get(name) or info.serialization_alias or name)
    unknown = required - set(by_json)
    assert not unknown, f"{type_name}: required {unknown} not in attribute_map"
    return by_json, frozenset(required)


def schema_errors(value: Any, type_name: str, path: str = "") -> list[Cause]:
    """Every way ``value`` (parsed JSON) deviates from the schema of ``type_name``.

    ``type_name`` is an ``openapi_types`` entry: a primitive (``str``,
    ``int``, ``bool``, ``float``, ``datetime``, ``bytes``, ``object``), a model
    name, ``List[T]`` or ``Dict[str, T]``. ``null`` counts as absent, as for
    the API server.
    """
    where = path or "<body>"
    if type_name.startswith("List["):
        if not isinstance(value, list):
            return [
                Cause(where, "FieldValueTypeInvalid", f"expected array, got {_json_type(value)}")
            ]
        inner = type_name[len("List[") : -1]
        return [
            c for i, item in enumerate(value) for c in schema_errors(item, inner, f"{path}[{i}]")
        ]
    if type_name.startswith("Dict["):
        match = re.fullmatch(r"Dict\[str, (.+)\]", type_name)
        assert match, type_name
        if not isinstance(value, dict):
            return [
                Cause(where, "FieldValueTypeInvalid", f"expected object, got {_json_type(value)}")
            ]
        return [
            c for k, item in value.items() for c in schema_errors(item, match[1], f"{path}[{k}]")
        ]
    check = _PRIMITIVES.get(type_name)
    if check is not None:
        if check(value):
            return []
        return [
            Cause(where, "FieldValueTypeInvalid", f"expected {type_name}, got {_json_type(value)}")
        ]
    if not isinstance(value, dict):
        return [
            Cause(
                where,
                "FieldValueTypeInvalid",
                f"expected object ({type_name}), got {_json_type(value)}",
            )
        ]
    fields, required = _model_schema(type_name)
    causes = []
    for key, item in value.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            causes.append(Cause(sub, "FieldValueNotSupported", f'unknown field "{key}"'))
        elif item is not None:
            causes.extend(schema_errors(item, fields[key], sub))
    for key in sorted(required):
        if value.get(key) is None:
            sub = f"{path}.{key}" if path else key
            causes.append(Cause(sub, "FieldValueRequired", "Required value"))
    return causes


# -- server-side validation of Jobs -----------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^\d+$")


def dns_label_errors(value: str, path: str) -> list[Cause]:
    """A DNS-1123 label: at most 63 of ``[a-z0-9-]``, alphanumeric at both ends."""
    if len(value) <= 63 and _DNS_LABEL.match(value):
        return []
    return [
        Cause(
            path,
            "FieldValueInvalid",
            f"Invalid value: {value!r}: a lowercase RFC 1123 label must consist of lower case "
            "alphanumeric characters or '-', and must start and end with an alphanumeric "
            "character",
        )
    ]


def _qualified_name_errors(key: str, path: str) -> list[Cause]:
    prefix, slash, name = key.rpartition("/")
    ok = bool(name) and len(name) <= 63 and bool(_LABEL_NAME.match(name))
    if slash:
        ok = ok and len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))
    if ok:
        return []
    return [Cause(path, "FieldValueInvalid", f"Invalid value: {key!r}: name part must be valid")]


def label_errors(labels: Any, path: str) -> list[Cause]:
    """Label keys (qualified names) and values (at most 63, alphanumeric ends)."""
    causes = []
    for key, value in (labels or {}).items():
        causes += _qualified_name_errors(key, f"{path}[{key}]")
        if not isinstance(value, str) or not (
            value == "" or (len(value) <= 63 and _LABEL_NAME.match(value))
        ):
            causes.append(
                Cause(
                    f"{path}[{key}]",
                    "FieldValueInvalid",
                    f"Invalid value: {value!r}: a valid label must be an empty string or "
                    "consist of alphanumeric characters, '-', '_' or '.', and must start and "
                    "end with an alphanumeric character (at most 63)",
                )
            )
    return causes


def _quantity_errors(resources: dict[str, Any], path: str) -> list[Cause]:
    causes = []
    for kind in ("limits", "requests"):
        for name, value in (resources.get(kind) or {}).items():
            where = f"{path}.{kind}[{name}]"
            if not isinstance(value, str) or not _QUANTITY.match(value):
                causes.append(Cause(where, "FieldValueInvalid", f"invalid quantity {value!r}"))
            elif "/" in name and not _INTEGER.match(value):
                causes.append(
                    Cause(where, "FieldValueInvalid", "must be an integer (extended resource)")
                )
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    for name, value in requests.items():
        if "/" in name and name in limits and limits[name] != value:
            causes.append(
                Cause(f"{path}.requests[{name}]", "FieldValueInvalid", "must equal the limit")
            )
    return causes


def _enum(value: Any, allowed: set[str], path: str) -> list[Cause]:
    if value is None or value in allowed:
        return []
    return [
        Cause(
            path,
            "FieldValueNotSupported",
            f"Unsupported value: {value!r}: supported values: {sorted(allowed)}",
        )
    ]


def pod_spec_errors(spec: dict[str, Any], path: str) -> list[Cause]:
    """The pod spec checks the API server makes that a backend could get wrong."""
    causes: list[Cause] = []
    causes += _enum(spec.get("restartPolicy"), {"Never", "OnFailure"}, f"{path}.restartPolicy")
    volumes = spec.get("volumes") or []
    names = [v.get("name", "") for v in volumes]
    for i, volume in enumerate(volumes):
        vpath = f"{path}.volumes[{i}]"
        causes += dns_label_errors(volume.get("name", ""), f"{vpath}.name")
        sources = [k for k in volume if k != "name"]
        if len(sources) != 1:
            causes.append(Cause(vpath, "FieldValueInvalid", "must specify exactly 1 volume type"))
        host = volume.get("hostPath")
        if host is not None:
            if not str(host.get("path", "")).startswith("/"):
                causes.append(Cause(f"{vpath}.hostPath.path", "FieldValueInvalid", "not absolute"))
            causes += _enum(
                host.get("type"),
                {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket"},
                f"{vpath}.hostPath.type",
            )
        empty = volume.get("emptyDir")
        if empty is not None:
            causes += _enum(empty.get("medium"), {"", "Memory"}, f"{vpath}.emptyDir.medium")
            if "sizeLimit" in empty and not _QUANTITY.match(str(empty["sizeLimit"])):
                causes.append(Cause(f"{vpath}.emptyDir.sizeLimit", "FieldValueInvalid", "quantity"))
    if len(set(names)) != len(names):
        causes.append(Cause(f"{path}.volumes", "FieldValueDuplicate", "duplicate volume name"))
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause(f"{path}.containers", "FieldValueRequired", "Required value"))
    for i, container in enumerate(containers):
        cpath = f"{path}.containers[{i}]"
        causes += dns_label_errors(container.get("name", ""), f"{cpath}.name")
        if not container.get("image"):
            causes.append(Cause(f"{cpath}.image", "FieldValueRequired", "Required value"))
        mount_paths = set()
        for j, mount in enumerate(container.get("volumeMounts") or []):
            mpath = f"{cpath}.volumeMounts[{j}]"
            if mount.get("name") not in names:
                causes.append(Cause(f"{mpath}.name", "FieldValueNotFound", "volume not found"))
            if mount.get("mountPath") in mount_paths:
                causes.append(Cause(f"{mpath}.mountPath", "FieldValueInvalid", "must be unique"))
            mount_paths.add(mount.get("mountPath"))
            sub = str(mount.get("subPath") or "")
            if sub.startswith("/") or ".." in sub.split("/"):
                causes.append(Cause(f"{mpath}.subPath", "FieldValueInvalid", "must be relative"))
        for j, env in enumerate(container.get("env") or []):
            name = env.get("name", "")
            if not name or "=" in name:
                causes.append(
                    Cause(f"{cpath}.env[{j}].name", "FieldValueInvalid", "invalid env name")
                )
        causes += _quantity_errors(container.get("resources") or {}, f"{cpath}.resources")
        caps = ((container.get("securityContext") or {}).get("capabilities") or {}).get("drop")
        if caps is not None and not all(isinstance(c, str) for c in caps):
            causes.append(Cause(f"{cpath}.securityContext", "FieldValueInvalid", "capabilities"))
    for i, tol in enumerate(spec.get("tolerations") or []):
        tpath = f"{path}.tolerations[{i}]"
        causes += _enum(tol.get("operator"), {"Exists", "Equal"}, f"{tpath}.operator")
        causes += _enum(
            tol.get("effect"),
            {"", "NoSchedule", "PreferNoSchedule", "NoExecute"},
            f"{tpath}.effect",
        )
        if tol.get("operator") == "Exists" and tol.get("value"):
            causes.append(Cause(f"{tpath}.value", "FieldValueInvalid", "must be empty for Exists"))
    security = spec.get("securityContext") or {}
    causes += _enum(
        (security.get("seccompProfile") or {}).get("type"),
        {"RuntimeDefault", "Localhost", "Unconfined"},
        f"{path}.securityContext.seccompProfile.type",
    )
    causes += _enum(
        security.get("fsGroupChangePolicy"),
        {"OnRootMismatch", "Always"},
        f"{path}.securityContext.fsGroupChangePolicy",
    )
    causes += label_errors(spec.get("nodeSelector"), f"{path}.nodeSelector")
    for i, secret in enumerate(spec.get("imagePullSecrets") or []):
        if not secret.get("name"):
            causes.append(Cause(f"{path}.imagePullSecrets[{i}].name", "FieldValueRequired", ""))
    return causes


def job_errors(job: dict[str, Any], namespace: str) -> list[Cause]:
    """Schema plus server-side checks of a Job created in ``namespace``."""
    causes = schema_errors(job, "V1Job")
    if causes:
        return causes  # the semantic checks below assume the right shapes
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        causes.append(Cause("apiVersion", "FieldValueInvalid", "must be batch/v1 Job"))
    meta = job.get("metadata") or {}
    if not meta.get("name"):
        causes.append(Cause("metadata.name", "FieldValueRequired", "name or generateName"))
    else:
        # a Job's name is also the pods' job-name label value: a label, not a subdomain
        causes += dns_label_errors(meta["name"], "metadata.name")
    if meta.get("namespace") not in (None, namespace):
        causes.append(Cause("metadata.namespace", "FieldValueInvalid", "does not match the URL"))
    causes += label_errors(meta.get("labels"), "metadata.labels")
    for key in meta.get("annotations") or {}:
        causes += _qualified_name_errors(key, f"metadata.annotations[{key}]")
    spec = job.get("spec") or {}
    for name in ("backoffLimit", "parallelism", "completions", "ttlSecondsAfterFinished"):
        if spec.get(name) is not None and spec[name] < 0:
            causes.append(Cause(f"spec.{name}", "FieldValueInvalid", "must be >= 0"))
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        causes.append(Cause("spec.activeDeadlineSeconds", "FieldValueInvalid", "must be > 0"))
    if spec.get("selector") is not None and not spec.get("manualSelector"):
        causes.append(Cause("spec.selector", "FieldValueInvalid", "set by the controller"))
    template = spec.get("template") or {}
    causes += label_errors((template.get("metadata") or {}).get("labels"), "spec.template.labels")
    pod = template.get("spec") or {}
    causes += pod_spec_errors(pod, "spec.template.spec")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(
            Cause("spec.template.spec.restartPolicy", "FieldValueRequired", "Never or OnFailure")
        )
    return causes


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``Status`` (failure) as the API server answers errors."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif " " in term or "(" in term:
            raise ValueError(f"unsupported selector {term!r}")
        elif term not in labels:
            return False
    return True


#: The parsed JSON body of a request, stored by the middleware.
_BODY = web.RequestKey("body", object)


class _Refused(Exception):
    """An API error answer (raised inside handlers)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["message"])
        self.body = body


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _FailRule:
    code: int
    message: str
    method: str | None
    path: str | None
    times: int


@dataclass
class FakeKube:
    """The fake API server; ``async with FakeKube() as kube`` serves it on a free port."""

    token: str = field(default_factory=lambda: secrets.token_hex(8))
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: Each pod's whole log (bytes: not necessarily UTF-8).
    logs: dict[tuple[str, str], str | bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    #: Namespace the driving helpers act in.
    namespace: str = "chris"
    url: str = ""
    _rules: list[_FailRule] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> str:
        """Serve on a free loopback port; returns the server URL."""
        app = web.Application(middlewares=[self._middleware])
        base = "/apis/batch/v1/namespaces/{ns}/jobs"
        app.router.add_get("/version", self._version)
        app.router.add_post(base, self._create_job)
        app.router.add_get(base, self._list_jobs)
        app.router.add_get(base + "/{name}", self._read_job)
        app.router.add_delete(base + "/{name}", self._delete_job)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._list_pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._pod_log)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path, *, url: str | None = None) -> Path:
        """A kubeconfig for this server (or ``url``) with its bearer token; returns ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url or self.url}}],
            "users": [{"name": "pman", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "pman", "namespace": self.namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def fail_next(
        self,
        code: int,
        message: str = "injected failure",
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests (of ``method``, whose path contains ``path``)
        with ``code`` and a Status body."""
        self._rules.append(_FailRule(code, message, method, path, times))

    def requests_to(self, method: str, fragment: str = "") -> list[Recorded]:
        """The recorded requests of ``method`` whose path contains ``fragment``."""
        return [r for r in self.requests if r.method == method and fragment in r.path]

    # -- HTTP -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(status_body(400, "BadRequest", "body is not JSON"))
        self.requests.append(Recorded(request.method, request.path, dict(request.query), body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(status_body(401, "Unauthorized", "Unauthorized"))
        for rule in self._rules:
            if (rule.method in (None, request.method)) and (
                rule.path is None or rule.path in request.path
            ):
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
                reason = {409: "Conflict", 404: "NotFound", 403: "Forbidden"}.get(
                    rule.code, "InternalError"
                )
                return self._error(status_body(rule.code, reason, rule.message))
        request[_BODY] = body
        try:
            return await handler(request)
        except _Refused as exc:
            return self._error(exc.body)

    @staticmethod
    def _error(body: dict[str, Any]) -> web.Response:
        assert not schema_errors(body, "V1Status"), body
        return web.json_response(body, status=body["code"])

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": _now(),
                "goVersion": "go1.24",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    @staticmethod
    def _invalid(kind: str, name: str, causes: list[Cause]) -> _Refused:
        text = ", ".join(f"{c.field}: {c.message}" for c in causes)
        return _Refused(
            status_body(
                422,
                "Invalid",
                f'{kind} "{name}" is invalid: [{text}]',
                name=name,
                group="batch",
                kind=kind.split(".")[0],
                causes=[c.as_json() for c in causes],
            )
        )

    async def _create_job(self, request: web.Request) -> web.Response:
        ns, body = request.match_info["ns"], request[_BODY]
        if request.query.get("fieldValidation") not in (None, "Ignore", "Warn", "Strict"):
            raise _Refused(status_body(400, "BadRequest", "invalid fieldValidation"))
        if not isinstance(body, dict):
            raise _Refused(status_body(400, "BadRequest", "the body must be a Job object"))
        name = str((body.get("metadata") or {}).get("name", ""))
        causes = job_errors(body, ns)
        if causes:
            raise self._invalid("Job.batch", name, causes)
        if (ns, name) in self.jobs:
            raise _Refused(
                status_body(
                    409,
                    "AlreadyExists",
                    f'jobs.batch "{name}" already exists',
                    name=name,
                    group="batch",
                    kind="jobs",
                )
            )
        job = self._admit(body, ns)
        self.jobs[(ns, name)] = job
        return web.json_response(job, status=201)

    def _admit(self, body: dict[str, Any], ns: str) -> dict[str, Any]:
        """What the API server stores: metadata, defaults, selector and the controller's labels."""
        job = copy.deepcopy(body)
        uid = str(uuid.uuid4())
        meta = job["metadata"]
        name = meta["name"]
        meta.update(
            namespace=ns,
            uid=uid,
            resourceVersion=str(next(self._versions)),
            generation=1,
            creationTimestamp=_now(),
        )
        spec = job["spec"]
        controller = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **controller}
        job["status"] = {}
        self._check_stored(job, "V1Job")
        return job

    @staticmethod
    def _check_stored(obj: dict[str, Any], type_name: str) -> None:
        causes = schema_errors(obj, type_name)
        assert not causes, f"the fake would store an invalid {type_name}: {causes}"

    def _namespaced_job(self, request: web.Request) -> dict[str, Any]:
        ns, name = request.match_info["ns"], request.match_info["name"]
        job = self.jobs.get((ns, name))
        if job is None:
            raise _Refused(
                status_body(
                    404,
                    "NotFound",
                    f'jobs.batch "{name}" not found',
                    name=name,
                    group="batch",
                    kind="jobs",
                )
            )
        return job

    async def _read_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._namespaced_job(request))

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Filter by ``labelSelector``; page by ``limit`` and ``continue``."""
        selector = request.query.get("labelSelector", "")
        try:
            chosen = [
                i for i in items if _selector_matches(selector, i["metadata"].get("labels") or {})
            ]
        except ValueError as exc:
            raise _Refused(status_body(400, "BadRequest", str(exc))) from None
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(chosen) or 1
        page = chosen[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(next(self._versions))}
        if start + limit < len(chosen):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(chosen) - start - limit
        return {"metadata": meta, "items": page}

    async def _list_jobs(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        listing = self._page(request, [j for (n, _), j in self.jobs.items() if n == ns])
        return web.json_response({"kind": "JobList", "apiVersion": "batch/v1", **listing})

    async def _delete_job(self, request: web.Request) -> web.Response:
        job = self._namespaced_job(request)
        body = request[_BODY]
        causes = schema_errors(body or {}, "V1DeleteOptions")
        options: dict[str, Any] = body if isinstance(body, dict) else {}
        policy = options.get("propagationPolicy") or request.query.get("propagationPolicy")
        causes += _enum(policy, {"Orphan", "Background", "Foreground"}, "propagationPolicy")
        if causes:
            raise self._invalid("DeleteOptions", job["metadata"]["name"], causes)
        uid = job["metadata"]["uid"]
        wanted = (options.get("preconditions") or {}).get("uid")
        if wanted is not None and wanted != uid:
            raise _Refused(
                status_body(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {wanted}, "
                    f"UID in object meta: {uid}",
                )
            )
        ns, name = request.match_info["ns"], request.match_info["name"]
        del self.jobs[(ns, name)]
        # batch/v1 Jobs orphan their pods unless told otherwise (kubectl says Background)
        if policy in ("Background", "Foreground"):
            for key, pod in list(self.pods.items()):
                if uid in {r["uid"] for r in pod["metadata"].get("ownerReferences", [])}:
                    del self.pods[key]
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid},
            }
        )

    async def _list_pods(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        listing = self._page(request, [p for (n, _), p in self.pods.items() if n == ns])
        return web.json_response({"kind": "PodList", "apiVersion": "v1", **listing})

    async def _pod_log(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.pods.get((ns, name))
        if pod is None:
            raise _Refused(status_body(404, "NotFound", f'pods "{name}" not found'))
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or containers[0]
        if container not in containers:
            raise _Refused(
                status_body(400, "BadRequest", f"container {container} is not valid for pod {name}")
            )
        if pod["status"].get("phase") == "Pending":
            raise _Refused(
                status_body(
                    400,
                    "BadRequest",
                    f'container "{container}" in pod "{name}" is waiting to start: '
                    "ContainerCreating",
                )
            )
        text = self.logs.get((ns, name), b"")
        data = text.encode() if isinstance(text, str) else text
        tail = request.query.get("tailLines")
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[len(lines) - int(tail) :] if int(tail) else [])
        return web.Response(body=data, content_type="text/plain")

    # -- driving the cluster ----------------------------------------------------------

    def job(self, name: str) -> dict[str, Any]:
        """The stored Job ``name`` of :attr:`namespace` (KeyError if none)."""
        return self.jobs[(self.namespace, name)]

    def pods_of(self, name: str) -> list[dict[str, Any]]:
        """The stored pods of Job ``name``."""
        uid = self.job(name)["metadata"]["uid"]
        return [
            p
            for p in self.pods.values()
            if uid in {r["uid"] for r in p["metadata"].get("ownerReferences", [])}
        ]

    def set_job_status(self, name: str, status: dict[str, Any]) -> None:
        """Replace the Job's status (checked against V1JobStatus)."""
        job = self.job(name)
        candidate = {**job, "status": status}
        self._check_stored(candidate, "V1Job")
        job["status"] = status
        job["metadata"]["resourceVersion"] = str(next(self._versions))

    def add_pod(
        self,
        job: str,
        *,
        phase: str,
        state: dict[str, Any] | None = None,
        ready: bool = False,
        logs: str | bytes = "",
        conditions: list[dict[str, Any]] | None = None,
    ) -> str:
        """A pod of Job ``job`` with one container status; returns its name."""
        stored = self.job(job)
        template = stored["spec"]["template"]
        name = f"{stored['metadata']['name']}-{secrets.token_hex(3)[:5]}"
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(next(self._versions)),
                "creationTimestamp": _now(),
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": stored["metadata"]["name"],
                        "uid": stored["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**copy.deepcopy(template["spec"]), "nodeName": "node-1"},
            "status": {},
        }
        self.pods[(self.namespace, name)] = pod
        self.set_pod(name, phase=phase, state=state, ready=ready, conditions=conditions)
        self.logs[(self.namespace, name)] = logs
        return name

    def set_pod(
        self,
        name: str,
        *,
        phase: str,
        state: dict[str, Any] | None = None,
        ready: bool = False,
        conditions: list[dict[str, Any]] | None = None,
    ) -> None:
        """Set a pod's phase and its container's state (checked against V1Pod)."""
        pod = self.pods[(self.namespace, name)]
        container = pod["spec"]["containers"][0]
        status: dict[str, Any] = {"phase": phase, "qosClass": "Guaranteed"}
        if conditions is not None:
            status["conditions"] = conditions
        if state is not None:
            status["startTime"] = _now()
            status["containerStatuses"] = [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": ""
                    if "waiting" in state
                    else f"docker.io/{container['image']}@sha256:0",
                    "ready": ready,
                    "restartCount": 0,
                    "started": "running" in state,
                    "state": state,
                }
            ]
        candidate = {**pod, "status": status}
        self._check_stored(candidate, "V1Pod")
        pod["status"] = status

    # -- scenarios --------------------------------------------------------------------

    def _status(self, **fields: Any) -> dict[str, Any]:
        job_status: dict[str, Any] = {"startTime": _now(), "uncountedTerminatedPods": {}}
        job_status.update(fields)
        return job_status

    def _the_pod(self, job: str, *, phase: str, state: dict[str, Any], **kw: Any) -> str:
        pods = self.pods_of(job)
        if pods:
            name = pods[0]["metadata"]["name"]
            logs = kw.pop("logs", None)
            self.set_pod(name, phase=phase, state=state, **kw)
            if logs is not None:
                self.logs[(self.namespace, name)] = logs
            return str(name)
        return self.add_pod(job, phase=phase, state=state, **kw)

    def pending(self, job: str, reason: str = "ContainerCreating", message: str = "") -> str:
        """Its pod is created and waits (``reason``); the Job counts it active, not ready."""
        waiting = {"reason": reason, **({"message": message} if message else {})}
        pod = self._the_pod(job, phase="Pending", state={"waiting": waiting})
        self.set_job_status(job, self._status(active=1, ready=0))
        return pod

    def unschedulable(self, job: str, message: str) -> str:
        """Its pod cannot be scheduled (no node fits, e.g. untolerated taints)."""
        pods = self.pods_of(job)
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": _now(),
        }
        if pods:
            name = str(pods[0]["metadata"]["name"])
            self.set_pod(name, phase="Pending", conditions=[condition])
        else:
            name = self.add_pod(job, phase="Pending", conditions=[condition])
        self.set_job_status(job, self._status(active=1, ready=0))
        return name

    def running(self, job: str, logs: str | bytes = "") -> str:
        """Its pod runs; the Job counts it active and ready."""
        state = {"running": {"startedAt": _now()}}
        pod = self._the_pod(job, phase="Running", state=state, ready=True, logs=logs)
        self.set_job_status(job, self._status(active=1, ready=1))
        return pod

    @staticmethod
    def _terminated(exit_code: int, reason: str, message: str | None = None) -> dict[str, Any]:
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": _now(),
            "finishedAt": _now(),
            "containerID": "containerd://" + "0" * 12,
        }
        if message:
            term["message"] = message
        return {"terminated": term}

    @staticmethod
    def condition(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
        """A true Job condition."""
        cond = {
            "type": kind,
            "status": "True",
            "lastProbeTime": _now(),
            "lastTransitionTime": _now(),
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def succeed(self, job: str, logs: str | bytes = "", *, conditions: bool = True) -> str:
        """Its pod exited 0; the Job is Complete (``conditions=False``: counters only)."""
        pod = self._the_pod(
            job, phase="Succeeded", state=self._terminated(0, "Completed"), logs=logs
        )
        status = self._status(succeeded=1, ready=0, completionTime=_now())
        if conditions:
            status["conditions"] = [
                self.condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                self.condition(
                    "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
                ),
            ]
        self.set_job_status(job, status)
        return pod

    def fail(
        self,
        job: str,
        exit_code: int = 1,
        reason: str = "Error",
        message: str | None = None,
        logs: str = "",
    ) -> str:
        """Its container exited ``exit_code``; backoffLimit 0 fails the Job."""
        state = self._terminated(exit_code, reason, message)
        pod = self._the_pod(job, phase="Failed", state=state, logs=logs)
        why = "Job has reached the specified backoff limit"
        self.set_job_status(
            job,
            self._status(
                failed=1,
                ready=0,
                conditions=[
                    self.condition("FailureTarget", "BackoffLimitExceeded", why),
                    self.condition("Failed", "BackoffLimitExceeded", why),
                ],
            ),
        )
        return pod

    def oom_kill(self, job: str, logs: str = "") -> str:
        """Its container was OOM-killed (exit 137)."""
        return self.fail(job, exit_code=137, reason="OOMKilled", logs=logs)

    def exceed_deadline(self, job: str) -> None:
        """activeDeadlineSeconds passed: the controller killed and deleted the pods."""
        for pod in self.pods_of(job):
            del self.pods[(self.namespace, pod["metadata"]["name"])]
        why = "Job was active longer than specified deadline"
        self.set_job_status(
            job,
            self._status(
                failed=1,
                active=0,
                ready=0,
                conditions=[
                    self.condition("FailureTarget", "DeadlineExceeded", why),
                    self.condition("Failed", "DeadlineExceeded", why),
                ],
            ),
        )
