"""``chris``: the user's command line (typer + rich).

``chris up`` runs the fabric on this machine; the other commands talk to a
CUBE (local or remote) with a saved login.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from pacs_bridge.client import PacsBridgeClient
from pacs_bridge.errors import PacsBridgeError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from cube.cli.emphysema_pacs_demo import rules_env as pacs_rules_env
from cube.cli.orthanc import OrthancError, find_orthanc, orthanc_missing_reason, running_orthanc
from cube.cli.pacs import app as pacs_app
from cube.cli.publish import publish_image
from cube.cli.stack import SiteBackend, Stack, StackConfig, StackError
from cube.client import CubeClient
from cube.errors import CubeError
from cube.schema import InstanceStatus, Pipeline, PluginInstance
from cube.settings import default_home

app = typer.Typer(help="Use and run the ChRIS-compatible compute fabric.", no_args_is_help=True)
plugin_app = typer.Typer(help="Plugins: list, register and publish.", no_args_is_help=True)
feed_app = typer.Typer(help="Feeds: list and show.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Pipelines: add, list, show and run.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")
app.add_typer(feed_app, name="feed")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(pacs_app, name="pacs")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

STATUS_STYLE = {
    "finishedSuccessfully": "green",
    "finishedWithError": "red",
    "cancelled": "red",
    "started": "yellow",
    "registeringFiles": "yellow",
    "scheduled": "cyan",
    "waiting": "dim",
    "created": "dim",
}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; CUBE errors become a message and exit code 1."""
    try:
        return asyncio.run(coro)
    except CubeError as exc:
        body = getattr(exc, "body", None)
        err.print(f"[red]error:[/red] {json.dumps(body) if isinstance(body, dict) else exc}")
        raise typer.Exit(1) from exc
    except StackError as exc:
        err.print(f"[red]the stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc


# -- login ------------------------------------------------------------------------


def login_file() -> Path:
    """Where the CLI keeps its login (``$CHRIS_LOGIN_FILE``)."""
    default = (
        Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
        / "chris-fabric"
        / "login.json"
    )
    return Path(os.environ.get("CHRIS_LOGIN_FILE", default))


def save_login(url: str, username: str, token: str) -> None:
    path = login_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "username": username, "token": token}))
    path.chmod(0o600)


def client() -> CubeClient:
    """A client from the saved login.

    Raises:
        typer.Exit: not logged in.
    """
    path = login_file()
    if not path.exists():
        err.print("not logged in: run [bold]chris login[/bold]")
        raise typer.Exit(2)
    data = json.loads(path.read_text())
    return CubeClient(data["url"], token=data["token"])


@app.command()
def login(
    url: str = typer.Option("http://127.0.0.1:8000/", help="CUBE's URL."),
    username: str = typer.Option("chris", "--username", "-u"),
    password: str = typer.Option(..., "--password", "-p", prompt=True, hide_input=True),
) -> None:
    """Log in to CUBE and save the token."""

    async def go() -> None:
        c = await CubeClient.from_login(url, username, password)
        async with c:
            assert c.token
            save_login(url, username, c.token)
        console.print(f"logged in to {url} as [bold]{username}[/bold]")

    _run(go())


# -- running the stack ----------------------------------------------------------


def _config(
    home: Path | None,
    backend: SiteBackend,
    port: int,
    gpus: int = 0,
    max_jobs: int = 0,
    innetwork: bool = False,
) -> StackConfig:
    return StackConfig(
        home=(home or default_home()).resolve(),
        backend=backend,
        cube_port=port,
        gpus=gpus,
        max_jobs=max_jobs,
        innetwork=innetwork,
    )


#: ``--innetwork`` of ``chris up`` and ``chris demo``.
INNETWORK_HELP = (
    "Run the local site in-network: pfcon and pman share CUBE's storage and jobs read and "
    "write it in place (nothing zipped or copied). Default: zip mode."
)


