"""``pacs-bridge serve`` and ``receive`` as processes: configuration errors and a running API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.components import free_port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root), str(root / "pacs-bridge"), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PACS_BRIDGE_STORAGE_ROOT": str(tmp_path / "storage"),
        "PACS_BRIDGE_DICOM_HOST": "127.0.0.1",
        **extra,
    }


def test_receive_without_calling_aets_says_what_to_set(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pacs_bridge", "receive", "--dicom-port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "PACS_BRIDGE_ACCEPT_ANY_AET" in proc.stderr


def test_serve_answers_status(tmp_path: Path) -> None:
    api_port, dicom_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacs_bridge",
            "serve",
            "--accept-any-aet",
            "--api-port",
            str(api_port),
            "--dicom-port",
            str(dicom_port),
        ],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{api_port}/api/v1/status/", timeout=5
                ) as resp:
                    status = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "pacs-bridge serve did not answer"
                time.sleep(0.2)
        assert status["ae_title"] == "CHRIS"
        assert status["dicom_port"] == dicom_port
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        if proc.stderr:
            proc.stderr.close()
