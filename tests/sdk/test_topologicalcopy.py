"""pl-topologicalcopy: its descriptor and the checks its job makes (the join is CUBE's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chris_sdk import PluginDescriptor, PluginType
from pl_topologicalcopy.app import plugin


def test_descriptor_is_a_ts_plugin_with_the_ts_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plugin.main(["--json"])
    assert exit_info.value.code == 0
    desc = PluginDescriptor.parse(json.loads(capsys.readouterr().out))
    assert desc.type is PluginType.TS and desc.name == "pl-topologicalcopy"
    params = {p.name: p for p in desc.parameters}
    assert list(params) == ["plugininstances", "filter", "groupByInstance"]
    assert params["filter"].short_flag == "-f" and params["groupByInstance"].short_flag == "-g"


def test_a_valid_command_line_succeeds_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    argv = ["--plugininstances", "3,5", "--filter", r"\.dcm$,", "--groupByInstance", str(out)]
    assert plugin.main(argv) == 0
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "plugininstances names no parent instance"),
        (["--plugininstances", "3,x"], "'x' is not a plugin instance id"),
        (["--plugininstances", "3,5", "-f", "a"], "filter has 1 regular expression(s) for 2"),
        (["--plugininstances", "3", "-f", "("], "filter 1 ('(') is not a regular expression"),
    ],
)
def test_a_malformed_command_line_fails_clearly(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plugin.main([*argv, str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
