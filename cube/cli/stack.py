"""Run the whole fabric on one machine: CUBE, pfcon, pfioh and pman as processes.

Used by ``chris up`` and ``chris demo``. Every service runs as its own
process on 127.0.0.1 with its data under one directory (``$CHRIS_HOME``,
default ``./.chris``); logs go to ``<home>/logs/<service>.log``.

By default the local site is in zip mode (pfioh and pman share
``<home>/site/store``). With ``innetwork`` it shares CUBE's storage instead:
pfcon (``PFCON_INNETWORK``, ``PFCON_STORAGE_ENV=filesystem``) and pman have
CUBE's storage root as their storebase, and jobs read and write it in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

from cube.client import CubeClient, CubeClientError

#: The reference plugins registered on every embedded install (console scripts).
REFERENCE_PLUGINS = (
    "dircopy",
    "simpledsapp",
    "topologicalcopy",
    "dcm2nifti",
    "lungemphysema",
)
#: Registered only where available, being heavy (torch): on the local backend
#: when the console script is installed, on container backends when the image
#: was built (``build.py --plugins pl-infer``); skipped otherwise.
OPTIONAL_PLUGINS = ("infer",)
#: The pipelines registered on every embedded install: (name, package, YAML file).
REFERENCE_PIPELINES = (("emphysema-v1", "pl_lung_emphysema", "emphysema-v1.yaml"),)
#: Where plugin images carry their descriptor.
DESCRIPTOR_LABEL = "org.chrisproject.descriptor"


class SiteBackend(StrEnum):
    """The pman backends the local compute site can run on (``pman serve --backend``)."""

    LOCAL = "local"
    DOCKER = "docker"
    SWARM = "swarm"
    KUBERNETES = "kubernetes"


class StackError(RuntimeError):
    """A service failed to start or to answer."""


@dataclass
class StackConfig:
    """Ports, credentials and locations of a local fabric."""

    home: Path
    backend: SiteBackend = SiteBackend.LOCAL
    cube_port: int = 8000
    pfcon_port: int = 5005
    pfioh_port: int = 5055
    pman_port: int = 5010
    #: the DICOM bridge (``pacs-bridge``): its REST API and its C-STORE receiver;
    #: ``pacs_bridge`` False leaves it out
    pacs_bridge: bool = True
    pacs_api_port: int = 4005
    dicom_port: int = 11111
    admin_user: str = "chris"
    admin_password: str = "chris1234"
    pfcon_user: str = "pfcon"
    pfcon_password: str = "pfcon1234"
    compute_name: str = "host"
    #: GPUs the local site gives one job (CUBE's placement sends GPU plugins only
    #: to resources that declare GPUs), and jobs it runs at once (0: unlimited)
    gpus: int = 0
    max_jobs: int = 0
    #: plugin console script → image tag, for container backends
    images: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 60.0
    #: scheduler workers as separate processes (``cube worker``); 0 runs the
    #: scheduler inside CUBE's API process (the embedded default)
    workers: int = 0
    #: extra environment for every service (e.g. CUBE_LEASE_SECONDS in tests)
    extra_env: dict[str, str] = field(default_factory=dict)
    #: run the local site in-network: it shares CUBE's storage, nothing is zipped
    innetwork: bool = False

    @property
    def cube_url(self) -> str:
        return f"http://127.0.0.1:{self.cube_port}/"

    @property
    def pfcon_url(self) -> str:
        return f"http://127.0.0.1:{self.pfcon_port}/api/v1/"

    @property
    def cube_storage(self) -> Path:
        """CUBE's storage root (``CUBE_STORAGE_DIR`` of ``extra_env``, else under ``home``)."""
        return Path(self.extra_env.get("CUBE_STORAGE_DIR", self.home / "cube" / "storage"))

    @property
    def site_storebase(self) -> Path:
        """pman's storebase: CUBE's storage in-network, else the store it shares with pfioh."""
        return self.cube_storage if self.innetwork else self.home / "site" / "store"


