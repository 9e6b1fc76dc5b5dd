"""The SDK's declaration → descriptor and declaration → command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chris_sdk import (
    ChrisPlugin,
    DescriptorError,
    Parameter,
    ParameterAction,
    ParameterType,
    PluginDescriptor,
    PluginFailure,
    PluginParameterSpec,
    PluginType,
)
from chris_sdk.app import INPUT_META_FILE, OUTPUT_META_FILE

#: Every key of the reference descriptor (reference §2.1).
REFERENCE_KEYS = {
    "name",
    "dock_image",
    "public_repo",
    "type",
    "parameters",
    "icon",
    "authors",
    "title",
    "category",
    "description",
    "documentation",
    "license",
    "version",
    "selfpath",
    "selfexec",
    "execshell",
    "min_number_of_workers",
    "max_number_of_workers",
    "min_memory_limit",
    "max_memory_limit",
    "min_cpu_limit",
    "max_cpu_limit",
    "min_gpu_limit",
    "max_gpu_limit",
}
PARAMETER_KEYS = {
    "name",
    "type",
    "optional",
    "flag",
    "short_flag",
    "action",
    "help",
    "default",
    "ui_exposed",
}
SCRIPT = "/opt/some venv/bin/myexec"


class Recorder:
    """A ``run`` function that records its arguments."""

    def __init__(self, status: int | None = None) -> None:
        self.calls: list[tuple[argparse.Namespace, Path | None, Path]] = []
        self.status = status

    def __call__(
        self, options: argparse.Namespace, inputdir: Path | None, outputdir: Path
    ) -> int | None:
        self.calls.append((options, inputdir, outputdir))
        return self.status


def declare(
    plugin_type: PluginType = PluginType.DS,
    parameters: list[Parameter] | None = None,
    run: Any = None,
    **extra: Any,
) -> ChrisPlugin:
    """A plugin declaration with typed parameters of every kind."""
    if parameters is None:
        parameters = [
            Parameter("--name", "name", "str", help="a name", default="anon", short_flag="-n"),
            Parameter("--count", "count", ParameterType.INT, help="how many", default=3),
            Parameter("--ratio", "ratio", ParameterType.FLOAT, help="a ratio", default=0.5),
            Parameter("--verbose", "verbose", ParameterType.BOOL, help="talk", default=False),
            Parameter("--no-color", "color", ParameterType.BOOL, help="no colour", default=True),
            Parameter("--level", "level", ParameterType.INT, help="required", optional=False),
            Parameter(
                "--hidden", "hidden", "str", help="not in the UI", default="x", ui_exposed=False
            ),
        ]
    return ChrisPlugin(
        name="pl-example",
        type=plugin_type,
        version="2.1.0",
        dock_image="example/pl-example:2.1.0",
        parameters=parameters,
        run=run or Recorder(),
        title="Example",
        authors="Someone <someone@example.org>",
        **extra,
    )


# -- descriptor ---------------------------------------------------------------------------


def test_descriptor_has_every_reference_key_and_validates() -> None:
    plugin = declare(min_cpu_limit="500m", max_memory_limit="2Gi", min_gpu_limit=1)
    data = plugin.descriptor_dict(SCRIPT)
    assert set(data) == REFERENCE_KEYS
    for param in data["parameters"]:
        assert set(param) == PARAMETER_KEYS
    model = PluginDescriptor.parse(data)
    assert model.name == "pl-example"
    assert model.type is PluginType.DS
    assert model.dock_image == "example/pl-example:2.1.0"
    assert model.min_cpu_limit == 500
    assert model.max_memory_limit == 2048
    # min_gpu > 0 and no max: unlimited (reference §2.2)
    assert data["max_gpu_limit"] == model.max_gpu_limit == 2147483647


def test_descriptor_self_fields_come_from_the_script_and_interpreter(tmp_path: Path) -> None:
    real = tmp_path / "venv" / "bin" / "realexec"
    real.parent.mkdir(parents=True)
    real.write_text("")
    link = tmp_path / "linked"
    link.symlink_to(real)
    data = declare().descriptor_dict(link)
    # The script path is resolved, as chris_plugin does.
    assert data["selfpath"] == str(real.parent)
    assert data["selfexec"] == "realexec"
    assert data["execshell"] == sys.executable
    model = PluginDescriptor.parse(data)
    assert model.entrypoint == [sys.executable, str(real)]


def test_descriptor_parameters_follow_chris_rules() -> None:
    params = {p["name"]: p for p in declare().descriptor_dict(SCRIPT)["parameters"]}
    assert params["name"] == {
        "name": "name",
        "type": "str",
        "optional": True,
        "flag": "--name",
        "short_flag": "-n",
        "action": "store",
        "help": "a name",
        "default": "anon",
        "ui_exposed": True,
    }
    assert params["count"]["short_flag"] == "--count"  # no short flag: same as flag
    assert params["verbose"]["action"] == "store_true"
    assert params["color"]["action"] == "store_false"
    assert params["level"]["optional"] is False
    assert params["level"]["default"] is None
    assert params["hidden"]["ui_exposed"] is False
    # The SDK's own flags are not plugin parameters.
    for reserved in ("json", "version", "saveinputmeta", "saveoutputmeta"):
        assert reserved not in params


def test_json_flag_prints_the_descriptor(capsys: pytest.CaptureFixture[str]) -> None:
    plugin = declare()
    with pytest.raises(SystemExit) as exit_info:
        # --json needs neither the positionals nor the required parameters.
        plugin.main(["--json"], script=SCRIPT)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    model = PluginDescriptor.parse(printed)
    assert json.loads(printed) == plugin.descriptor_dict(SCRIPT)
    assert model.selfexec == "myexec"
    assert model.selfpath == "/opt/some venv/bin"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        declare().main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "2.1.0"


# -- command line -------------------------------------------------------------------------


def test_ds_options_are_typed_and_defaults_applied(tmp_path: Path) -> None:
    run = Recorder()
    plugin = declare(run=run)
    status = plugin.main(["--level", "7", "--ratio", "2", str(tmp_path), str(tmp_path / "out")])
    assert status == 0
    [(options, inputdir, outputdir)] = run.calls
    assert vars(options) == {
        "name": "anon",
        "count": 3,
        "ratio": 2.0,
        "verbose": False,
        "color": True,
        "level": 7,
        "hidden": "x",
    }
    assert type(options.ratio) is float
    assert inputdir == tmp_path
    assert outputdir == tmp_path / "out"
    assert outputdir.is_dir()  # created for the plugin
    assert list(outputdir.iterdir()) == []  # nothing written but what the plugin writes


def test_bool_actions_and_short_flags(tmp_path: Path) -> None:
    run = Recorder()
    plugin = declare(run=run)
    plugin.main(["--level=1", "--verbose", "--no-color", "-n", "bob", str(tmp_path), str(tmp_path)])
    options = run.calls[0][0]
    assert options.verbose is True
    assert options.color is False
    assert options.name == "bob"


def test_bool_with_store_action_takes_a_typed_value(tmp_path: Path) -> None:
    run = Recorder()
    param = Parameter("--flag", "flag", "bool", default=False, action=ParameterAction.STORE)
    plugin = declare(PluginType.FS, parameters=[param], run=run)
    plugin.main(["--flag", "TRUE", str(tmp_path)])
    assert run.calls[0][0].flag is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--level", "x"], "argument --level: expected an integer, got 'x'"),
        (["--level", "1.5"], "argument --level: expected an integer, got '1.5'"),
        (["--level", "1", "--ratio", "half"], "argument --ratio: expected a float, got 'half'"),
        (["--level", "1", "--verbose=yes"], "argument --verbose: ignored explicit argument"),
        ([], "the following arguments are required: --level"),
        (["--level", "1", "--bogus", "1"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    run = Recorder()
    with pytest.raises(SystemExit) as exit_info:
        declare(run=run).main([*argv, str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert run.calls == []
    assert not (tmp_path / "out").exists()


def test_ds_needs_an_existing_inputdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        declare().main(["--level", "1", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "is not a directory" in capsys.readouterr().err


def test_fs_takes_only_outputdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    plugin = declare(PluginType.FS, run=run)
    assert plugin.main(["--level", "1", str(tmp_path)]) == 0
    assert run.calls[0][1:] == (None, tmp_path)
    with pytest.raises(SystemExit):
        plugin.main(["--level", "1", str(tmp_path), str(tmp_path)])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_ts_gets_the_topological_parameters(tmp_path: Path) -> None:
    run = Recorder()
    plugin = declare(PluginType.TS, run=run)
    names = [p["name"] for p in plugin.descriptor_dict(SCRIPT)["parameters"]]
    assert names[:3] == ["plugininstances", "filter", "groupByInstance"]
    plugin.main(["--level", "1", str(tmp_path)])
    plugin.main(
        ["--level", "1", "--plugininstances", "3,4", "-f", r"\.dcm$,.*", "-g", str(tmp_path)]
    )
    first, second = (call[0] for call in run.calls)
    assert (first.plugininstances, first.filter, first.groupByInstance) == ("", "", False)
    assert (second.plugininstances, second.filter, second.groupByInstance) == (
        "3,4",
        r"\.dcm$,.*",
        True,
    )
    assert run.calls[1][1:] == (None, tmp_path)


def test_meta_files(tmp_path: Path) -> None:
    plugin = declare(run=Recorder(), output_meta={"produced": "nothing"})
    out = tmp_path / "out"
    plugin.main(["--level", "4", "--saveinputmeta", "--saveoutputmeta", str(tmp_path), str(out)])
    inputmeta = json.loads((out / INPUT_META_FILE).read_text())
    assert inputmeta["level"] == 4
    assert inputmeta["ratio"] == 0.5
    assert inputmeta["inputdir"] == str(tmp_path)
    assert inputmeta["outputdir"] == str(out)
    assert json.loads((out / OUTPUT_META_FILE).read_text()) == {"produced": "nothing"}


def test_run_status_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert declare(run=Recorder(status=3)).main(["--level", "1", str(tmp_path), str(tmp_path)]) == 3

    def failing(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
        raise PluginFailure("no luck", exit_status=4)

    assert declare(run=failing).main(["--level", "1", str(tmp_path), str(tmp_path)]) == 4
    assert "pl-example: error: no luck" in capsys.readouterr().err


# -- malformed declarations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"flag": "--dir", "name": "dir", "type": "path", "optional": True, "default": "/"},
            "optional",
        ),
        ({"flag": "--dir", "name": "dir", "type": "unextpath", "default": "/"}, "optional"),
        ({"flag": "--n", "name": "n", "type": "int", "optional": True}, "needs a default"),
        ({"flag": "--n", "name": "n", "type": "int", "default": "many"}, "bad default"),
        (
            {"flag": "--n", "name": "n", "type": "int", "optional": False, "ui_exposed": False},
            "ui_exposed",
        ),
        ({"flag": "--n", "name": "n", "type": "integer", "default": 1}, "type"),
        ({"flag": "--n", "name": "n", "type": "int", "default": 1, "action": "store_true"}, "bool"),
        ({"flag": "n", "name": "n", "type": "int", "default": 1}, "flag"),
        ({"flag": "--n", "name": "bad name", "type": "int", "default": 1}, "name"),
    ],
)
def test_malformed_parameters_raise_descriptor_error(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DescriptorError, match=fragment) as exc_info:
        Parameter(**kwargs)
    assert exc_info.value.errors  # the (field, message) pairs are kept
    # the declaration check (stdlib) and CUBE's model (pydantic) agree
    with pytest.raises(ValueError):
        PluginParameterSpec.model_validate(kwargs)


def test_a_plugin_run_imports_no_pydantic(tmp_path: Path) -> None:
    """Declaring and running a plugin costs no pydantic import (a quarter of a
    CPU-second, more than a small plugin's job); --json still validates with
    the models."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    code = (
        "import sys\n"
        "from pl_simpledsapp.app import plugin\n"
        f"status = plugin.main([{str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r}])\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


def param(flag: str, name: str, **kwargs: Any) -> Parameter:
    """An optional string parameter."""
    return Parameter(flag, name, "str", default="", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"parameters": [param("--a", "a"), param("--a", "b")]}, "flags must be unique"),
        ({"parameters": [param("--a", "a"), param("--b", "a")]}, "names must be unique"),
        (
            {
                "parameters": [
                    param("--a", "a", short_flag="-x"),
                    param("--b", "b", short_flag="-x"),
                ]
            },
            "short flags",
        ),
        ({"parameters": [param("--json", "j")]}, "reserved"),
        ({"parameters": [param("--x", "x", short_flag="-h")]}, "reserved"),
        ({"parameters": [param("--outputdir", "outputdir")]}, "reserved"),
        ({"type": "xs"}, "plugin type"),
        ({"version": "v1"}, "version"),
        ({"min_cpu_limit": "2000m", "max_cpu_limit": "1000m"}, "min_cpu_limit"),
        ({"max_memory_limit": "lots"}, "memory"),
        ({"min_number_of_workers": 0}, "min_number_of_workers"),
    ],
)
def test_malformed_plugins_raise_descriptor_error(kwargs: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {
        "name": "pl-bad",
        "type": "ds",
        "version": "1.0",
        "dock_image": "x/y:1",
        "run": Recorder(),
        **kwargs,
    }
    with pytest.raises(DescriptorError, match=fragment):
        ChrisPlugin(**fields)


def test_ts_parameters_are_reserved_for_ts() -> None:
    with pytest.raises(DescriptorError, match="unique"):
        declare(PluginType.TS, parameters=[param("--filter", "myfilter")])
    # Only ts plugins get them, so others may use the names.
    declare(PluginType.DS, parameters=[param("--filter", "filter")])
