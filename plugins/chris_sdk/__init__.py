"""ChRIS plugin SDK: the descriptor vocabulary and a small app framework.

The SDK imports no service; CUBE imports it for the descriptor model so that
the two sides of plugin registration share one definition. A plugin run
imports no pydantic: the descriptor models load on first use.
"""

from __future__ import annotations

from chris_sdk.app import ChrisPlugin, Invocation, Parameter, PluginFailure, RunFunction
from chris_sdk.files import copy_tree
from chris_sdk.vocabulary import (
    DescriptorError,
    ParameterAction,
    ParameterType,
    PluginType,
    parse_cpu_millicores,
    parse_memory_mib,
)

# typing only for type checkers: a plugin run imports this package
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from chris_sdk.descriptor import PluginDescriptor, PluginParameterSpec


def __getattr__(name: str) -> Any:
    # The pydantic models load on first use: a plugin run never needs them.
    if name in ("PluginDescriptor", "PluginParameterSpec"):
        from chris_sdk import descriptor

        return getattr(descriptor, name)
    raise AttributeError(f"module 'chris_sdk' has no attribute {name!r}")


__all__ = [
    "ChrisPlugin",
    "DescriptorError",
    "Invocation",
    "Parameter",
    "ParameterAction",
    "ParameterType",
    "PluginDescriptor",
    "PluginFailure",
    "PluginParameterSpec",
    "PluginType",
    "RunFunction",
    "copy_tree",
    "parse_cpu_millicores",
    "parse_memory_mib",
]
