"""pman's command line: ``pman serve [--host ...] [--port ...] [--backend NAME]``.

Options override the ``PMAN_*`` environment. This is the only module of pman
that prints or exits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from aiohttp import web
from pydantic import ValidationError

from pman.app import create_app
from pman.errors import PmanError
from pman.settings import BackendName, PmanSettings

app = typer.Typer(help="pman: runs ChRIS plugin jobs on a compute backend.", add_completion=False)


@app.callback()
def _cli() -> None:
    """pman: runs ChRIS plugin jobs on a compute backend."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 5010).")] = None,
    backend: Annotated[
        BackendName | None, typer.Option(help="Compute backend (default local).")
    ] = None,
    storebase: Annotated[Path | None, typer.Option(help="The storebase shared with pfioh.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory of the local backend.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run the pman server until interrupted."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "backend": backend,
            "storebase": storebase,
            "data_dir": data_dir,
        }.items()
        if v is not None
    }
    try:
        settings = PmanSettings(**overrides)
    except ValidationError as exc:
        typer.echo(f"pman: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port)
    except PmanError as exc:
        typer.echo(f"pman: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    """Console script entry point (``pman``)."""
    app()


if __name__ == "__main__":
    main()
