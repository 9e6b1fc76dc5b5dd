"""What a plugin process pays at start-up: the SDK's imports and its plain-class records.

A plugin starts once per job; the SDK keeps its start to argparse and pathlib
(plus the plugin's own imports): no dataclasses, typing, json or shutil, no
regular expressions compiled for the declaration check.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import chris_sdk
import pytest
from chris_sdk import Invocation, Parameter, ParameterType, PluginType, vocabulary
from chris_sdk.files import copy_file, copy_tree
from pl_simpledsapp.app import plugin as simpledsapp

PLUGINS_DIR = str(Path(chris_sdk.__file__).resolve().parent.parent)


def test_a_plugin_run_imports_little(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    code = (
        "import sys\n"
        "from pl_simpledsapp.app import plugin\n"
        f"status = plugin.main(['--prefix', 'p_', {str(tmp_path / 'in')!r}, "
        f"{str(tmp_path / 'out')!r}])\n"
        "print(' '.join(sorted(sys.modules)))\n"
        "sys.exit(status)\n"
    )
    # without site, whose own imports (an editable install's finder) would blur the picture
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PLUGINS_DIR},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "p_a.txt").read_text() == "a"
    loaded = set(done.stdout.split())
    assert "chris_sdk.app" in loaded
    heavy = {"dataclasses", "inspect", "typing", "json", "shutil", "pydantic", "bz2", "lzma"}
    assert not loaded & heavy


class TestPlainRecords:
    def test_parameter(self) -> None:
        p = Parameter("--x", "x", ParameterType.INT, "help", True, 3)
        assert (p.flag, p.name, p.type, p.help, p.optional, p.default) == (
            "--x",
            "x",
            ParameterType.INT,
            "help",
            True,
            3,
        )
        assert p == Parameter(flag="--x", name="x", type="int", help="help", default=3)
        assert p != Parameter("--x", "x", ParameterType.INT, "other", default=3)
        assert p != ("--x", "x")
        assert hash(p) == hash(Parameter("--x", "x", ParameterType.INT, "help", default=3))
        assert repr(p).startswith("Parameter(flag='--x', name='x', type=")
        assert "_settled" not in repr(p)
        with pytest.raises(AttributeError):
            p.flag = "--y"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            del p.name
        with pytest.raises(AttributeError):
            p.other = 1  # type: ignore[attr-defined]
        assert p.settled_default == 3

    def test_invocation(self) -> None:
        import argparse

        ns = argparse.Namespace(a=1)
        inv = Invocation(ns, None, Path("/out"))
        assert (inv.save_input_meta, inv.save_output_meta) == (False, False)
        assert inv == Invocation(options=ns, inputdir=None, outputdir=Path("/out"))
        with pytest.raises(AttributeError):
            inv.outputdir = Path("/x")  # type: ignore[misc]

    def test_plugin(self) -> None:
        assert simpledsapp.type is PluginType.DS
        assert isinstance(simpledsapp.parameters, tuple)
        assert simpledsapp.output_meta == {}
        assert simpledsapp == simpledsapp
        assert "name='pl-simpledsapp'" in repr(simpledsapp)
        with pytest.raises(AttributeError):
            simpledsapp.version = "2"  # type: ignore[misc]
        with pytest.raises(TypeError):
            chris_sdk.ChrisPlugin("pl-x")  # type: ignore[misc,call-arg]  # keyword-only


def _samples() -> set[str]:
    rng = random.Random(7)
    alphabet = "aZ09._-+ \n\t\u00b2\u0663m.MiGKT"
    cases = {"", "-", "--", "---x", "-x", "--x", "1.2", "1..2", ".1", "1.", "a\n", "x_y", "_x"}
    cases |= {"9x", "\u0663", "+\u0663", "1_0", "2Gi", "1.5G", "100m", "0.5", " 7 "}
    while len(cases) < 20000:
        cases.add("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))))
    return cases


def test_pattern_checks_answer_as_the_patterns() -> None:
    samples = _samples()
    for pattern, matches in vocabulary._MATCHERS.items():
        for text in samples:
            assert matches(text) == bool(re.fullmatch(pattern, text)), (pattern, text)
    for text in samples:
        assert vocabulary._is_integer(text) == bool(re.fullmatch(r"[+-]?\d+", text)), text
        assert vocabulary._is_decimal(text) == bool(re.fullmatch(r"\d+(\.\d+)?", text)), text


@pytest.mark.parametrize(
    ("value", "mib"),
    [("200Mi", 200), ("1Gi", 1024), ("1G", 1000), ("2048Ki", 2), ("1Ti", 2**20), ("5", 5)],
)
def test_memory_units(value: str, mib: int) -> None:
    assert vocabulary.parse_memory_mib(value, 0) == mib


@pytest.mark.parametrize("value", ["", "Mi", "1.Mi", "1 Mi", "1Mb", "-1Mi"])
def test_bad_memory_limits(value: str) -> None:
    with pytest.raises(ValueError):
        vocabulary.parse_memory_mib(value or " ", 0)


class TestCopyFile:
    def test_copies_and_truncates(self, tmp_path: Path) -> None:
        data = os.urandom(3 * 2**20 + 17)
        (tmp_path / "a").write_bytes(data)
        (tmp_path / "b").write_bytes(b"x" * (4 * 2**20))
        copy_file(tmp_path / "a", tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == data
        (tmp_path / "empty").write_bytes(b"")
        copy_file(tmp_path / "empty", tmp_path / "c")
        assert (tmp_path / "c").read_bytes() == b""

    def test_without_sendfile(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def no_sendfile(*args: object) -> int:
            raise OSError(errno.ENOSYS, "no sendfile")

        monkeypatch.setattr(os, "sendfile", no_sendfile)
        data = os.urandom(2 * 2**20 + 5)
        (tmp_path / "a").write_bytes(data)
        copy_file(tmp_path / "a", tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == data

    def test_other_sendfile_errors_are_raised(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(*args: object) -> int:
            raise OSError(errno.ENOSPC, "full")

        monkeypatch.setattr(os, "sendfile", full)
        (tmp_path / "a").write_bytes(b"abc")
        with pytest.raises(OSError) as err:
            copy_file(tmp_path / "a", tmp_path / "b")
        assert err.value.errno == errno.ENOSPC

    def test_a_file_is_not_copied_onto_itself(self, tmp_path: Path) -> None:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a").write_bytes(b"keep me")
        (tmp_path / "out").mkdir()
        os.link(tmp_path / "in" / "a", tmp_path / "out" / "a")
        with pytest.raises(OSError):
            copy_tree(tmp_path / "in", tmp_path / "out")
        assert (tmp_path / "in" / "a").read_bytes() == b"keep me"
