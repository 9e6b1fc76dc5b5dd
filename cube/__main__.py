"""``cube serve``: run CUBE's API (and, by default, its scheduler)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from aiohttp import web

app = typer.Typer(help="CUBE: the central backend of the fabric.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """CUBE service commands."""


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to bind (CUBE_HOST)."),
    port: int | None = typer.Option(None, help="Port (CUBE_PORT, default 8000)."),
    home: Path | None = typer.Option(None, help="Data directory (CUBE_HOME)."),
    no_scheduler: bool = typer.Option(False, help="Serve the API only; run workers elsewhere."),
) -> None:
    """Serve the API on embedded defaults unless CUBE_* settings say otherwise."""
    from cube.app import create_app
    from cube.settings import CubeSettings

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if home:
        overrides["home"] = home.resolve()
    if no_scheduler:
        overrides["run_scheduler"] = False
    settings = CubeSettings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cube %(levelname)s %(message)s")
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


@app.command()
def worker(home: Path | None = typer.Option(None, help="Data directory (CUBE_HOME).")) -> None:
    """Run only the scheduler (another process serves the API)."""
    import asyncio

    from cube.db.engine import create_schema, make_engine, make_sessionmaker
    from cube.scheduler import Scheduler, StatusHub
    from cube.settings import CubeSettings
    from cube.storage import FilesystemStorage

    settings = CubeSettings(**({"home": home.resolve()} if home else {}))  # type: ignore[arg-type]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s cube-worker %(levelname)s %(message)s"
    )

    async def _run() -> None:
        engine = make_engine(settings.resolved_database_url())
        await create_schema(engine)
        storage = FilesystemStorage(settings.resolved_storage_dir())
        try:
            await Scheduler(settings, make_sessionmaker(engine), storage, StatusHub()).run()
        finally:
            await engine.dispose()

    asyncio.run(_run())


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
