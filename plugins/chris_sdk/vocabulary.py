"""The descriptor's words and rules, in the standard library only.

A plugin process imports this module, not :mod:`chris_sdk.descriptor`: the
pydantic models there cost a quarter of a CPU-second to import and build, more
than a small plugin's whole run. The rules of ChRIS descriptors live here once
(:func:`settle_parameter`, :func:`settle_plugin`) and both sides use them: the
SDK checks a declaration with them at import, and the pydantic models that
CUBE validates uploaded descriptors with call them from their validators.
"""

from __future__ import annotations

import re
from enum import StrEnum

# typing and the abstract collections only for type checkers: a plugin run
# imports this module (annotations are strings here)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

#: Defaults CUBE applies when a limit is absent or "" (reference §2.2).
DEFAULT_MIN_CPU = 1000
DEFAULT_MIN_MEMORY = 200
MAX_LIMIT = 2147483647

#: Patterns (and lengths) of the descriptor's identifiers.
PLUGIN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # 1..100
VERSION_PATTERN = r"^[0-9.]+$"  # ..10
PARAMETER_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # 1..50
FLAG_PATTERN = r"^--?[A-Za-z0-9][A-Za-z0-9_-]*$"  # 2..52


# The patterns above as plain string tests, for check_text: compiling them at
# each plugin start (a declaration is checked at import) cost more than all the
# rest of the check. ASCII classes as in the patterns; each test is what
# re.fullmatch of its pattern answers (no trailing newline either).
_DIGITS = frozenset("0123456789")
_ALNUM = _DIGITS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_NAME_CHARS = _ALNUM | {"_"}
_PLUGIN_NAME_CHARS = _ALNUM | {".", "_", "-"}
_FLAG_CHARS = _ALNUM | {"_", "-"}
_VERSION_CHARS = _DIGITS | {"."}
_MATCHERS: dict[str, Callable[[str], bool]] = {
    PLUGIN_NAME_PATTERN: lambda v: v[:1] in _ALNUM and _PLUGIN_NAME_CHARS.issuperset(v),
    VERSION_PATTERN: lambda v: bool(v) and _VERSION_CHARS.issuperset(v),
    PARAMETER_NAME_PATTERN: lambda v: (
        v[:1] in _NAME_CHARS and v[:1] not in _DIGITS and _NAME_CHARS.issuperset(v)
    ),
    FLAG_PATTERN: lambda v: (
        (v.startswith("--") and _is_flag_name(v[2:]))
        or (v.startswith("-") and _is_flag_name(v[1:]))
    ),
}


def _is_flag_name(v: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9_-]*``"""
    return v[:1] in _ALNUM and _FLAG_CHARS.issuperset(v)


def _is_integer(text: str) -> bool:
    """``[+-]?\\d+`` (``\\d`` being any decimal digit, as :func:`int` takes them)."""
    return text[1:].isdecimal() if text[:1] in ("+", "-") else text.isdecimal()


def _is_decimal(text: str) -> bool:
    """``\\d+(\\.\\d+)?``"""
    whole, dot, fraction = text.partition(".")
    return whole.isdecimal() and (not dot or fraction.isdecimal())


class DescriptorError(ValueError):
    """A descriptor is malformed; ``errors`` lists ``(field, message)`` pairs."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class PluginType(StrEnum):
    """fs plugins start a feed, ds plugins transform a parent's output, ts join parents."""

    FS = "fs"
    DS = "ds"
    TS = "ts"


