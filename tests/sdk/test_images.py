"""The plugin images: built locally, they run the plugins the way pman will."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from chris_sdk import PluginDescriptor

from tests.sdk.trees import SAMPLE_FILES, make_tree, prefixed, snapshot
from tests.support.images import build_module, ensure_plugin_images

pytestmark = [pytest.mark.docker, pytest.mark.slow]

EXPECTED = {
    "pl-dircopy": "chris-fabric/pl-dircopy:1.0.0",
    "pl-simpledsapp": "chris-fabric/pl-simpledsapp:1.0.0",
    "pl-topologicalcopy": "chris-fabric/pl-topologicalcopy:1.0.0",
    "pl-dcm2nifti": "chris-fabric/pl-dcm2nifti:1.0.0",
    "pl-lung-emphysema": "chris-fabric/pl-lung-emphysema:1.0.0",
}


@pytest.fixture(scope="module")
def images(docker_engine: Any) -> dict[str, str]:
    """The plugin images, built if needed."""
    return ensure_plugin_images(docker_engine)


def run_plugin(client: Any, image: str, command: list[str], incoming: Path, outgoing: Path) -> str:
    """Run a plugin container with ChRIS's mounts, as the invoking user, no network."""
    output = client.containers.run(
        image,
        command,
        volumes={
            str(incoming): {"bind": "/share/incoming", "mode": "ro"},
            str(outgoing): {"bind": "/share/outgoing", "mode": "rw"},
        },
        # Files in tmp_path stay owned by whoever runs the tests.
        user=f"{os.getuid()}:{os.getgid()}",
        network_disabled=True,
        remove=True,
    )
    return output.decode() if isinstance(output, bytes) else str(output)


def test_images_are_built_and_tagged(docker_engine: Any, images: dict[str, str]) -> None:
    assert images == EXPECTED
    for tag in images.values():
        image = docker_engine.images.get(tag)
        assert tag in image.tags
    # A second call finds them up to date and changes nothing.
    ids = {tag: docker_engine.images.get(tag).id for tag in images.values()}
    assert ensure_plugin_images(docker_engine) == EXPECTED
    assert {tag: docker_engine.images.get(tag).id for tag in images.values()} == ids


def test_simpledsapp_container(docker_engine: Any, images: dict[str, str], tmp_path: Path) -> None:
    incoming = make_tree(tmp_path / "in")
    outgoing = tmp_path / "out"
    outgoing.mkdir()
    command = ["simpledsapp", "--prefix", "p_", "/share/incoming", "/share/outgoing"]
    run_plugin(docker_engine, images["pl-simpledsapp"], command, incoming, outgoing)
    assert snapshot(outgoing)[0] == prefixed(SAMPLE_FILES, "p_")


def test_dircopy_container_with_chris_entrypoint(
    docker_engine: Any, images: dict[str, str], tmp_path: Path
) -> None:
    incoming = make_tree(tmp_path / "in")
    outgoing = tmp_path / "out"
    outgoing.mkdir()
    descriptor = PluginDescriptor.parse(
        docker_engine.images.get(images["pl-dircopy"]).labels[build_module().DESCRIPTOR_LABEL]
    )
    # How pfcon/pman build the command: entrypoint + localised path flags + outputdir.
    command = [*descriptor.entrypoint, "--dir", "/share/incoming", "/share/outgoing"]
    run_plugin(docker_engine, images["pl-dircopy"], command, incoming, outgoing)
    assert snapshot(outgoing)[0] == SAMPLE_FILES


def test_topologicalcopy_container_checks_its_command_line(
    docker_engine: Any, images: dict[str, str], tmp_path: Path
) -> None:
    """A ts job: no input, the command line pfcon builds; CUBE does the join itself."""
    incoming, outgoing = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    outgoing.mkdir()
    descriptor = PluginDescriptor.parse(
        docker_engine.images.get(images["pl-topologicalcopy"]).labels[
            build_module().DESCRIPTOR_LABEL
        ]
    )
    command = [
        *descriptor.entrypoint,
        "--plugininstances",
        "3,5",
        "-f",
        r"\.dcm$,",
        "/share/outgoing",
    ]
    run_plugin(docker_engine, images["pl-topologicalcopy"], command, incoming, outgoing)
    assert list(outgoing.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "selfexec"),
    [
        ("pl-dircopy", "dircopy"),
        ("pl-simpledsapp", "simpledsapp"),
        ("pl-topologicalcopy", "topologicalcopy"),
    ],
)
def test_descriptor_label_matches_json_in_the_image(
    docker_engine: Any, images: dict[str, str], name: str, selfexec: str
) -> None:
    tag = images[name]
    label = docker_engine.images.get(tag).labels[build_module().DESCRIPTOR_LABEL]
    from_label = PluginDescriptor.parse(label)
    printed = docker_engine.containers.run(
        tag, [selfexec, "--json"], remove=True, network_disabled=True
    ).decode()
    assert json.loads(label) == json.loads(printed)
    assert from_label == PluginDescriptor.parse(printed)
    assert (from_label.name, from_label.dock_image, from_label.selfexec) == (name, tag, selfexec)
    # Paths valid inside the image, not on the host.
    assert from_label.selfpath == "/opt/venv/bin"
    assert from_label.execshell.startswith("/opt/venv/bin/python")
    # The default command shows the help.
    help_text = docker_engine.containers.run(tag, remove=True, network_disabled=True).decode()
    assert help_text.startswith(f"usage: {selfexec}")


def test_emphysema_pipeline_in_containers(
    docker_engine: Any, images: dict[str, str], tmp_path: Path
) -> None:
    """pl-dcm2nifti then pl-lung-emphysema in their images (no network) on a phantom CT."""
    from ct_phantom import PhantomSpec, make_phantom, write_series

    phantom = make_phantom(PhantomSpec(emphysema_fraction=0.3, seed=5))
    write_series(phantom, tmp_path / "dicom")
    nifti, result = tmp_path / "nifti", tmp_path / "result"
    nifti.mkdir()
    result.mkdir()
    run_plugin(
        docker_engine,
        images["pl-dcm2nifti"],
        ["dcm2nifti", "/share/incoming", "/share/outgoing"],
        tmp_path / "dicom",
        nifti,
    )
    assert len(list(nifti.glob("*.nii.gz"))) == 1
    run_plugin(
        docker_engine,
        images["pl-lung-emphysema"],
        ["lungemphysema", "--fast", "/share/incoming", "/share/outgoing"],
        nifti,
        result,
    )
    report = json.loads((result / "emphysema-report.json").read_text())
    assert report["method"] == "fast"
    assert abs(report["laa950_percent"] - phantom.laa950_percent) <= 1.0
    assert (result / "emphysema-sc.dcm").is_file() and (result / "emphysema-overlay.png").is_file()
