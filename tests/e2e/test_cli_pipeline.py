"""``chris pipeline`` against a running local fabric: add, list, show and run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cube.cli.stack import Stack
from cube.client import CubeClient
from tests.e2e.test_cli import chris

pytestmark = pytest.mark.slow

PIPELINE = """
name: cli pipeline
plugin_tree:
  - title: first
    plugin: pl-simpledsapp v1.0.0
    previous: null
    plugin_parameter_defaults: {prefix: "a_"}
  - title: second
    plugin: pl-simpledsapp v1.0.0
    previous: first
    plugin_parameter_defaults: {prefix: "b_"}
  - title: both
    plugin: pl-topologicalcopy v1.0.0
    previous: second
    plugin_parameter_defaults: {plugininstances: "first,second"}
"""


async def test_cli_pipeline_flow(local_stack: tuple[Stack, CubeClient], tmp_path: Path) -> None:
    stack, client = local_stack
    login = tmp_path / "login.json"
    ok = chris(login, "login", "--url", stack.config.cube_url, "-u", "chris", "-p", "chris1234")
    assert ok.returncode == 0, ok.stderr
    data = tmp_path / "one.txt"
    data.write_text("one\n")
    await client.upload(data, "home/chris/uploads/p/one.txt")
    fs = chris(login, "run", "pl-dircopy", "-p", "dir=home/chris/uploads/p", "--wait")
    assert fs.returncode == 0, fs.stdout + fs.stderr
    root_id = fs.stdout.split("instance ", 1)[1].split()[0]

    source = tmp_path / "cli.yml"
    source.write_text(PIPELINE)
    added = chris(login, "pipeline", "add", str(source))
    assert added.returncode == 0, added.stderr
    assert "cli pipeline" in added.stdout and "3 node(s)" in added.stdout
    assert "cli pipeline" in chris(login, "pipeline", "list").stdout
    shown = chris(login, "pipeline", "show", "cli pipeline")
    assert shown.returncode == 0, shown.stderr
    assert "both: pl-topologicalcopy 1.0.0" in shown.stdout and "prefix='b_'" in shown.stdout

    ran = chris(login, "pipeline", "run", "cli pipeline", "--previous-id", root_id, "--wait")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count("finishedSuccessfully") == 3
    [workflow] = await client.workflows()
    both = next(i for i in await client.workflow_instances(workflow.id) if i.title == "both")
    files = sorted(
        f.fname.removeprefix(both.output_path + "/") for f in await client.instance_files(both.id)
    )
    assert files == ["a_one.txt", "b_a_one.txt"]

    # a pipeline breaking a rule: a clear error, exit 1
    again = chris(login, "pipeline", "add", str(source))
    assert again.returncode == 1 and "a pipeline source file exists at" in again.stderr
    bad = tmp_path / "broken.yml"
    bad.write_text(
        PIPELINE.replace("cli pipeline", "broken").replace('"first,second"', '"x,second"')
    )
    broken = chris(login, "pipeline", "add", str(bad))
    assert broken.returncode == 1
    assert "plugininstances names unknown node(s) 'x'" in broken.stderr
    unknown = chris(login, "pipeline", "run", "nosuch", "--previous-id", root_id)
    assert unknown.returncode == 1 and "no pipeline named 'nosuch'" in unknown.stderr