@app.command()
def up(
    home: Path | None = typer.Option(None, help="Data directory ($CHRIS_HOME, default ./.chris)."),
    backend: SiteBackend = typer.Option(
        SiteBackend.LOCAL,
        help="pman backend of the local compute site (its settings: PMAN_* variables).",
    ),
    port: int = typer.Option(8000, help="CUBE's port."),
    gpus: int = typer.Option(
        0, min=0, help="GPUs the local site declares per job (first start only)."
    ),
    max_jobs: int = typer.Option(
        0, min=0, help="Jobs the local site runs at once, 0: unlimited (first start only)."
    ),
    innetwork: bool = typer.Option(False, "--innetwork", help=INNETWORK_HELP),
) -> None:
    """Run CUBE, pfcon, pfioh, pman and the PACS bridge here until interrupted (Ctrl-C)."""
    cfg = _config(home, backend, port, gpus, max_jobs, innetwork)

    async def go() -> None:
        stack = Stack(cfg)
        await stack.start()
        try:
            plugins = await stack.bootstrap()
            save_login(cfg.cube_url, cfg.admin_user, await _token(cfg))
            mode = ", in-network" if innetwork else ""
            console.print(
                f"[green]fabric up[/green] at {cfg.cube_url} "
                f"(data in {cfg.home}, {backend.value} backend{mode})"
            )
            console.print(f"plugins: {', '.join(plugins)}; logged in as {cfg.admin_user}")
            if cfg.pacs_bridge:
                console.print(
                    f"DICOM: send studies to AE title CHRIS on port {cfg.dicom_port} "
                    f"(any calling AE title); PACS bridge API at "
                    f"http://127.0.0.1:{cfg.pacs_api_port}/api/v1/"
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                for name, proc in stack.procs.items():
                    if proc.poll() is not None:
                        raise StackError(
                            f"{name} exited with {proc.returncode}:\n{stack.tail(name)}"
                        )
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
            console.print("stopping...")
        finally:
            await stack.stop()

    _run(go())


async def _token(cfg: StackConfig) -> str:
    c = await CubeClient.from_login(cfg.cube_url, cfg.admin_user, cfg.admin_password)
    async with c:
        assert c.token
        return c.token


@app.command()
def demo(
    home: Path | None = typer.Option(None, help="Data directory ($CHRIS_HOME, default ./.chris)."),
    backend: SiteBackend = typer.Option(
        SiteBackend.LOCAL,
        help="pman backend of the local compute site (its settings: PMAN_* variables).",
    ),
    port: int = typer.Option(8000, help="CUBE's port."),
    innetwork: bool = typer.Option(False, "--innetwork", help=INNETWORK_HELP),
    emphysema: bool = typer.Option(
        True,
        "--emphysema/--no-emphysema",
        help="Also run the emphysema-v1 pipeline on a synthetic chest CT and check its result.",
    ),
    pacs: bool | None = typer.Option(
        None,
        "--pacs/--no-pacs",
        help="The PACS path: a throwaway Orthanc sends the CT to the DICOM bridge, the "
        "Secondary Capture goes back. Default: run it when Orthanc is on PATH, else say "
        "why it was skipped; --pacs fails without Orthanc.",
        show_default=False,
    ),
) -> None:
    """Start the fabric, run dircopy → simpledsapp → simpledsapp on sample data,
    print the feed; then run the emphysema-v1 pipeline on a synthetic chest CT
    and check its %LAA-950 against the phantom's truth; then, with Orthanc,
    the same CT from a PACS through the DICOM bridge, the Secondary Capture
    back to it; stop. Exits non-zero unless the feeds succeed and the measures
    are within tolerance."""
    cfg = _config(home, backend, port, innetwork=innetwork)
    orthanc = None if pacs is False else find_orthanc()
    if pacs and orthanc is None:
        # Asked for explicitly: failing beats a demo that silently did less.
        err.print(f"[red]--pacs needs Orthanc[/red]: {orthanc_missing_reason()}")
        raise typer.Exit(1)
    if orthanc is not None:
        # The bridge routes the demo's series only with the rule (emphysema_pacs_demo.RULES).
        cfg.extra_env.update(pacs_rules_env())

    async def go() -> bool:
        stack = Stack(cfg)
        mode = ", in-network" if innetwork else ""
        console.print(f"starting the fabric in {cfg.home} ({backend.value} backend{mode})...")
        await stack.start()
        try:
            await stack.bootstrap()
            c = await CubeClient.from_login(cfg.cube_url, cfg.admin_user, cfg.admin_password)
            async with c:
                ok = await _demo_feed(c, cfg)
                if emphysema:
                    ok = await _demo_emphysema(c, cfg) and ok
                if orthanc is not None:
                    ok = await _demo_pacs(c, cfg, orthanc) and ok
                elif pacs is None:
                    console.print(
                        f"[yellow]PACS path skipped[/yellow]: {orthanc_missing_reason()}; "
                        "`chris demo --pacs` requires it"
                    )
                return ok
        finally:
            await stack.stop()

    ok = _run(go())
    raise typer.Exit(0 if ok else 1)


async def _demo_feed(c: CubeClient, cfg: StackConfig) -> bool:
    sample = cfg.home / "sample"
    sample.mkdir(parents=True, exist_ok=True)
    files = {
        "scan/notes.txt": b"sample study for the fabric demo\n",
        "scan/series1/slice-001.dat": bytes(range(256)) * 64,
        "scan/series1/slice-002.dat": bytes(reversed(range(256))) * 64,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = f"home/{cfg.admin_user}/uploads/demo-{stamp}"
    for rel, data in files.items():
        local = sample / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        await c.upload(local, f"{folder}/{rel}")
    console.print(f"uploaded {len(files)} files to {folder}")
    dircopy = await c.plugin_by_name("pl-dircopy")
    simple = await c.plugin_by_name("pl-simpledsapp")
    root = await c.create_instance(dircopy.id, {"dir": folder}, title=f"demo {stamp}")
    first = await c.create_instance(simple.id, {"prefix": "a_"}, previous_id=root.id)
    second = await c.create_instance(simple.id, {"prefix": "b_"}, previous_id=first.id)
    await _live_wait(c, second.id, root.feed_id)
    tree = await _feed_tree(c, root.feed_id, with_files=True)
    console.print(tree)
    instances = await c.feed_instances(root.feed_id)
    ok = all(i.status == InstanceStatus.FINISHED_SUCCESSFULLY for i in instances)
    outputs = await c.instance_files(second.id)
    expected = {"b_a_notes.txt", "b_a_slice-001.dat", "b_a_slice-002.dat"}
    got = {f.fname.rsplit("/", 1)[-1] for f in outputs}
    if ok and got >= expected:
        console.print(f"[green]feed {root.feed_id} finishedSuccessfully[/green]")
        return True
    err.print(
        f"[red]demo failed[/red]: statuses {[i.status.value for i in instances]}, "
        f"outputs {sorted(got)}"
    )
    return False


async def _demo_emphysema(c: CubeClient, cfg: StackConfig) -> bool:
    # Imported here: numpy and scipy (the phantom) are not needed by the other commands.
    from cube.cli.emphysema_demo import (
        FRACTION,
        LAA_TOLERANCE,
        EmphysemaDemoError,
        run_emphysema_demo,
    )

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = cfg.home / "sample" / f"emphysema-{stamp}"
    folder = f"home/{cfg.admin_user}/uploads/emphysema-{stamp}"
    console.print(
        f"emphysema: synthetic chest CT (emphysematous fraction {FRACTION}) → {folder}, "
        "pipeline emphysema-v1"
    )
    try:
        result = await run_emphysema_demo(
            c, workdir, folder, title=f"emphysema demo {stamp}", wait=_live_wait
        )
    except EmphysemaDemoError as exc:
        err.print(f"[red]emphysema demo failed[/red]: {exc}")
        return False
    # Without files: the tree would list every uploaded slice.
    console.print(await _feed_tree(c, result.feed_id, with_files=False))
    console.print(
        f"%LAA-950: reported {result.measured_laa950_percent:.2f} %, phantom truth "
        f"{result.true_laa950_percent:.2f} % (|error| {result.error:.2f}, tolerance "
        f"{LAA_TOLERANCE}); lung volume {result.report['lung_volume_ml']:.0f} mL"
    )
    console.print(f"report: {result.report_fname} (downloaded to {result.report_local})")
    if result.ok:
        console.print(f"[green]emphysema feed {result.feed_id} checked against the truth[/green]")
        return True
    err.print("[red]emphysema demo failed[/red]: %LAA-950 outside the tolerance")
    return False


async def _demo_pacs(c: CubeClient, cfg: StackConfig, binary: Path) -> bool:
    # Imported here, as in _demo_emphysema: the phantom needs numpy and scipy.
    from cube.cli.emphysema_demo import LAA_TOLERANCE, EmphysemaDemoError
    from cube.cli.emphysema_pacs_demo import CLASS_NAMES, run_emphysema_pacs_demo

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = cfg.home / "sample" / f"emphysema-pacs-{stamp}"
    console.print(
        f"PACS: a throwaway Orthanc ({binary}) stores the chest CT and sends it to the "
        f"bridge (AE CHRIS, port {cfg.dicom_port}); its routing rule runs emphysema-v1"
    )
    try:
        # The directory outlives Orthanc: the ExitStack (inner) stops it first.
        with (
            tempfile.TemporaryDirectory(prefix="chris-demo-orthanc-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            # Orthanc's start blocks (it polls until the REST API answers): off the loop.
            orthanc = await asyncio.to_thread(
                stack.enter_context, running_orthanc(Path(tmp), binary=binary)
            )
            bridge_url = f"http://127.0.0.1:{cfg.pacs_api_port}/"
            async with PacsBridgeClient(bridge_url) as bridge:
                result = await run_emphysema_pacs_demo(c, bridge, orthanc, workdir, wait=_live_wait)
    except (EmphysemaDemoError, OrthancError, PacsBridgeError) as exc:
        err.print(f"[red]PACS demo failed[/red]: {exc}")
        return False
    console.print(await _feed_tree(c, result.feed_id, with_files=False))
    console.print(
        f"PACS: series {result.series_uid} routed by {result.route.calling_aet} → feed "
        f"{result.feed_id} (workflow {result.route.workflow_id})"
    )
    console.print(
        f"%LAA-950: reported {result.measured_laa950_percent:.2f} %, phantom truth "
        f"{result.true_laa950_percent:.2f} % (|error| {result.error:.2f}, tolerance "
        f"{LAA_TOLERANCE})"
    )
    held = sorted(CLASS_NAMES.get(uid, uid) for uid in result.study_classes)
    console.print(
        f"Secondary Capture {result.sc_uid} exported back; Orthanc's study "
        f"{result.study_uid} holds: {', '.join(held) or 'nothing'}"
    )
    if result.ok:
        console.print(
            f"[green]PACS path: feed {result.feed_id} checked against the truth, "
            "the SC is in the PACS study[/green]"
        )
        return True
    if result.error > LAA_TOLERANCE:
        why = "%LAA-950 outside the tolerance"
    elif not result.sc_in_study:
        why = "the SC is not beside the CT in Orthanc's study"
    else:
        why = "an instance of the feed did not finish successfully"
    err.print(f"[red]PACS demo failed[/red]: {why}")
    return False


# -- plugins -----------------------------------------------------------------------


@plugin_app.command("list")
def plugin_list() -> None:
    """List registered plugins."""

    async def go() -> None:
        async with client() as c:
            table = Table("id", "name", "version", "type", "image")
            for p in await c.plugins():
                table.add_row(str(p.id), p.name, p.version, p.type.value, p.dock_image)
            console.print(table)

    _run(go())


@plugin_app.command("add")
def plugin_add(
    descriptor: Path | None = typer.Argument(
        None, exists=True, dir_okay=False, help="Descriptor JSON file."
    ),
    image: str | None = typer.Option(
        None, "--image", help="Instead of a file: an image reference whose label CUBE reads."
    ),
    compute: list[str] = typer.Option(["host"], "--compute", "-c", help="Compute resource names."),
) -> None:
    """Register a plugin from its descriptor JSON, or from an image in a registry (admin)."""
    if (descriptor is None) == (image is None):
        err.print("[red]error:[/red] give a descriptor file or --image REFERENCE (one of them)")
        raise typer.Exit(2)

    async def go() -> None:
        async with client() as c:
            if image is not None:
                p = await c.register_plugin_image(image, compute)
            else:
                assert descriptor is not None
                try:
                    desc = json.loads(descriptor.read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    err.print(f"[red]error:[/red] {descriptor} is not JSON: {exc}")
                    raise typer.Exit(1) from exc
                p = await c.register_plugin(desc, compute)
            console.print(f"registered {p.name} {p.version} as plugin {p.id} ({p.dock_image})")

    _run(go())


@plugin_app.command("publish")
def plugin_publish(
    image: str = typer.Argument(
        ..., help="Local plugin image, e.g. chris-fabric/pl-dircopy:1.0.0."
    ),
    registry: str = typer.Option(..., "--registry", "-r", help="Registry host[:port]."),
    repository: str | None = typer.Option(
        None, help="Repository in the registry (default: the local image's)."
    ),
    tag: str | None = typer.Option(None, help="Tag in the registry (default: the local tag)."),
    compute: list[str] = typer.Option(["host"], "--compute", "-c", help="Compute resource names."),
    username: str | None = typer.Option(
        None, "--username", "-u", envvar="CHRIS_REGISTRY_USERNAME", help="Registry user."
    ),
    password: str | None = typer.Option(
        None, "--password", "-p", envvar="CHRIS_REGISTRY_PASSWORD", help="Registry password."
    ),
    register: bool = typer.Option(
        True, "--register/--no-register", help="Register the pushed image in CUBE (admin)."
    ),
) -> None:
    """Push a local plugin image to a registry and register it in CUBE by reference.

    Without --username, the Docker engine's own login (`docker login`) is used.
    CUBE reads the image from the registry with its own credentials
    (CUBE_REGISTRY_CREDENTIALS).
    """
    if register and not login_file().exists():
        # fail before pushing when the registration cannot happen
        err.print("not logged in: run [bold]chris login[/bold] (or give --no-register)")
        raise typer.Exit(2)

    async def go() -> None:
        published = await asyncio.to_thread(
            publish_image,
            image,
            registry,
            repository=repository,
            tag=tag,
            username=username,
            password=password,
            progress=lambda line: console.print(f"[dim]{line}[/dim]"),
        )
        digest = f" ({published.digest})" if published.digest else ""
        console.print(f"pushed {published.image}{digest}")
        if not register:
            return
        async with client() as c:
            p = await c.register_plugin_image(published.image, compute)
            console.print(f"registered {p.name} {p.version} as plugin {p.id} ({p.dock_image})")

    _run(go())


# -- files and instances ---------------------------------------------------------


@app.command()
def upload(
    local: Path = typer.Argument(..., exists=True, help="A file or a directory."),
    to: str = typer.Option("", help="Destination under home/<user>/ (default uploads/<name>)."),
) -> None:
    """Upload a file or a whole directory."""

    async def go() -> None:
        data = json.loads(login_file().read_text())
        dest = to or f"home/{data['username']}/uploads/{local.name}"
        paths = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        async with client() as c:
            for p in paths:
                target = dest if local.is_file() else f"{dest}/{p.relative_to(local).as_posix()}"
                f = await c.upload(p, target)
                console.print(f"{f.fname} ({f.fsize} bytes)")

    _run(go())


@app.command()
def run(
    plugin: str = typer.Argument(..., help="Plugin name (e.g. pl-simpledsapp) or id."),
    param: list[str] = typer.Option([], "--param", "-p", help="name=value, repeatable."),
    previous: int | None = typer.Option(None, "--previous", help="Parent instance (ds plugins)."),
    title: str | None = typer.Option(None),
    version: str | None = typer.Option(None),
    compute: str | None = typer.Option(None, help="Compute resource name."),
    cpu_limit: str | None = typer.Option(None, help="e.g. 2000m"),
    memory_limit: str | None = typer.Option(None, help="e.g. 1Gi"),
    wait: bool = typer.Option(False, help="Wait with a live status display."),
) -> None:
    """Run a plugin: a new feed (fs) or on an instance (ds, --previous)."""
    params: dict[str, str] = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep:
            err.print(f"[red]error:[/red] --param takes name=value, got {item!r}")
            raise typer.Exit(2)
        params[name] = value

    async def go() -> bool:
        async with client() as c:
            p = await c.plugin_by_name(plugin, version) if not plugin.isdigit() else None
            inst = await c.create_instance(
                p.id if p else int(plugin),
                params,
                previous_id=previous,
                title=title,
                compute_resource_name=compute,
                cpu_limit=cpu_limit,
                memory_limit=memory_limit,
            )
            console.print(
                f"instance {inst.id} of {inst.plugin_name} in feed {inst.feed_id}: "
                f"{inst.status.value}"
            )
            if not wait:
                return True
            final = await _live_wait(c, inst.id, inst.feed_id)
            return final.status == InstanceStatus.FINISHED_SUCCESSFULLY

    raise typer.Exit(0 if _run(go()) else 1)


@app.command("wait")
def wait_cmd(instance: int = typer.Argument(..., help="Instance id.")) -> None:
    """Wait for an instance to end, showing its feed's statuses live."""

    async def go() -> bool:
        async with client() as c:
            inst = await c.instance(instance)
            final = await _live_wait(c, instance, inst.feed_id)
            return final.status == InstanceStatus.FINISHED_SUCCESSFULLY

    raise typer.Exit(0 if _run(go()) else 1)


def _status_table(instances: list[PluginInstance]) -> Table:
    table = Table()
    for name in ("id", "plugin", "previous", "status", "started", "ended", "error"):
        # the status must stay readable in narrow terminals: never wrapped or cut
        table.add_column(name, no_wrap=name == "status", min_width=20 if name == "status" else None)
    for i in sorted(instances, key=lambda x: x.id):
        style = STATUS_STYLE.get(i.status.value, "")
        table.add_row(
            str(i.id),
            f"{i.plugin_name} {i.plugin_version}",
            str(i.previous_id or ""),
            f"[{style}]{i.status.value}[/{style}]" if style else i.status.value,
            i.start_date.strftime("%H:%M:%S") if i.start_date else "",
            i.end_date.strftime("%H:%M:%S") if i.end_date else "",
            (f"{i.error_code} " + i.error_message).strip(),
        )
    return table


async def _live_wait(c: CubeClient, inst_id: int, feed_id: int) -> PluginInstance:
    last: PluginInstance | None = None
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        async for inst in c.watch(inst_id):
            last = inst
            live.update(_status_table(await c.feed_instances(feed_id)))
    console.print()
    assert last is not None
    return last


async def _feed_tree(c: CubeClient, feed_id: int, *, with_files: bool) -> Tree:
    feed = await c.feed(feed_id)
    instances = sorted(await c.feed_instances(feed_id), key=lambda i: i.id)
    tree = Tree(f"[bold]feed {feed.id}[/bold] {feed.name}")
    nodes: dict[int, Tree] = {}
    for i in instances:
        style = STATUS_STYLE.get(i.status.value, "")
        label = f"#{i.id} {i.plugin_name} {i.plugin_version} [{style}]{i.status.value}[/{style}]"
        parent = nodes.get(i.previous_id or -1, tree)
        node = nodes[i.id] = parent.add(label)
        if with_files:
            for f in await c.instance_files(i.id):
                node.add(f"[dim]{f.fname.removeprefix(i.output_path + '/')}[/dim] ({f.fsize} B)")
    return tree


@feed_app.command("list")
def feed_list() -> None:
    """List your feeds."""

    async def go() -> None:
        async with client() as c:
            table = Table("id", "name", "created", "finished", "errored", "cancelled")
            for f in await c.feeds():
                table.add_row(
                    str(f.id),
                    f.name,
                    f.creation_date.strftime("%Y-%m-%d %H:%M"),
                    str(f.finished_jobs),
                    str(f.errored_jobs),
                    str(f.cancelled_jobs),
                )
            console.print(table)

    _run(go())


@feed_app.command("show")
def feed_show(feed: int, files: bool = typer.Option(True, help="List output files.")) -> None:
    """Show a feed as a tree of instances with statuses and outputs."""

    async def go() -> None:
        async with client() as c:
            console.print(await _feed_tree(c, feed, with_files=files))

    _run(go())


@app.command()
def files(instance: int = typer.Argument(..., help="Instance id.")) -> None:
    """List an instance's output files."""

    async def go() -> None:
        async with client() as c:
            table = Table("id", "file", "bytes")
            for f in await c.instance_files(instance):
                table.add_row(str(f.id), f.fname, str(f.fsize))
            console.print(table)

    _run(go())


@app.command()
def download(
    instance: int = typer.Argument(..., help="Instance id."),
    dest: Path = typer.Argument(Path("."), help="Local directory."),
) -> None:
    """Download an instance's outputs, keeping their relative paths."""

    async def go() -> None:
        async with client() as c:
            inst = await c.instance(instance)
            for f in await c.instance_files(instance):
                rel = f.fname.removeprefix(inst.output_path + "/")
                target = (dest / rel).resolve()
                if dest.resolve() not in target.parents:
                    raise typer.BadParameter(f"refusing to write outside {dest}: {rel}")
                n = await c.download(f.file_resource, target)
                console.print(f"{target} ({n} bytes)")

    _run(go())


# -- pipelines -----------------------------------------------------------------------


async def _pipeline(c: CubeClient, name_or_id: str) -> Pipeline:
    """A pipeline by id (all digits) or exact name."""
    return await (
        c.pipeline(int(name_or_id)) if name_or_id.isdigit() else c.pipeline_by_name(name_or_id)
    )


@pipeline_app.command("add")
def pipeline_add(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A YAML or JSON pipeline."),
    kind: str | None = typer.Option(None, "--type", help="yaml or json (default: from the name)."),
) -> None:
    """Upload a pipeline file; CUBE validates it and creates the pipeline."""

    async def go() -> None:
        async with client() as c:
            source = await c.upload_pipeline(file, kind)
            nodes = await c.pipeline_pipings(source.pipeline_id)
            console.print(
                f"pipeline {source.pipeline_id} [bold]{source.pipeline_name}[/bold]: "
                f"{len(nodes)} node(s), stored as {source.fname}"
            )

    _run(go())


@pipeline_app.command("list")
def pipeline_list() -> None:
    """List the pipelines you may run."""

    async def go() -> None:
        async with client() as c:
            table = Table("id", "name", "category", "locked", "owner")
            for p in await c.pipelines():
                table.add_row(str(p.id), p.name, p.category, str(p.locked), p.owner_username)
            console.print(table)

    _run(go())


@pipeline_app.command("show")
def pipeline_show(pipeline: str = typer.Argument(..., help="Pipeline name or id.")) -> None:
    """Show a pipeline as a tree of nodes with their plugins, limits and defaults."""

    async def go() -> None:
        async with client() as c:
            p = await _pipeline(c, pipeline)
            defaults: dict[int, list[str]] = {}
            for d in await c.pipeline_defaults(p.id):
                defaults.setdefault(d.plugin_piping_id, []).append(f"{d.param_name}={d.value!r}")
            tree = Tree(f"[bold]pipeline {p.id}[/bold] {p.name}")
            branches: dict[int, Tree] = {}
            for n in await c.pipeline_pipings(p.id):
                parent = branches.get(n.previous_id or -1, tree)
                label = (
                    f"{n.title}: {n.plugin_name} {n.plugin_version} "
                    f"[dim](piping {n.id}, cpu {n.cpu_limit}m, memory {n.memory_limit}Mi)[/dim]"
                )
                branches[n.id] = node = parent.add(label)
                if defaults.get(n.id):
                    node.add("[dim]" + ", ".join(defaults[n.id]) + "[/dim]")
            console.print(tree)

    _run(go())


@pipeline_app.command("run")
def pipeline_run(
    pipeline: str = typer.Argument(..., help="Pipeline name or id."),
    previous_id: int = typer.Option(..., "--previous-id", help="Instance the pipeline runs on."),
    title: str | None = typer.Option(None, help="Workflow title (default: the pipeline's name)."),
    wait: bool = typer.Option(False, help="Wait until every instance ended."),
) -> None:
    """Run a pipeline as a workflow on an existing plugin instance."""

    async def go() -> bool:
        async with client() as c:
            p = await _pipeline(c, pipeline)
            workflow = await c.create_workflow(p.id, previous_id, title=title)
            instances = await c.workflow_instances(workflow.id)
            console.print(
                f"workflow {workflow.id} of {p.name}: instances "
                + ", ".join(f"{i.id} ({i.title})" for i in sorted(instances, key=lambda i: i.id))
            )
            if not wait:
                return True
            final = [await c.wait(i.id) for i in instances]
            console.print(_status_table(final))
            return all(i.status == InstanceStatus.FINISHED_SUCCESSFULLY for i in final)

    raise typer.Exit(0 if _run(go()) else 1)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())  # type: ignore[func-returns-value]
