"""ChRIS plugin SDK: the descriptor vocabulary and a small app framework.

The SDK imports no service; CUBE imports it for the descriptor model so that
the two sides of plugin registration share one definition.
"""

from chris_sdk.app import ChrisPlugin, Invocation, Parameter, PluginFailure, RunFunction
from chris_sdk.descriptor import (
    DescriptorError,
    ParameterAction,
    ParameterType,
    PluginDescriptor,
    PluginParameterSpec,
    PluginType,
    parse_cpu_millicores,
    parse_memory_mib,
)
from chris_sdk.files import copy_tree

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
