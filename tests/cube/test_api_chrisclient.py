"""python-chrisclient 2.15 (FNNDSC's client, unchanged) against a live CUBE stack.

CUBE, pfcon, pfioh and pman run as real processes with pman's ``local``
backend (the e2e stack); the client logs in, lists plugins, uploads a file,
runs pl-dircopy then pl-simpledsapp on it, downloads the output, and runs a
pipeline uploaded as a YAML source file, all in Collection+JSON as it speaks
it. The client is synchronous (``requests``), so each call runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
from chrisclient.client import Client
from chrisclient.exceptions import ChrisRequestException
from chrisclient.request import Request

from cube.cli.stack import Stack
from cube.client import CubeClient
from tests.cube.conftest import FS_DESCRIPTOR
from tests.e2e.conftest import running_stack, stack_config

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, CubeClient]]:
    async for pair in running_stack(stack_config(tmp_path)):
        yield pair


def wait_for(client: Client, inst_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        inst = client.get_plugin_instance_by_id(inst_id)
        if inst["status"] in ("finishedSuccessfully", "finishedWithError", "cancelled"):
            return inst  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, inst
        time.sleep(0.3)


def scenario(url: str, tmp: Path) -> None:
    client = Client(url, username="chris", password="chris1234")
    plugins = client.get_plugins()
    assert plugins["total"] >= 2
    names = {p["name"] for p in plugins["data"]}
    assert {"pl-dircopy", "pl-simpledsapp"} <= names
    dircopy = client.get_plugins({"name_exact": "pl-dircopy"})["data"][0]
    simple = client.get_plugins({"name_exact": "pl-simpledsapp"})["data"][0]
    params = client.get_plugin_parameters(simple["id"])
    assert "prefix" in {p["name"] for p in params["data"]}

    source = tmp / "hello.txt"
    source.write_bytes(b"hello from chrisclient\n")
    uploaded = client.upload_file("home/chris/uploads/cc/hello.txt", str(source))
    assert uploaded["fname"] == "home/chris/uploads/cc/hello.txt"
    assert client.get_user_file_by_id(uploaded["id"])["fsize"] == source.stat().st_size

    root = client.create_plugin_instance(dircopy["id"], {"dir": "home/chris/uploads/cc"})
    child = client.create_plugin_instance(
        simple["id"], {"previous_id": root["id"], "prefix": "cc_"}
    )
    done = wait_for(client, child["id"])
    assert done["status"] == "finishedSuccessfully", done
    feed = client.get_feed_by_id(done["feed_id"])
    assert feed["finished_jobs"] == 2

    # download: follow the file browser's links, as chrispl-search does
    folder = client._fetch_resource("file_browser_url", {"path": done["output_path"]})
    files_url = Request.get_link_relation_urls(folder.items[0], "files")[0]
    files = client._request.get(files_url)
    hrefs = [Request.get_link_relation_urls(item, "file_resource")[0] for item in files.items]
    assert len(hrefs) == 1 and hrefs[0].endswith("cc_hello.txt")
    got = requests.get(hrefs[0], auth=("chris", "chris1234"), timeout=30)
    assert got.status_code == 200 and got.content == source.read_bytes()

    # pipelines: a YAML source file, then a workflow of it through the client's calls
    pipeline_file = tmp / "cc-pipeline.yml"
    pipeline_file.write_text(
        "name: chrisclient pipeline\n"
        "authors: chris\n"
        "category: test\n"
        "description: one simpledsapp step\n"
        "locked: true\n"
        "plugin_tree:\n"
        "  - title: step\n"
        f"    plugin: pl-simpledsapp v{simple['version']}\n"
        "    previous: null\n"
        "    plugin_parameter_defaults: {prefix: wf_}\n"
    )
    source = client.upload_pipeline_source_file("yaml", str(pipeline_file))
    assert source["type"] == "yaml"
    assert (
        client.get_pipeline_source_file_by_id(source["id"])["pipeline_id"]
        == (source["pipeline_id"])
    )
    pipeline = client.get_pipeline_by_id(source["pipeline_id"])
    assert pipeline["name"] == "chrisclient pipeline" and pipeline["locked"] is True
    defaults = client.get_pipeline_default_parameters(pipeline["id"])
    assert {d["param_name"]: d["value"] for d in defaults["data"]}["prefix"] == "wf_"
    nodes_info = client.compute_workflow_nodes_info(defaults["data"], include_all_defaults=True)
    workflow = client.create_workflow(
        pipeline["id"],
        {
            "previous_plugin_inst_id": root["id"],
            "title": "cc workflow",
            "nodes_info": json.dumps(nodes_info),
        },
    )
    assert workflow["title"] == "cc workflow"
    (step,) = client.get_workflow_plugin_instances(workflow["id"])["data"]
    assert step["title"] == "step" and step["workflow_id"] == workflow["id"]
    assert wait_for(client, step["id"])["status"] == "finishedSuccessfully"
    assert client.get_workflow_by_id(workflow["id"])["finished_jobs"] == 1

    # admin: register a plugin from a descriptor, then on the same site again
    registered = client.admin_upload_plugin("host", FS_DESCRIPTOR)
    assert registered["name"] == FS_DESCRIPTOR["name"]
    again = client.admin_register_plugin_with_computes(registered["id"], "host")
    assert again["id"] == registered["id"]

    # token auth: every GET then goes out with Accept */* (Collection+JSON by default)
    token = Client.get_auth_token(f"{url}auth-token/", "chris", "chris1234")
    by_token = Client(url, token=token)
    assert by_token.get_plugin_instance_by_id(child["id"])["status"] == "finishedSuccessfully"
    assert by_token.get_user()["username"] == "chris"
    created = Client.create_user(f"{url}users/", "newcomer", "newcomer-password", "n@x.org")
    assert created["username"] == "newcomer"
    # errors reach the client as its exception
    stranger = Client(url, username="newcomer", password="newcomer-password")
    with pytest.raises(ChrisRequestException, match="Could not find plugin instance"):
        stranger.get_plugin_instance_by_id(child["id"])


async def test_python_chrisclient_end_to_end(
    stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    the_stack, _ = stack
    url = the_stack.config.cube_url.rstrip("/") + "/api/v1/"
    await asyncio.to_thread(scenario, url, tmp_path)
