"""The ``chris`` CLI against a running local fabric, as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cube.cli.stack import Stack
from cube.client import CubeClient

pytestmark = pytest.mark.slow

CHRIS = str(Path(sys.executable).parent / "chris")


def chris(login_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHRIS_LOGIN_FILE": str(login_file), "COLUMNS": "160"}
    return subprocess.run(
        [CHRIS, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def plugin_json(script: str) -> dict[str, object]:
    """The descriptor a reference plugin prints with ``--json``."""
    exe = str(Path(sys.executable).parent / script)
    out = subprocess.run([exe, "--json"], capture_output=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


async def test_cli_user_flow(local_stack: tuple[Stack, CubeClient], tmp_path: Path) -> None:
    stack, _client = local_stack
    login = tmp_path / "login.json"
    url = stack.config.cube_url

    # not logged in yet: a clear message, not a traceback
    out = chris(login, "feed", "list")
    assert out.returncode == 2 and "chris login" in out.stderr
    bad = chris(login, "login", "--url", url, "-u", "chris", "-p", "wrong-password")
    assert bad.returncode == 1 and "Unable to log in" in bad.stderr
    ok = chris(login, "login", "--url", url, "-u", "chris", "-p", "chris1234")
    assert ok.returncode == 0, ok.stderr
    assert oct(login.stat().st_mode & 0o777) == "0o600"

    study = tmp_path / "study"
    (study / "series").mkdir(parents=True)
    (study / "series" / "one.dcm").write_bytes(b"\x00DICM" * 100)
    (study / "readme.txt").write_text("a study\n")
    up = chris(login, "upload", str(study), "--to", "home/chris/uploads/study")
    assert up.returncode == 0, up.stderr
    assert "home/chris/uploads/study/series/one.dcm" in up.stdout

    fs = chris(login, "run", "pl-dircopy", "-p", "dir=home/chris/uploads/study", "--wait")
    assert fs.returncode == 0, fs.stdout + fs.stderr
    assert "finishedSuccessfully" in fs.stdout
    root_id = int(fs.stdout.split("instance ", 1)[1].split()[0])
    ds = chris(
        login, "run", "pl-simpledsapp", "--previous", str(root_id), "-p", "prefix=x_", "--wait"
    )
    assert ds.returncode == 0, ds.stdout + ds.stderr
    ds_id = int(ds.stdout.split("instance ", 1)[1].split()[0])

    files = chris(login, "files", str(ds_id))
    assert "x_one.dcm" in files.stdout and "x_readme.txt" in files.stdout
    dest = tmp_path / "out"
    dl = chris(login, "download", str(ds_id), str(dest))
    assert dl.returncode == 0, dl.stderr
    assert (dest / "series" / "x_one.dcm").read_bytes() == b"\x00DICM" * 100
    assert (dest / "x_readme.txt").read_text() == "a study\n"

    tree = chris(login, "feed", "show", "1")
    assert tree.returncode == 0 and "pl-simpledsapp" in tree.stdout and "x_one.dcm" in tree.stdout

    # bad input: a clear error, exit 1
    wrong = chris(login, "run", "pl-simpledsapp", "--previous", str(root_id), "-p", "dummyInt=abc")
    assert wrong.returncode == 1 and "dummyInt" in wrong.stderr
    missing = chris(login, "run", "pl-nosuch")
    assert missing.returncode == 1 and "no plugin" in missing.stderr

    # registering a plugin from a descriptor file
    desc = plugin_json("simpledsapp")
    desc.update(name="pl-copyofsimple", version="9.0")
    desc_file = tmp_path / "d.json"
    desc_file.write_text(json.dumps(desc))
    added = chris(login, "plugin", "add", str(desc_file), "--compute", "host")
    assert added.returncode == 0, added.stderr
    listed = chris(login, "plugin", "list")
    assert "pl-copyofsimple" in listed.stdout
    desc_file.write_text("{broken")
    broken = chris(login, "plugin", "add", str(desc_file))
    assert broken.returncode == 1 and "not JSON" in broken.stderr
