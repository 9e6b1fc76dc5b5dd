"""``pacs-bridge`` command line: ``serve`` (receiver and REST API) and ``receive`` (receiver only).

Options override the ``PACS_BRIDGE_*`` environment (see
:class:`pacs_bridge.settings.BridgeSettings`). The only module that prints or exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from aiohttp import web
from pydantic import ValidationError

from pacs_bridge.api import create_app
from pacs_bridge.bridge import Bridge
from pacs_bridge.errors import PacsBridgeError
from pacs_bridge.settings import BridgeSettings

app = typer.Typer(help="pacs-bridge: DICOM in from PACS into ChRIS, query/retrieve, export.")


@app.callback()
def _root() -> None:
    """pacs-bridge: DICOM receiver, query/retrieve and export for ChRIS."""


def _settings(**overrides: Any) -> BridgeSettings:
    try:
        return BridgeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"pacs-bridge: bad settings: {exc}", err=True)
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


AeOpt = Annotated[str | None, typer.Option(help="Our AE title (default CHRIS).")]
PortOpt = Annotated[int | None, typer.Option(help="DICOM port (default 11111).")]
StorageOpt = Annotated[Path | None, typer.Option(help="CUBE's storage root.")]
AnyOpt = Annotated[
    bool | None, typer.Option("--accept-any-aet/--known-aets-only", help="Accept any calling AE.")
]
LogOpt = Annotated[str, typer.Option(help="Logging level.")]


@app.command()
def serve(
    ae_title: AeOpt = None,
    dicom_port: PortOpt = None,
    storage_root: StorageOpt = None,
    accept_any_aet: AnyOpt = None,
    api_host: Annotated[str | None, typer.Option(help="REST API address.")] = None,
    api_port: Annotated[int | None, typer.Option(help="REST API port (default 4005).")] = None,
    log_level: LogOpt = "INFO",
) -> None:
    """Run the receiver and the REST API until interrupted."""
    _logging(log_level)
    settings = _settings(
        ae_title=ae_title,
        dicom_port=dicom_port,
        storage_root=storage_root,
        accept_any_aet=accept_any_aet,
        api_host=api_host,
        api_port=api_port,
    )
    try:
        web.run_app(
            create_app(settings), host=settings.api_host, port=settings.api_port, print=None
        )
    except PacsBridgeError as exc:
        typer.echo(f"pacs-bridge: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def receive(
    ae_title: AeOpt = None,
    dicom_port: PortOpt = None,
    storage_root: StorageOpt = None,
    accept_any_aet: AnyOpt = None,
    log_level: LogOpt = "INFO",
) -> None:
    """Run only the C-STORE receiver (and its registrations) until interrupted."""
    _logging(log_level)
    settings = _settings(
        ae_title=ae_title,
        dicom_port=dicom_port,
        storage_root=storage_root,
        accept_any_aet=accept_any_aet,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Bridge(settings):
            await stop.wait()

    try:
        asyncio.run(run())
    except PacsBridgeError as exc:
        typer.echo(f"pacs-bridge: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    """Entry point of the ``pacs-bridge`` script."""
    app()


if __name__ == "__main__":
    main()
