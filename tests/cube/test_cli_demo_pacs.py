"""``chris demo --pacs`` without Orthanc, and the Orthanc lookup it relies on.

No stack starts here: ``--pacs`` without Orthanc must fail before anything
runs. The PACS path itself is in tests/e2e/test_demo_pacs.py and
tests/e2e/test_emphysema_pacs.py.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cube.cli.main as cli
from cube.cli.orthanc import OrthancError, find_orthanc, orthanc_missing_reason, running_orthanc


def hide_orthanc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    )
    assert find_orthanc() is None, "this PATH must hide Orthanc for the test to mean anything"


def test_pacs_without_orthanc_fails_before_starting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hide_orthanc(monkeypatch)
    home = tmp_path / "home"
    result = CliRunner().invoke(cli.app, ["demo", "--home", str(home), "--pacs"])
    assert result.exit_code == 1
    assert "--pacs needs Orthanc" in result.output
    assert "no Orthanc executable on PATH" in result.output
    assert not home.exists()  # no stack was started


def test_find_orthanc_looks_on_the_given_path_only(tmp_path: Path) -> None:
    assert find_orthanc(str(tmp_path)) is None
    exe = tmp_path / "Orthanc"
    exe.write_text("#!/bin/sh\nexit 3\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert find_orthanc(str(tmp_path)) == exe


def test_missing_reason_names_the_package_or_the_sbin_path() -> None:
    reason = orthanc_missing_reason()
    assert reason.startswith("no Orthanc executable on PATH")
    if Path("/usr/sbin/Orthanc").is_file():
        assert "add /usr/sbin to PATH" in reason
    else:
        assert "install the Debian package orthanc" in reason


def test_running_orthanc_raises_when_it_exits(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "Orthanc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bad configuration' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(OrthancError, match=r"exited \(3\).*bad configuration"):
        with running_orthanc(tmp_path / "orthanc", binary=fake):
            pass


def test_running_orthanc_without_a_binary_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hide_orthanc(monkeypatch)
    with pytest.raises(OrthancError, match="no Orthanc executable on PATH"):
        with running_orthanc(tmp_path / "orthanc"):
            pass