class Stack:
    """Start, bootstrap and stop the services."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = config.home / "logs"

    def _env(self) -> dict[str, str]:
        c = self.config
        store = c.home / "site" / "store"
        # the caller's PMAN_* settings reach pman (a backend's own settings:
        # PMAN_KUBECONFIG, PMAN_SWARM_CONSTRAINTS, registry credentials, ...);
        # what the stack wires together below overrides them
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CUBE_", "PFCON_", "PFIOH_", "PACS_BRIDGE_"))
        }
        base.update(
            CUBE_HOME=str(c.home / "cube"),
            CUBE_PORT=str(c.cube_port),
            CUBE_ADMIN_USERNAME=c.admin_user,
            CUBE_ADMIN_PASSWORD=c.admin_password,
            PFIOH_PORT=str(c.pfioh_port),
            PFIOH_STOREBASE=str(store),
            PMAN_PORT=str(c.pman_port),
            PMAN_STOREBASE=str(c.site_storebase),
            PMAN_DATA_DIR=str(c.home / "site" / "pman"),
            PMAN_BACKEND=str(c.backend),
            PFCON_PORT=str(c.pfcon_port),
            PFCON_PFCON_USER=c.pfcon_user,
            PFCON_PFCON_PASSWORD=c.pfcon_password,
            PFCON_PFIOH_URL=f"http://127.0.0.1:{c.pfioh_port}/api/v1/",
            PFCON_PMAN_URL=f"http://127.0.0.1:{c.pman_port}/api/v1/",
            # the bridge stores received series in CUBE's storage and registers
            # them with CUBE's admin account; on one machine any calling AE is let in
            PACS_BRIDGE_STORAGE_ROOT=str(c.cube_storage),
            PACS_BRIDGE_ACCEPT_ANY_AET="true",
            PACS_BRIDGE_DICOM_PORT=str(c.dicom_port),
            PACS_BRIDGE_API_PORT=str(c.pacs_api_port),
            PACS_BRIDGE_CUBE_URL=f"{c.cube_url}api/v1/",
            PACS_BRIDGE_CUBE_USERNAME=c.admin_user,
            PACS_BRIDGE_CUBE_PASSWORD=c.admin_password,
            PACS_BRIDGE_SERVICES_FILE=str(c.home / "pacs-bridge" / "services.json"),
            PACS_BRIDGE_REGISTRY_FILE=str(c.home / "pacs-bridge" / "registrations.jsonl"),
        )
        # keep a stable pfcon signing key per installation
        key_file = c.home / "site" / "pfcon.key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(os.urandom(32).hex())
            key_file.chmod(0o600)
        base["PFCON_SECRET_KEY"] = key_file.read_text().strip()
        if c.innetwork:
            c.cube_storage.mkdir(parents=True, exist_ok=True)  # pfcon checks it at start
            base.update(
                PFCON_INNETWORK="true",
                PFCON_STORAGE_ENV="filesystem",
                PFCON_STOREBASE=str(c.cube_storage),
            )
            if c.backend is not SiteBackend.LOCAL and os.geteuid() != 0:
                # plugin containers running as root would leave files in CUBE's
                # storage that CUBE (this user) could not delete or rename
                base.setdefault("PMAN_CONTAINER_USER", f"{os.getuid()}:{os.getgid()}")
        if c.workers:
            base["CUBE_RUN_SCHEDULER"] = "false"
        base.update(c.extra_env)
        return base

    def _services(self) -> list[tuple[str, int, list[str]]]:
        c = self.config
        services = [
            ("pfioh", c.pfioh_port, []),
            ("pman", c.pman_port, ["--backend", str(c.backend)]),
            ("pfcon", c.pfcon_port, []),
            ("cube", c.cube_port, []),
        ]
        if c.pacs_bridge:
            services.append(("pacs_bridge", c.pacs_api_port, []))
        return services

    async def start(self) -> None:
        """Start every service and wait until each answers its health check.

        Raises:
            StackError: a service exited or did not answer in time.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            for name, _port, _extra in self._services():
                await self.start_service(name)
            for n in range(self.config.workers):
                await self.start_worker(f"cube-worker-{n}")
        except BaseException:
            await self.stop()
            raise

    async def start_service(self, name: str) -> None:
        """Start one service (again) and wait for its health check."""
        port, extra = next((p, e) for n, p, e in self._services() if n == name)
        self._spawn(name, [name, "serve", *extra], self._env())
        health = "status" if name == "pacs_bridge" else "health"
        await self._wait_healthy(name, f"http://127.0.0.1:{port}/api/v1/{health}/")

    async def start_worker(self, name: str) -> None:
        """Start a scheduler worker process (``cube worker``) sharing CUBE's database."""
        env = self._env()
        env["CUBE_WORKER_ID"] = name
        self._spawn(name, ["cube", "worker"], env)

    def _spawn(self, name: str, module_args: list[str], env: dict[str, str]) -> None:
        """Start ``python -m <module_args>`` in its own session, logging to ``<name>.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", *module_args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def kill(self, name: str) -> None:
        """Kill one service abruptly (SIGKILL), as a crash would."""
        proc = self.procs.pop(name)
        proc.kill()
        await asyncio.to_thread(proc.wait)

    async def _wait_healthy(self, name: str, url: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.startup_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                if loop.time() > deadline:
                    raise StackError(f"{name} did not answer at {url}:\n{self.tail(name)}")
                await asyncio.sleep(0.1)

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a service's log."""
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def bootstrap(self) -> dict[str, int]:
        """Register the local compute resource, the reference plugins and pipelines.

        Idempotent: an existing resource, plugin or pipeline is kept. Returns
        plugin name → id. :data:`OPTIONAL_PLUGINS` that are not available are
        left out.
        """
        c = self.config
        client = await CubeClient.from_login(c.cube_url, c.admin_user, c.admin_password)
        async with client:
            names = {r.name for r in await client.compute_resources()}
            if c.compute_name not in names:
                await client.add_compute_resource(
                    c.compute_name,
                    c.pfcon_url,
                    c.pfcon_user,
                    c.pfcon_password,
                    description=(
                        f"this machine ({c.backend.value} backend"
                        f"{', in-network' if c.innetwork else ''})"
                    ),
                    gpus=c.gpus,
                    max_concurrent_jobs=c.max_jobs,
                )
            ids: dict[str, int] = {}
            for script in (*REFERENCE_PLUGINS, *OPTIONAL_PLUGINS):
                try:
                    image = c.images.get(script)
                    if image is None and c.backend is not SiteBackend.LOCAL:
                        # container backends run the image: take the descriptor valid inside it
                        host = await asyncio.to_thread(reference_descriptor, script)
                        image = str(host["dock_image"])
                    desc = await asyncio.to_thread(reference_descriptor, script, image)
                except StackError:
                    if script in OPTIONAL_PLUGINS:
                        continue  # not installed or its image not built: not offered here
                    raise
                plugin = await client.register_plugin(desc, [c.compute_name])
                ids[plugin.name] = plugin.id
            for name, package, filename in REFERENCE_PIPELINES:
                if await client.pipelines(name_exact=name):
                    continue
                source = resources.files(package).joinpath(filename)
                with resources.as_file(source) as path:
                    await client.upload_pipeline(path, "yaml")
            return ids

    async def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after 10 s), the DICOM bridge and CUBE first."""
        workers = [n for n in self.procs if n.startswith("cube-worker-")]
        for name in ("pacs_bridge", *workers, "cube", "pfcon", "pman", "pfioh"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


def reference_descriptor(script: str, image: str | None = None) -> dict[str, Any]:
    """A reference plugin's descriptor: from its image label when an image is
    given (container backends), else from running its console script ``--json``.

    Raises:
        StackError: the script or image gives no valid descriptor.
    """
    if image:
        import docker

        try:
            client = docker.from_env()
            labels = client.images.get(image).labels or {}
        except Exception as exc:  # docker errors of any kind: the image is unusable
            raise StackError(
                f"cannot read image {image} ({exc}); build the plugin images with `make images`"
            ) from exc
        if DESCRIPTOR_LABEL not in labels:
            raise StackError(f"image {image} has no {DESCRIPTOR_LABEL} label")
        return json.loads(labels[DESCRIPTOR_LABEL])  # type: ignore[no-any-return]
    exe = Path(sys.executable).parent / script
    cmd = [str(exe) if exe.exists() else script, "--json"]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackError(f"cannot get the descriptor of {script}: {exc}") from exc
    return json.loads(out)  # type: ignore[no-any-return]


__all__ = [
    "CubeClientError",
    "SiteBackend",
    "Stack",
    "StackConfig",
    "StackError",
    "reference_descriptor",
]
