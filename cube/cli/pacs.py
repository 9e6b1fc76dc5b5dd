"""``chris pacs``: the PACS bridge's services, query, retrieve, export and status.

Every command talks to the bridge's REST API through
:class:`pacs_bridge.client.PacsBridgeClient`; the bridge's URL is ``--url``
or ``$CHRIS_PACS_URL``, by default the one ``chris up`` serves
(``http://127.0.0.1:4005/``). Errors of the bridge (unreachable, an unknown
service, a PACS that refused the association) are printed on one line and
exit with status 1; bad input exits with status 2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from pacs_bridge.client import PacsBridgeClient
from pacs_bridge.errors import PacsBridgeError
from pacs_bridge.schema import (
    BridgeStatus,
    PacsService,
    QueryLevel,
    RetrieveIn,
    RetrieveMethod,
    RetrieveState,
    RetrieveStatus,
)
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cube.cli.stack import StackConfig

app = typer.Typer(
    help="The PACS bridge: PACS services, query, retrieve, export and status.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)
#: The bridge's API as ``chris up`` serves it.
DEFAULT_URL = f"http://127.0.0.1:{StackConfig.pacs_api_port}/"
T = TypeVar("T")

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", envvar="CHRIS_PACS_URL", help="The PACS bridge's REST API (chris up serves it)."
    ),
]
NameArg = Annotated[str, typer.Argument(help="The PACS service's name.")]

STATE_STYLE = {RetrieveState.DONE: "green", RetrieveState.FAILED: "red", RetrieveState.RUNNING: ""}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a bridge error becomes one line on stderr and exit status 1."""
    try:
        return asyncio.run(coro)
    except PacsBridgeError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _styled(state: RetrieveState) -> str:
    style = STATE_STYLE[state]
    return f"[{style}]{state.value}[/{style}]" if style else state.value


# -- services ----------------------------------------------------------------------


@app.command("services")
def services(url: UrlOpt = DEFAULT_URL) -> None:
    """List the PACS services the bridge knows."""

    async def go() -> list[PacsService]:
        async with PacsBridgeClient(url) as bridge:
            return await bridge.services()

    table = Table("name", "AE title", "host", "port", "our AE title", "retrieve by")
    for s in _run(go()):
        method = RetrieveMethod.GET if s.prefer_get else RetrieveMethod.MOVE
        table.add_row(s.name, s.aet, s.host, str(s.port), s.our_aet or "", method.value)
    console.print(table)


