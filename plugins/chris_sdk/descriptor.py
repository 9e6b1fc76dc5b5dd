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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The words and rules are shared with the SDK's declaration checks (stdlib only,
# so that a plugin run does not import pydantic); re-exported from here.
from chris_sdk.vocabulary import (
    DEFAULT_MIN_CPU,
    DEFAULT_MIN_MEMORY,
    FLAG_PATTERN,
    MAX_LIMIT,
    PARAMETER_NAME_PATTERN,
    PLUGIN_NAME_PATTERN,
    VERSION_PATTERN,
    DescriptorError,
    ParameterAction,
    ParameterType,
    PluginType,
    parse_cpu_millicores,
    parse_limit,
    parse_memory_mib,
    settle_parameter,
    settle_plugin,
)

__all__ = [
    "DEFAULT_MIN_CPU",
    "DEFAULT_MIN_MEMORY",
    "MAX_LIMIT",
    "DescriptorError",
    "ParameterAction",
    "ParameterType",
    "PluginDescriptor",
    "PluginParameterSpec",
    "PluginType",
    "parse_cpu_millicores",
    "parse_memory_mib",
]


class PluginParameterSpec(BaseModel):
    """One parameter of a plugin, as in the descriptor."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=50, pattern=PARAMETER_NAME_PATTERN)
    type: ParameterType
    optional: bool = True
    flag: str = Field(min_length=2, max_length=52, pattern=FLAG_PATTERN)
    short_flag: str | None = None
    action: ParameterAction | None = None
    help: str = ""
    default: Any = None
    ui_exposed: bool = True

    @model_validator(mode="after")
    def _check(self) -> PluginParameterSpec:
        self.default, self.action, self.short_flag = settle_parameter(
            name=self.name,
            type=self.type,
            optional=self.optional,
            flag=self.flag,
            short_flag=self.short_flag,
            action=self.action,
            default=self.default,
            ui_exposed=self.ui_exposed,
        )
        return self


_LIMITS = {
    f"{end}_{what}"
    for end in ("min", "max")
    for what in ("number_of_workers", "cpu_limit", "memory_limit", "gpu_limit")
}


class PluginDescriptor(BaseModel):
    """A whole plugin descriptor; limits are normalised to ints (millicores, MiB)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=100, pattern=PLUGIN_NAME_PATTERN)
    dock_image: str = Field(min_length=1, max_length=500)
    public_repo: str = ""
    type: PluginType
    version: str = Field(pattern=VERSION_PATTERN, max_length=10)
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

    @field_validator(
        "min_cpu_limit", "max_cpu_limit", "min_memory_limit", "max_memory_limit", mode="before"
    )
    @classmethod
    def _limit(cls, v: Any, info: Any) -> int:
        return parse_limit(info.field_name, v)

    @model_validator(mode="after")
    def _check(self) -> PluginDescriptor:
        self.max_gpu_limit = settle_plugin(
            self.model_dump(include=_LIMITS), [(p.name, p.flag) for p in self.parameters]
        )
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
