"""``pfioh serve`` as a real process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.components import free_port


def _health(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health/", timeout=1) as r:
            return bytes(r.read())
    except OSError:
        return None


def test_serve_starts_and_answers(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "store"
    log = tmp_path / "pfioh.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pfioh",
                "serve",
                "--port",
                str(port),
                "--storebase",
                str(store),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        body = None
        while body is None and proc.poll() is None and time.monotonic() < deadline:
            body = _health(port)
            if body is None:
                time.sleep(0.05)
        assert body == b'{"health": "OK"}', log.read_text()
        assert store.is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_rejects_bad_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pfioh", "serve", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "port" in result.stderr
