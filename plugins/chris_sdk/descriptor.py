"""The ChRIS plugin descriptor: the JSON a plugin prints with ``--json``.

Every field of the reference descriptor is modelled (see ``reference/chris.md``
§2). Validation follows the rules shared by chrisapp, chris_plugin and the
CUBE admin upload:

* optional parameters need a non-null default;
* ``path`` and ``unextpath`` parameters cannot be optional;
* required parameters must be ``ui_exposed``;
* a ``bool`` without an action gets ``store_false`` when its default is true,
  else ``store_true``;
* resource limits parse ``"1000m"`` / ``"2Gi"`` / ``"2000Mi"`` strings or ints,
  ``""`` meaning "use the default", and min must not exceed max.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Defaults CUBE applies when a limit is absent or "" (reference §2.2).
DEFAULT_MIN_CPU = 1000
DEFAULT_MIN_MEMORY = 200
MAX_LIMIT = 2147483647


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
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
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
    if m := re.fullmatch(r"(\d+)m", text):
        return int(m.group(1))
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * 1000)
    raise ValueError(f"bad CPU limit {value!r} (expected e.g. '1000m')")


_MEMORY_UNITS = {"Mi": 1, "Gi": 1024, "M": 1, "G": 1000, "Ki": 1 / 1024, "Ti": 1024 * 1024}


def parse_memory_mib(value: int | str | None, default: int) -> int:
    """Parse a memory limit (``"200Mi"``, ``"1Gi"``, or an int of MiB)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("a memory limit cannot be a boolean")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ki|Ti|M|G)?", value.strip())
    if not m:
        raise ValueError(f"bad memory limit {value!r} (expected e.g. '2000Mi' or '1Gi')")
    number = float(m.group(1))
    return int(number * _MEMORY_UNITS[m.group(2) or "Mi"])


class PluginParameterSpec(BaseModel):
    """One parameter of a plugin, as in the descriptor."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: ParameterType
    optional: bool = True
    flag: str = Field(min_length=2, max_length=52, pattern=r"^--?[A-Za-z0-9][A-Za-z0-9_-]*$")
    short_flag: str | None = None
    action: ParameterAction | None = None
    help: str = ""
    default: Any = None
    ui_exposed: bool = True

    @model_validator(mode="after")
    def _check(self) -> PluginParameterSpec:
        if self.type in (ParameterType.PATH, ParameterType.UNEXTPATH) and self.optional:
            raise ValueError(f"parameter {self.name!r}: {self.type} parameters cannot be optional")
        if self.optional and self.default is None:
            raise ValueError(f"parameter {self.name!r}: an optional parameter needs a default")
        if not self.optional and not self.ui_exposed:
            raise ValueError(f"parameter {self.name!r}: a required parameter must be ui_exposed")
        if self.default is not None:
            try:
                self.default = self.type.coerce(self.default)
            except ValueError as exc:
                raise ValueError(f"parameter {self.name!r}: bad default: {exc}") from None
        if self.type is ParameterType.BOOL:
            if self.action is None:
                self.action = (
                    ParameterAction.STORE_FALSE
                    if self.default is True
                    else ParameterAction.STORE_TRUE
                )
        elif self.action is None:
            self.action = ParameterAction.STORE
        elif self.action is not ParameterAction.STORE:
            raise ValueError(f"parameter {self.name!r}: {self.action} needs a bool parameter")
        if not self.short_flag:
            self.short_flag = self.flag
        return self


class PluginDescriptor(BaseModel):
    """A whole plugin descriptor; limits are normalised to ints (millicores, MiB)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dock_image: str = Field(min_length=1, max_length=500)
    public_repo: str = ""
    type: PluginType
    version: str = Field(pattern=r"^[0-9.]+$", max_length=10)
    title: str = ""
    category: str = ""
    description: str = ""
    documentation: str = ""
    license: str = ""
    icon: str = ""
    authors: str = ""
    execshell: str = ""
    selfpath: str = ""
    selfexec: str = Field(min_length=1)
    parameters: list[PluginParameterSpec] = Field(default_factory=list)
    min_number_of_workers: int = Field(default=1, ge=1)
    max_number_of_workers: int = Field(default=1, ge=1)
    min_cpu_limit: int = DEFAULT_MIN_CPU
    max_cpu_limit: int = MAX_LIMIT
    min_memory_limit: int = DEFAULT_MIN_MEMORY
    max_memory_limit: int = MAX_LIMIT
    min_gpu_limit: int = Field(default=0, ge=0)
    max_gpu_limit: int | None = Field(default=None, ge=0)

    @field_validator("min_cpu_limit", "max_cpu_limit", mode="before")
    @classmethod
    def _cpu(cls, v: Any, info: Any) -> int:
        default = DEFAULT_MIN_CPU if info.field_name.startswith("min") else MAX_LIMIT
        return parse_cpu_millicores(v, default)

    @field_validator("min_memory_limit", "max_memory_limit", mode="before")
    @classmethod
    def _mem(cls, v: Any, info: Any) -> int:
        default = DEFAULT_MIN_MEMORY if info.field_name.startswith("min") else MAX_LIMIT
        return parse_memory_mib(v, default)

    @model_validator(mode="after")
    def _check(self) -> PluginDescriptor:
        if self.max_gpu_limit is None:
            self.max_gpu_limit = MAX_LIMIT if self.min_gpu_limit > 0 else 0
        for low, high in (
            ("min_number_of_workers", "max_number_of_workers"),
            ("min_cpu_limit", "max_cpu_limit"),
            ("min_memory_limit", "max_memory_limit"),
            ("min_gpu_limit", "max_gpu_limit"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        names = [p.name for p in self.parameters]
        flags = [p.flag for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique")
        if len(set(flags)) != len(flags):
            raise ValueError("parameter flags must be unique")
        return self

    @property
    def entrypoint(self) -> list[str]:
        """The command that starts the plugin: ``[execshell, selfpath/selfexec]``."""
        exe = f"{self.selfpath.rstrip('/')}/{self.selfexec}" if self.selfpath else self.selfexec
        return [self.execshell, exe] if self.execshell else [exe]

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> PluginDescriptor:
        """Parse descriptor JSON (text, bytes or a dict), raising ``DescriptorError``."""
        if not isinstance(data, dict):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise DescriptorError(f"descriptor is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DescriptorError("descriptor must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            errors = [
                (".".join(str(p) for p in e["loc"]) or "descriptor", e["msg"]) for e in exc.errors()
            ]
            summary = "; ".join(f"{f}: {m}" for f, m in errors)
            raise DescriptorError(f"invalid plugin descriptor: {summary}", errors) from exc