class ParameterType(StrEnum):
    """Descriptor (backend) parameter types."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    PATH = "path"
    UNEXTPATH = "unextpath"

    @property
    def api_name(self) -> str:
        """The name CUBE's API uses for this type (``string``, ``integer``, ...)."""
        return _API_NAMES[self]

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` to this type's Python value or raise ``ValueError``.

        Strings are parsed (as they arrive from forms and command lines); a bool
        is never accepted as an int or float.
        """
        if self in (ParameterType.STR, ParameterType.PATH, ParameterType.UNEXTPATH):
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type(value).__name__}")
            return value
        if self is ParameterType.BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(f"expected a boolean, got {value!r}")
        if isinstance(value, bool):
            raise ValueError(f"expected {self.api_name}, got a boolean")
        if self is ParameterType.INT:
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and _is_integer(value.strip()):
                return int(value)
            raise ValueError(f"expected an integer, got {value!r}")
        # FLOAT
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a float, got {value!r}")


_API_NAMES = {
    ParameterType.STR: "string",
    ParameterType.INT: "integer",
    ParameterType.FLOAT: "float",
    ParameterType.BOOL: "boolean",
    ParameterType.PATH: "path",
    ParameterType.UNEXTPATH: "unextpath",
}


class ParameterAction(StrEnum):
    """The argparse action of a parameter (``store_true``/``store_false`` only for bools)."""

    STORE = "store"
    STORE_TRUE = "store_true"
    STORE_FALSE = "store_false"


def parse_cpu_millicores(value: int | str | None, default: int) -> int:
    """Parse a CPU limit (``"1000m"``, ``"2"`` cores, or an int of millicores)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("a CPU limit cannot be a boolean")
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.endswith("m") and text[:-1].isdecimal():
        return int(text[:-1])
    if _is_decimal(text):
        return int(float(text) * 1000)
    raise ValueError(f"bad CPU limit {value!r} (expected e.g. '1000m')")


_MEMORY_UNITS = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024, "Ti": 1024 * 1024, "M": 1, "G": 1000}


def parse_memory_mib(value: int | str | None, default: int) -> int:
    """Parse a memory limit (``"200Mi"``, ``"1Gi"``, or an int of MiB)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("a memory limit cannot be a boolean")
    if isinstance(value, int):
        return value
    text, unit = value.strip(), "Mi"
    for suffix in _MEMORY_UNITS:  # the two-letter units first: "Mi" before "M"
        if text.endswith(suffix):
            text, unit = text[: -len(suffix)], suffix
            break
    if not _is_decimal(text):
        raise ValueError(f"bad memory limit {value!r} (expected e.g. '2000Mi' or '1Gi')")
    return int(float(text) * _MEMORY_UNITS[unit])


def parse_limit(field: str, value: int | str | None) -> int:
    """Parse the descriptor's ``min_/max_`` ``cpu_limit`` (millicores) or
    ``memory_limit`` (MiB); an absent or ``""`` value takes CUBE's default
    (reference §2.2: the minimum's default, or no maximum)."""
    minimum = field.startswith("min")
    if field.endswith("cpu_limit"):
        return parse_cpu_millicores(value, DEFAULT_MIN_CPU if minimum else MAX_LIMIT)
    return parse_memory_mib(value, DEFAULT_MIN_MEMORY if minimum else MAX_LIMIT)


def settle_parameter(
    *,
    name: str,
    type: ParameterType,
    optional: bool,
    flag: str,
    short_flag: str | None,
    action: ParameterAction | None,
    default: Any,
    ui_exposed: bool,
) -> tuple[Any, ParameterAction, str]:
    """Apply ChRIS's parameter rules: the ``(default, action, short_flag)`` to use.

    Rules (chrisapp, chris_plugin and CUBE agree): ``path``/``unextpath``
    parameters cannot be optional; an optional parameter needs a default;
    a required one must be ``ui_exposed``; the default must be of the type;
    a ``bool`` without an action gets ``store_false`` when its default is
    true, else ``store_true``, and other types only ``store``; the short
    flag defaults to the flag. Raises ``ValueError`` naming the parameter.
    """
    if type in (ParameterType.PATH, ParameterType.UNEXTPATH) and optional:
        raise ValueError(f"parameter {name!r}: {type} parameters cannot be optional")
    if optional and default is None:
        raise ValueError(f"parameter {name!r}: an optional parameter needs a default")
    if not optional and not ui_exposed:
        raise ValueError(f"parameter {name!r}: a required parameter must be ui_exposed")
    if default is not None:
        try:
            default = type.coerce(default)
        except ValueError as exc:
            raise ValueError(f"parameter {name!r}: bad default: {exc}") from None
    if type is ParameterType.BOOL:
        if action is None:
            action = ParameterAction.STORE_FALSE if default is True else ParameterAction.STORE_TRUE
    elif action is None:
        action = ParameterAction.STORE
    elif action is not ParameterAction.STORE:
        raise ValueError(f"parameter {name!r}: {action} needs a bool parameter")
    return default, action, short_flag or flag


def settle_plugin(limits: Mapping[str, Any], parameters: Sequence[tuple[str, str]]) -> int:
    """Check a plugin's limits against each other and its parameters for clashes.

    ``limits`` holds the parsed ``min_/max_`` workers, cpu, memory and gpu
    limits (``max_gpu_limit`` may be None); ``parameters`` the ``(name,
    flag)`` pairs. Returns the ``max_gpu_limit`` to use (an unset one is 0,
    or unlimited when a GPU is required). Raises ``ValueError``.
    """
    max_gpu = limits.get("max_gpu_limit")
    if max_gpu is None:
        max_gpu = MAX_LIMIT if limits.get("min_gpu_limit", 0) > 0 else 0
    for low, high in (
        ("min_number_of_workers", "max_number_of_workers"),
        ("min_cpu_limit", "max_cpu_limit"),
        ("min_memory_limit", "max_memory_limit"),
        ("min_gpu_limit", "max_gpu_limit"),
    ):
        top = max_gpu if high == "max_gpu_limit" else limits[high]
        if limits[low] > top:
            raise ValueError(f"{low} must not exceed {high}")
    names = [name for name, _ in parameters]
    flags = [flag for _, flag in parameters]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique")
    if len(set(flags)) != len(flags):
        raise ValueError("parameter flags must be unique")
    return int(max_gpu)


def check_text(field: str, value: Any, pattern: str | None, low: int, high: int | None) -> None:
    """Raise ``DescriptorError`` unless ``value`` is a string of ``low..high``
    characters matching ``pattern`` (the constraints the pydantic models put
    on the same fields, from the same constants)."""
    if not isinstance(value, str):
        raise DescriptorError(f"{field}: expected a string", [(field, "expected a string")])
    if len(value) < low or (high is not None and len(value) > high):
        message = f"length must be {low} to {high}" if high else "must not be empty"
        raise DescriptorError(f"{field}: {message}, got {value!r}", [(field, message)])
    if pattern is None:
        return
    matches = _MATCHERS.get(pattern)
    # fullmatch: no trailing newline either
    if not (matches(value) if matches else re.fullmatch(pattern, value)):
        message = f"must match {pattern}"
        raise DescriptorError(f"{field}: {message}, got {value!r}", [(field, message)])
