"""End to end: a pipeline with ts nodes runs as a workflow on pman's ``local`` backend.

pl-dircopy makes a feed from uploaded data; a YAML pipeline (uploaded as a
source file) then runs on it: pl-simpledsapp ``left``, pl-simpledsapp
``right`` after it, and two pl-topologicalcopy nodes joining both, one
grouped by instance and one filtered per parent. Every output file of the
joins is downloaded and compared with what the rules of ``chris_sdk.topology``
give.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cube.cli.stack import Stack
from cube.client import CubeClient
from cube.schema import InstanceStatus

pytestmark = pytest.mark.slow

S = InstanceStatus

TREE: dict[str, bytes] = {
    "study/notes.txt": b"hello pipelines\n",
    "study/series 1/ïmage-001.dcm": bytes(range(256)) * 64,
    "study/series 1/ïmage-002.dcm": b"\x00" * 5000,
}

PIPELINE = r"""
name: e2e join
authors: chris-fabric developers
category: test
description: two simpledsapp steps joined by topological copies
locked: true
plugin_tree:
  - title: left
    plugin: pl-simpledsapp v1.0.0
    previous: null
    plugin_parameter_defaults: {prefix: "l_"}
  - title: right
    plugin: pl-simpledsapp v1.0.0
    previous: left
    plugin_parameter_defaults: {prefix: "r_", sleepLength: 1}
  - title: join
    plugin: pl-topologicalcopy v1.0.0
    previous: left
    plugin_parameter_defaults: {plugininstances: "left,right", groupByInstance: true}
  - title: pick
    plugin: pl-topologicalcopy v1.0.0
    previous: right
    plugin_parameter_defaults: {plugininstances: "left,right", filter: '\.dcm$,notes'}
"""


def renamed(rel: str, prefix: str) -> str:
    folder, _, name = rel.rpartition("/")
    return f"{folder}/{prefix}{name}"


async def test_workflow_with_ts_joins_on_local_backend(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    await _run_workflow(local_stack[1], tmp_path)


async def test_workflow_with_ts_joins_in_network(
    innetwork_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    """The same with the site sharing CUBE's storage (no zip either way)."""
    await _run_workflow(innetwork_stack[1], tmp_path)


async def _run_workflow(client: CubeClient, tmp_path: Path) -> None:
    folder = "home/chris/uploads/wf"
    for rel, data in TREE.items():
        local = tmp_path / "upload" / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        await client.upload(local, f"{folder}/{rel}")
    dircopy = await client.plugin_by_name("pl-dircopy")
    root = await client.create_instance(dircopy.id, {"dir": folder}, title="wf")

    source = tmp_path / "join.yml"
    source.write_text(PIPELINE)
    uploaded = await client.upload_pipeline(source)
    assert uploaded.fname == "PIPELINES/chris/join.yml"
    pipeline = await client.pipeline_by_name("e2e join")
    workflow = await client.create_workflow(pipeline.id, root.id, title="e2e run")
    instances = {i.title: i for i in await client.workflow_instances(workflow.id)}
    assert set(instances) == {"left", "right", "join", "pick"}
    left, right = instances["left"], instances["right"]

    finals = {title: await client.wait(i.id, timeout=300) for title, i in instances.items()}
    for title, inst in finals.items():
        assert inst.status is S.FINISHED_SUCCESSFULLY, (title, inst.error_code, inst.error_message)
        assert inst.workflow_id == workflow.id and inst.pipeline_id == pipeline.id
    # join's previous (left) ended first: it waited for right, its other parent
    join = finals["join"]
    assert [h.status for h in join.status_history][:3] == [S.CREATED, S.WAITING, S.SCHEDULED]
    scheduled = next(h.timestamp for h in join.status_history if h.status is S.SCHEDULED)
    assert finals["right"].end_date is not None and scheduled >= finals["right"].end_date
    done = await client.workflow(workflow.id)
    assert done.finished_jobs == 4 and done.waiting_jobs == 0

    left_files = {renamed(rel, "l_"): data for rel, data in TREE.items()}
    right_files = {renamed(rel, "r_"): data for rel, data in left_files.items()}
    expected = {
        "join": {
            **{f"{left.id}/{rel}": data for rel, data in left_files.items()},
            **{f"{right.id}/{rel}": data for rel, data in right_files.items()},
        },
        "pick": {
            **{rel: data for rel, data in left_files.items() if rel.endswith(".dcm")},
            **{rel: data for rel, data in right_files.items() if "notes" in rel},
        },
    }
    assert len(expected["join"]) == 6 and len(expected["pick"]) == 3
    for title, files in expected.items():
        inst = finals[title]
        got = {
            f.fname.removeprefix(inst.output_path + "/"): f
            for f in await client.instance_files(inst.id)
        }
        assert set(got) == set(files), title
        for rel, f in got.items():
            dest = tmp_path / "download" / title / rel
            assert await client.download(f.file_resource, dest) == f.fsize
            assert dest.read_bytes() == files[rel], (title, rel)
        assert inst.size == sum(len(d) for d in files.values())

    exported = await client.export_pipeline(pipeline.id)
    titles = [n["title"] for n in json.loads(exported.plugin_tree)]
    assert titles == ["left", "right", "join", "pick"]


@pytest.mark.docker
async def test_workflow_with_ts_joins_on_docker_backend(
    docker_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    """The same with every plugin in its locally built image on the Docker engine."""
    await _run_workflow(docker_stack[1], tmp_path)
