"""pfioh's command line: ``pfioh serve [--host H] [--port P] [--storebase DIR]``.

Options override the ``PFIOH_*`` environment; the token is read only from
``PFIOH_API_TOKEN`` so it never shows in a process list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from aiohttp import web
from pydantic import ValidationError

from pfioh.app import create_app
from pfioh.settings import PfiohSettings

app = typer.Typer(help="pfioh: the file I/O handler of a compute site.", add_completion=False)


@app.callback()
def _root() -> None:
    """pfioh: the file I/O handler of a compute site."""


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to listen on [PFIOH_HOST]."),
    port: int | None = typer.Option(None, help="Port to listen on [PFIOH_PORT]."),
    storebase: Path | None = typer.Option(
        None, help="Directory holding the jobs' data [PFIOH_STOREBASE]."
    ),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Run the pfioh HTTP server until interrupted."""
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "storebase": storebase,
        }.items()
        if v is not None
    }
    try:
        settings = PfiohSettings(**overrides)
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    typer.echo(f"pfioh serving on http://{settings.host}:{settings.port}/api/v1/")
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


def main() -> None:
    """Entry point of the ``pfioh`` console script."""
    app()


if __name__ == "__main__":
    main()
