"""``chris demo`` and its PACS path, as a user runs it, on the embedded stack.

The command runs in this process (typer's runner) on free ports: its own
ports are fixed defaults that a parallel run may hold. With Orthanc on
``PATH`` the demo runs the PACS path by default; without it, it says so and
still succeeds. Both run with ``--no-emphysema`` (the upload path has its own
test, tests/e2e/test_emphysema.py) to keep the runs short.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import cube.cli.main as cli
from cube.cli.orthanc import find_orthanc
from cube.cli.stack import StackConfig
from tests.e2e.conftest import stack_config
from tests.support.components import require
from tests.support.pacs import DEBIAN_SBIN, orthanc_available

pytestmark = pytest.mark.slow


@pytest.fixture
def free_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``chris demo``'s stack on free ports (its home stays the one it is given)."""
    real = cli._config

    def config(*args: Any, **kwargs: Any) -> StackConfig:
        cfg = real(*args, **kwargs)
        ports = stack_config(cfg.home)
        return dataclasses.replace(
            cfg,
            **{f.name: getattr(ports, f.name) for f in dataclasses.fields(cfg) if "port" in f.name},
        )

    monkeypatch.setattr(cli, "_config", config)


def demo(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli.app, ["demo", "--home", str(home), "--no-emphysema", *args], env={"COLUMNS": "200"}
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_demo_runs_the_pacs_path_with_orthanc(
    free_ports: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require(*orthanc_available())
    # The demo looks on PATH only; Debian's /usr/sbin is not on every user's PATH.
    monkeypatch.setenv("PATH", os.environ["PATH"] + os.pathsep + DEBIAN_SBIN)
    code, out = demo(tmp_path / "home")
    assert code == 0, out
    assert "PACS: a throwaway Orthanc" in out
    assert "routed by ORTHANC" in out
    assert "PACS path: feed" in out and "the SC is in the PACS study" in out
    assert "holds: CT, SC" in out  # the series of Orthanc's study, by SOP class
    assert "skipped" not in out


def test_demo_without_orthanc_skips_the_pacs_path(
    free_ports: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The venv's scripts and the base system, without any sbin directory.
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    )
    assert find_orthanc() is None, "this PATH must hide Orthanc for the test to mean anything"
    code, out = demo(tmp_path / "home")
    assert code == 0, out
    assert "feed 1 finishedSuccessfully" in out
    assert "PACS path skipped" in out and "no Orthanc executable on PATH" in out
    assert "PACS: a throwaway Orthanc" not in out
