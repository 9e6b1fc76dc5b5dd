"""The reference plugins, run as real processes through their console scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from chris_sdk import ParameterType, PluginDescriptor, PluginType

from tests.sdk.trees import SAMPLE_EMPTY_DIRS, SAMPLE_FILES, make_tree, prefixed, snapshot

BIN = Path(sys.executable).parent
DIRCOPY = BIN / "dircopy"
SIMPLEDSAPP = BIN / "simpledsapp"


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a console script (argument list, no shell) with a bounded time."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An input directory holding the sample tree."""
    return make_tree(tmp_path / "incoming")


# -- pl-dircopy ---------------------------------------------------------------------------


def test_dircopy_copies_the_tree_byte_for_byte(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    out.mkdir()  # already there and empty, as in a ChRIS job
    result = run(DIRCOPY, "--dir", tree, out)
    assert result.returncode == 0, result.stderr
    files, dirs = snapshot(out)
    assert files == SAMPLE_FILES
    assert set(SAMPLE_EMPTY_DIRS) <= dirs
    assert snapshot(tree) == (files, dirs)  # the input is untouched


def test_dircopy_creates_a_missing_outputdir(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "outgoing"
    assert run(DIRCOPY, "--dir", tree, out).returncode == 0
    assert snapshot(out)[0] == SAMPLE_FILES


def test_dircopy_into_a_subdirectory_of_its_source(tree: Path) -> None:
    out = tree / "copy"
    out.mkdir()
    result = run(DIRCOPY, "--dir", tree, out)
    assert result.returncode == 0, result.stderr
    files, _ = snapshot(out)
    assert files == SAMPLE_FILES  # the copy did not recurse into itself


def test_dircopy_merges_a_list_of_directories(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    two = tmp_path / "two"
    (two / "more").mkdir(parents=True)
    (two / "more" / "z.txt").write_bytes(b"zed")
    out = tmp_path / "out"
    assert run(DIRCOPY, "--dir", f"{one},{two}", out).returncode == 0
    assert snapshot(out)[0] == {**SAMPLE_FILES, "more/z.txt": b"zed"}


def test_dircopy_refuses_a_missing_dir_and_writes_nothing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run(DIRCOPY, "--dir", f"{tree},{tmp_path / 'missing'}", out)
    assert result.returncode == 1
    assert "not a directory" in result.stderr
    assert "missing" in result.stderr
    assert list(out.iterdir()) == []


def test_dircopy_requires_dir(tmp_path: Path) -> None:
    result = run(DIRCOPY, tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: --dir" in result.stderr


def test_dircopy_json() -> None:
    result = run(DIRCOPY, "--json")
    assert result.returncode == 0, result.stderr
    d = PluginDescriptor.parse(result.stdout)
    assert (d.name, d.type, d.version) == ("pl-dircopy", PluginType.FS, "1.0.0")
    assert d.dock_image == "chris-fabric/pl-dircopy:1.0.0"
    assert (d.selfpath, d.selfexec, d.execshell) == (str(BIN), "dircopy", sys.executable)
    [p] = d.parameters
    assert (p.name, p.flag, p.type, p.optional) == ("dir", "--dir", ParameterType.PATH, False)
    assert p.help == "directories to copy"


# -- pl-simpledsapp -----------------------------------------------------------------------


def test_simpledsapp_copies_with_prefix(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    out.mkdir()
    result = run(SIMPLEDSAPP, "--prefix", "p_", tree, out)
    assert result.returncode == 0, result.stderr
    files, dirs = snapshot(out)
    assert files == prefixed(SAMPLE_FILES, "p_")
    assert set(SAMPLE_EMPTY_DIRS) <= dirs  # directory names are kept
    # Nothing else in the output root: the prefixed files and the input's dirs.
    top = {p.name for p in out.iterdir()}
    assert top == {"p_a.txt", "p_empty.dat", "sub", "другой", "void"}
    assert snapshot(tree)[0] == SAMPLE_FILES


def test_simpledsapp_without_prefix_is_a_plain_copy(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(SIMPLEDSAPP, tree, out).returncode == 0
    assert snapshot(out)[0] == SAMPLE_FILES


def test_simpledsapp_ignore_input_dir_copies_nothing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(SIMPLEDSAPP, "--ignoreInputDir", "--prefix", "p_", tree, out)
    assert result.returncode == 0, result.stderr
    assert list(out.iterdir()) == []


def test_simpledsapp_typed_parameters(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        SIMPLEDSAPP,
        *("--dummyInt", "-5", "--dummyFloat", "2.5e3", "--sleepLength", "0"),
        *("--saveinputmeta", tree, out),
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "input.meta.json").read_text())
    assert (meta["dummyInt"], meta["dummyFloat"], meta["sleepLength"]) == (-5, 2500.0, 0)
    assert (meta["prefix"], meta["ignoreInputDir"]) == ("", False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dummyInt", "1.5"], "argument --dummyInt: expected an integer, got '1.5'"),
        (["--dummyFloat", "abc"], "argument --dummyFloat: expected a float, got 'abc'"),
        (["--sleepLength", "soon"], "argument --sleepLength: expected an integer"),
    ],
)
def test_simpledsapp_type_errors(tree: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = run(SIMPLEDSAPP, *argv, tree, out)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("prefix", ["../", "a/b"])
def test_simpledsapp_refuses_a_prefix_with_a_slash(tree: Path, tmp_path: Path, prefix: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run(SIMPLEDSAPP, "--prefix", prefix, tree, out)
    assert result.returncode == 1
    assert "--prefix" in result.stderr
    assert list(out.iterdir()) == []
    assert snapshot(tmp_path)[0].keys() == {f"incoming/{rel}" for rel in SAMPLE_FILES}


def test_simpledsapp_json() -> None:
    result = run(SIMPLEDSAPP, "--json")
    assert result.returncode == 0, result.stderr
    d = PluginDescriptor.parse(result.stdout)
    assert (d.name, d.type, d.version) == ("pl-simpledsapp", PluginType.DS, "1.0.0")
    assert d.dock_image == "chris-fabric/pl-simpledsapp:1.0.0"
    assert (d.selfpath, d.selfexec, d.execshell) == (str(BIN), "simpledsapp", sys.executable)
    params = {p.name: (p.flag, p.type, p.optional, p.default, p.action) for p in d.parameters}
    assert params == {
        "prefix": ("--prefix", ParameterType.STR, True, "", "store"),
        "ignoreInputDir": ("--ignoreInputDir", ParameterType.BOOL, True, False, "store_true"),
        "sleepLength": ("--sleepLength", ParameterType.INT, True, 0, "store"),
        "dummyInt": ("--dummyInt", ParameterType.INT, True, 111, "store"),
        "dummyFloat": ("--dummyFloat", ParameterType.FLOAT, True, 1.1, "store"),
    }
