"""A throwaway PostgreSQL cluster on loopback for tests (Debian ``postgresql``).

The cluster lives in a temporary directory, listens on 127.0.0.1 at a free
port with ``trust`` authentication, and is stopped and removed afterwards.
PostgreSQL refuses to run as root, so as root the cluster is run as the
``postgres`` system user (``runuser``), which the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.components import free_port


def _bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, newest version first."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def postgres_available() -> tuple[bool, str]:
    """Whether a cluster can be started here, and why not."""
    if _bin_dir() is None:
        return False, "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False, "running as root and there is no 'postgres' user to run the cluster"
        if shutil.which("runuser") is None:
            return False, "running as root and runuser is missing"
    return True, ""


@dataclass
class PostgresCluster:
    """A running cluster: its port and admin role."""

    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy async URL (asyncpg) of ``database``."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting anyone still on it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command with ``psql``; returns its unaligned output."""
        bin_dir = _bin_dir()
        assert bin_dir is not None
        psql = shutil.which("psql") or str(bin_dir / "psql")
        out = subprocess.run(
            [
                *(psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user),
                *("-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout


def _as_cluster_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresCluster]:
    """Start a fresh cluster; stop it and delete its files on exit.

    Raises:
        RuntimeError: initdb or the server failed (with its log).
    """
    bin_dir = _bin_dir()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="cube-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    port = free_port()
    try:
        subprocess.run(
            _as_cluster_user(
                [
                    *(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust"),
                    *("-E", "UTF8", "--locale=C", "--no-sync"),
                ]
            ),
            check=True,
            capture_output=True,
        )
        # fsync off: a test cluster trades durability for speed
        options = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_cluster_user(
                [
                    *(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log)),
                    *("-o", options, "-w", "-t", "60", "start"),
                ]
            ),
            check=True,
            capture_output=True,
        )
        _wait_for_port(port, timeout=30)
        yield PostgresCluster(port=port, user=user)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace") if exc.stderr else ""
        server = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"PostgreSQL failed to start: {detail}\n{server}") from exc
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_cluster_user(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
                ),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not listen on 127.0.0.1:{port}")
        time.sleep(0.05)
