"""pfcon's command line: ``pfcon serve [--host H] [--port P] ...``.

Options override the ``PFCON_*`` environment (see :class:`pfcon.settings.PfconSettings`).
This is the only module of pfcon that prints or exits.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from aiohttp import web
from pydantic import ValidationError

from pfcon.app import create_app
from pfcon.settings import PfconSettings

app = typer.Typer(help="pfcon: the ChRIS compute-site coordinator (pfcon v5 /jobs/ API).")


@app.callback()
def _root() -> None:
    """pfcon: the ChRIS compute-site coordinator."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port to listen on.")] = None,
    pfioh_url: Annotated[str | None, typer.Option(help="pfioh's API root URL.")] = None,
    pman_url: Annotated[str | None, typer.Option(help="pman's API root URL.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run the pfcon HTTP server until interrupted."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "pfioh_url": pfioh_url,
            "pman_url": pman_url,
        }.items()
        if value is not None
    }
    try:
        settings = PfconSettings(**overrides)
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    web.run_app(create_app(settings), host=settings.host, port=settings.port)


def main() -> None:
    """Console-script entry point (``pfcon``)."""
    app()


if __name__ == "__main__":
    main()