@app.command("add")
def add(
    name: NameArg,
    aet: Annotated[str, typer.Option("--aet", help="The PACS's AE title.")],
    host: Annotated[str, typer.Option("--host", help="The PACS's host name or address.")],
    port: Annotated[int, typer.Option("--port", help="The PACS's DICOM port.")],
    our_aet: Annotated[
        str | None, typer.Option("--our-aet", help="Our calling AE title towards it.")
    ] = None,
    prefer_get: Annotated[
        bool,
        typer.Option("--get/--move", help="Retrieve with C-GET (no route back to us needed)."),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Add (or replace) a PACS service."""
    try:
        service = PacsService(
            name=name, aet=aet, host=host, port=port, our_aet=our_aet, prefer_get=prefer_get
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]invalid service:[/red] {problems}", highlight=False)
        raise typer.Exit(2) from None

    async def go() -> PacsService:
        async with PacsBridgeClient(url) as bridge:
            return await bridge.put_service(service)

    saved = _run(go())
    console.print(
        f"PACS service [bold]{saved.name}[/bold]: {saved.aet} at {saved.host}:{saved.port}"
    )


@app.command("rm")
def rm(name: NameArg, url: UrlOpt = DEFAULT_URL) -> None:
    """Forget a PACS service."""

    async def go() -> None:
        async with PacsBridgeClient(url) as bridge:
            await bridge.delete_service(name)

    _run(go())
    console.print(f"removed PACS service [bold]{name}[/bold]")


@app.command("echo")
def echo(name: NameArg, url: UrlOpt = DEFAULT_URL) -> None:
    """C-ECHO a PACS service: can the bridge associate with it?"""

    async def go() -> None:
        async with PacsBridgeClient(url) as bridge:
            await bridge.echo(name)

    _run(go())
    console.print(f"[green]{name} answered C-ECHO[/green]")


# -- query -------------------------------------------------------------------------


@app.command("query")
def query(
    name: NameArg,
    level: Annotated[QueryLevel, typer.Option(help="Query/retrieve level.")] = QueryLevel.STUDY,
    patient_id: Annotated[str | None, typer.Option(help="PatientID (wildcards * ?).")] = None,
    patient_name: Annotated[str | None, typer.Option(help="PatientName (wildcards * ?).")] = None,
    study_uid: Annotated[str | None, typer.Option(help="StudyInstanceUID.")] = None,
    study_date: Annotated[
        str | None, typer.Option(help="StudyDate: YYYYMMDD or a range YYYYMMDD-YYYYMMDD.")
    ] = None,
    accession: Annotated[str | None, typer.Option(help="AccessionNumber.")] = None,
    modality: Annotated[
        str | None,
        typer.Option(help="Modality (series level) or ModalitiesInStudy (study level)."),
    ] = None,
    series_uid: Annotated[str | None, typer.Option(help="SeriesInstanceUID.")] = None,
    match: Annotated[
        list[str] | None,
        typer.Option("--match", "-m", help="Any DICOM keyword: KEYWORD=VALUE (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the matches as JSON.")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """C-FIND on a PACS service; the matches as a table."""
    keys: dict[str, str] = {}
    for item in match or []:
        keyword, sep, value = item.partition("=")
        if not sep or not keyword.strip():
            err.print(f"[red]--match {item!r}:[/red] expected KEYWORD=VALUE", highlight=False)
            raise typer.Exit(2)
        keys[keyword.strip()] = value
    options = {
        "PatientID": patient_id,
        "PatientName": patient_name,
        "StudyInstanceUID": study_uid,
        "StudyDate": study_date,
        "AccessionNumber": accession,
        "SeriesInstanceUID": series_uid,
        "ModalitiesInStudy" if level is QueryLevel.STUDY else "Modality": modality,
    }
    keys.update({k: v for k, v in options.items() if v is not None})

    async def go() -> list[dict[str, str]]:
        async with PacsBridgeClient(url) as bridge:
            return await bridge.query(name, level, **keys)

    results = _run(go())
    if as_json:
        # plain, not through rich: a console would wrap long UIDs inside the JSON
        typer.echo(json.dumps(results, indent=2))
        return
    title = f"{len(results)} {level.value.lower()} match(es) on {name}"
    console.print(_matches_table(level, results, title))


#: The columns of a query's table, by level, in this order (other keywords follow).
COLUMNS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    QueryLevel.STUDY: (
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    QueryLevel.SERIES: (
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
        "StudyInstanceUID",
    ),
}
#: Short headers for long keywords.
HEADERS = {
    "NumberOfPatientRelatedStudies": "studies",
    "NumberOfStudyRelatedSeries": "series",
    "NumberOfStudyRelatedInstances": "instances",
    "NumberOfSeriesRelatedInstances": "instances",
    "ModalitiesInStudy": "modalities",
    "PatientBirthDate": "BirthDate",
    "PatientSex": "Sex",
}
#: What every C-FIND answer carries and nobody needs to read.
NOISE = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})


def _matches_table(level: QueryLevel, results: list[dict[str, str]], title: str) -> Table:
    """The C-FIND matches: the level's columns first, then any other keyword with a value."""
    present = {k for row in results for k, v in row.items() if v} - NOISE
    columns = [c for c in COLUMNS[level] if c in present]
    columns += sorted(present - set(columns))
    table = Table(title=title)
    for c in columns:
        # a UID is only useful whole (to paste into a retrieve): never wrapped or cut
        whole = c.endswith("UID")
        width = max(len(row.get(c, "")) for row in results) if whole else None
        table.add_column(HEADERS.get(c, c), no_wrap=whole, min_width=width)
    for row in results:
        table.add_row(*(row.get(c, "") for c in columns))
    return table


# -- retrieve ----------------------------------------------------------------------


@app.command("retrieve")
def retrieve(
    name: NameArg,
    study_uid: Annotated[str, typer.Option(help="StudyInstanceUID to retrieve.")],
    series_uid: Annotated[
        str | None, typer.Option(help="Only this series of the study (SeriesInstanceUID).")
    ] = None,
    method: Annotated[
        RetrieveMethod | None,
        typer.Option(help="C-MOVE or C-GET (default: the service's preference)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the retrieve's progress to its end.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Retrieve a study or a series into ChRIS (exit status 1 if a waited retrieve fails)."""
    try:
        what = RetrieveIn(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, method=method)
    except ValidationError as exc:
        err.print(f"[red]invalid retrieve:[/red] {exc.errors()[0]['msg']}", highlight=False)
        raise typer.Exit(2) from None

    async def go() -> RetrieveStatus:
        async with PacsBridgeClient(url) as bridge:
            started = await bridge.retrieve(name, what)
            console.print(
                f"retrieve [bold]{started.id}[/bold] started ({started.method.value} from {name})"
            )
            if not wait:
                console.print(f"follow it with: chris pacs status {started.id} --wait")
                return started
            return await _follow(bridge, started)

    final = _run(go())
    if wait:
        console.print(_retrieve_line(final))
        if final.state is not RetrieveState.DONE:
            raise typer.Exit(1)


async def _follow(bridge: PacsBridgeClient, started: RetrieveStatus) -> RetrieveStatus:
    """Show a progress bar fed by the retrieve's server-sent events; its final status."""
    final = started
    columns = (
        TextColumn("retrieve {task.fields[ident]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=None, ident=started.id, detail="")
        async for event in bridge.retrieve_events(started.id):
            final = event.status
            done = final.completed + final.failed + final.warning
            detail = f"{final.failed} failed" if final.failed else ""
            progress.update(task, completed=done, total=final.total, detail=detail)
    return final


def _retrieve_line(st: RetrieveStatus) -> str:
    what = st.SeriesInstanceUID or st.StudyInstanceUID
    line = (
        f"retrieve {st.id} {_styled(st.state)}: {st.completed} completed, {st.failed} failed, "
        f"{st.warning} warning ({st.method.value} of {what} from {st.service})"
    )
    return f"{line}: {st.error}" if st.error else line


# -- export ------------------------------------------------------------------------


@app.command("export")
def export(
    name: NameArg,
    files: Annotated[
        list[str], typer.Argument(help="Stored DICOM files (paths relative to CUBE's storage).")
    ],
    study_from: Annotated[
        str | None,
        typer.Option(help="A stored file of the original study whose identifiers to copy."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """C-STORE stored DICOM files (a plugin's outputs) to a PACS service."""

    async def go() -> tuple[list[str], dict[str, str]]:
        async with PacsBridgeClient(url) as bridge:
            out = await bridge.export(name, files, study_from)
            return out.stored, out.failed

    stored, failed = _run(go())
    console.print(f"{len(stored)} instance(s) stored on {name}")
    for path, why in failed.items():
        err.print(f"[red]{path}:[/red] {why}", highlight=False)
    if failed:
        raise typer.Exit(1)


# -- status ------------------------------------------------------------------------


@app.command("status")
def status(
    retrieve_id: Annotated[
        int | None, typer.Argument(help="A retrieve's id (default: the bridge and its retrieves).")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Follow the retrieve to its end (exit 1 if it fails)."
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """The bridge's status and retrieves, or one retrieve's."""
    if retrieve_id is not None:

        async def one() -> RetrieveStatus:
            async with PacsBridgeClient(url) as bridge:
                st = await bridge.retrieve_status(retrieve_id)
                return await _follow(bridge, st) if wait else st

        final = _run(one())
        console.print(_retrieve_line(final))
        if wait and final.state is not RetrieveState.DONE:
            raise typer.Exit(1)
        return
    if wait:
        err.print("[red]--wait follows one retrieve:[/red] name its id", highlight=False)
        raise typer.Exit(2)

    async def every() -> tuple[BridgeStatus, list[RetrieveStatus]]:
        async with PacsBridgeClient(url) as bridge:
            return await bridge.status(), await bridge.retrieves()

    st, retrieves = _run(every())
    received = ", ".join(f"{n} {k}" for k, n in sorted(st.instances.items())) or "nothing"
    console.print(f"[bold]{st.ae_title}[/bold] receiving on DICOM port {st.dicom_port}")
    console.print(
        f"instances: {received}; series registered: {st.series_registered} "
        f"({st.files_registered} files), pending: {st.series_pending}"
    )
    for failure in st.registration_failures:
        err.print(
            f"[red]registration failed[/red] {failure.series} ({failure.files} files): "
            f"{failure.error}",
            highlight=False,
        )
    routing = st.routing
    if routing.rules:
        console.print(
            f"routing: {routing.rules} rule(s), {routing.series_routed} series routed, "
            f"{len(routing.failures)} failed"
        )
        for routed in routing.failures:
            err.print(
                f"[red]routing failed[/red] {routed.series} → {routed.pipeline}: {routed.error}",
                highlight=False,
            )
    table = Table("id", "service", "method", "study / series", "state", "done", "failed", "ended")
    for r in retrieves[-50:]:
        table.add_row(
            str(r.id),
            r.service,
            r.method.value,
            r.SeriesInstanceUID or r.StudyInstanceUID,
            _styled(r.state),
            str(r.completed),
            str(r.failed),
            r.ended_at.strftime("%Y-%m-%d %H:%M:%S") if r.ended_at else "",
        )
    console.print(table)
