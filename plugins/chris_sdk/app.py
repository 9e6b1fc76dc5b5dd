"""A small framework for writing ChRIS plugins.

A plugin is declared once, as data, and the SDK derives everything ChRIS
needs from that declaration (reference ``chris.md`` §2):

* the descriptor (:meth:`ChrisPlugin.descriptor`), validated by
  :class:`~chris_sdk.descriptor.PluginDescriptor`;
* the command line (:meth:`ChrisPlugin.build_parser`), following the ChRIS
  invocation conventions: ``[options] inputdir outputdir`` for ``ds``,
  ``[options] outputdir`` for ``fs`` and ``ts`` (``ts`` plugins also get
  ``--plugininstances``, ``-f/--filter`` and ``-g/--groupByInstance``), plus
  ``--json``, ``--version``, ``--saveinputmeta`` and ``--saveoutputmeta``;
* typed option values (each parameter's value goes through
  :meth:`ParameterType.coerce <chris_sdk.descriptor.ParameterType.coerce>`).

Example::

    plugin = ChrisPlugin(
        name="pl-hello",
        type=PluginType.DS,
        version="1.0.0",
        dock_image="example/pl-hello:1.0.0",
        parameters=[Parameter("--greeting", "greeting", "str", help="what to say", default="hi")],
        run=say_hello,  # (options, inputdir, outputdir) -> int | None
    )

    def main() -> None:  # the console script
        sys.exit(plugin.main())

:meth:`ChrisPlugin.main` is the command-line edge: it is the one place of the
SDK that writes to stdout/stderr (the descriptor for ``--json``, argparse's
usage errors, a :class:`PluginFailure` message).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from chris_sdk.vocabulary import (
    FLAG_PATTERN,
    PARAMETER_NAME_PATTERN,
    PLUGIN_NAME_PATTERN,
    VERSION_PATTERN,
    DescriptorError,
    ParameterAction,
    ParameterType,
    PluginType,
    check_text,
    parse_limit,
    settle_parameter,
    settle_plugin,
)

# A plugin run imports this module, so it imports little: no pydantic (the
# descriptor models, chris_sdk.descriptor, cost more CPU than a small plugin's
# whole job), no dataclasses (which imports inspect and ast, and compiles each
# class's methods with exec at import: the three classes here are written
# out instead), no typing (annotations are strings, their names imported for
# type checkers only), and json only where JSON is written. The declaration is
# checked with the same rules in the standard library (chris_sdk.vocabulary);
# the models validate the descriptor when it is asked for (--json,
# descriptor()), as it is at every registration.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, NoReturn

    from chris_sdk.descriptor import PluginDescriptor, PluginParameterSpec

#: File names chrisapp uses for ``--saveinputmeta`` / ``--saveoutputmeta``.
INPUT_META_FILE = "input.meta.json"
OUTPUT_META_FILE = "output.meta.json"

#: Flags and option names the SDK itself defines; a plugin cannot declare them.
RESERVED_FLAGS = frozenset(
    {"-h", "--help", "--json", "--version", "--saveinputmeta", "--saveoutputmeta"}
)
RESERVED_NAMES = frozenset(
    {"help", "json", "version", "saveinputmeta", "saveoutputmeta", "inputdir", "outputdir"}
)

#: The signature of a plugin's work: ``run(options, inputdir, outputdir)``.
#: ``inputdir`` is ``None`` for fs and ts plugins. Returning ``None`` means 0.
RunFunction = Callable[[argparse.Namespace, Path | None, Path], int | None]


class PluginFailure(Exception):
    """Raise from a plugin's ``run`` to fail with a message (no traceback).

    :meth:`ChrisPlugin.main` writes the message to stderr and returns
    ``exit_status`` (1 unless given).
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class _Frozen:
    """Immutable instances compared, hashed and shown by their ``_fields``:
    what a frozen dataclass gives, without building one at import."""

    __slots__ = ()
    #: the fields that take part in equality, hashing and repr, in order
    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"


def _declaration_error(what: str, exc: ValueError) -> DescriptorError:
    if isinstance(exc, DescriptorError):
        return DescriptorError(f"{what}: {exc}", exc.errors)
    return DescriptorError(f"{what}: {exc}", [(what, str(exc))])


class Parameter(_Frozen):
    """The declaration of one plugin parameter (one descriptor parameter object).

    ``flag`` is the long flag (``--prefix``), ``name`` the option name the
    plugin reads (``options.prefix``) and the descriptor's ``name``; ``type``
    is a :class:`ParameterType` or its value (``"str"``, ``"int"``, ``"float"``,
    ``"bool"``, ``"path"``, ``"unextpath"``). ``action`` defaults as in ChRIS: a
    bool gets ``store_false`` when its default is true, else ``store_true``;
    anything else gets ``store``.

    Raises :class:`~chris_sdk.descriptor.DescriptorError` at declaration when
    the parameter breaks a ChRIS rule (an optional parameter without a
    default, an optional ``path``/``unextpath``, a required hidden parameter,
    a default of the wrong type, a bad flag or name).

    Instances are immutable, equal when their fields are, and hashable when
    their default is.
    """

    __slots__ = (
        "_settled",
        "action",
        "default",
        "flag",
        "help",
        "name",
        "optional",
        "short_flag",
        "type",
        "ui_exposed",
    )
    _fields = (
        "flag",
        "name",
        "type",
        "help",
        "optional",
        "default",
        "short_flag",
        "ui_exposed",
        "action",
    )

    flag: str
    name: str
    type: ParameterType | str
    help: str
    optional: bool
    default: Any
    short_flag: str | None
    ui_exposed: bool
    action: ParameterAction | str | None
    #: settled at declaration: (type, default, action, short flag)
    _settled: tuple[ParameterType, Any, ParameterAction, str]

    def __init__(
        self,
        flag: str,
        name: str,
        type: ParameterType | str = ParameterType.STR,
        help: str = "",
        optional: bool = True,
        default: Any = None,
        short_flag: str | None = None,
        ui_exposed: bool = True,
        action: ParameterAction | str | None = None,
    ) -> None:
        for key, value in (
            ("flag", flag),
            ("name", name),
            ("type", type),
            ("help", help),
            ("optional", optional),
            ("default", default),
            ("short_flag", short_flag),
            ("ui_exposed", ui_exposed),
            ("action", action),
        ):
            object.__setattr__(self, key, value)
        self._settle()

    def _settle(self) -> None:
        what = f"invalid parameter {self.flag!r}"
        try:
            check_text("flag", self.flag, FLAG_PATTERN, 2, 52)
            check_text("name", self.name, PARAMETER_NAME_PATTERN, 1, 50)
            try:
                ptype = ParameterType(self.type)
            except ValueError:
                raise DescriptorError(
                    f"type must be one of {', '.join(ParameterType)}, got {self.type!r}",
                    [("type", f"unknown type {self.type!r}")],
                ) from None
            try:
                action = None if self.action is None else ParameterAction(self.action)
            except ValueError:
                raise DescriptorError(
                    f"action must be one of {', '.join(ParameterAction)}, got {self.action!r}",
                    [("action", f"unknown action {self.action!r}")],
                ) from None
            default, action, short_flag = settle_parameter(
                name=self.name,
                type=ptype,
                optional=self.optional,
                flag=self.flag,
                short_flag=self.short_flag,
                action=action,
                default=self.default,
                ui_exposed=self.ui_exposed,
            )
        except ValueError as exc:
            raise _declaration_error(what, exc) from exc
        # Immutable: the settled values are computed once, here.
        object.__setattr__(self, "_settled", (ptype, default, action, short_flag))

    @property
    def param_type(self) -> ParameterType:
        """The parameter type as the enum."""
        return self._settled[0]

    @property
    def settled_default(self) -> Any:
        """The default, coerced to the type (None for a required parameter)."""
        return self._settled[1]

    @property
    def settled_action(self) -> ParameterAction:
        """The argparse action (a bool's follows its default, as in ChRIS)."""
        return self._settled[2]

    @property
    def settled_short_flag(self) -> str:
        """The short flag (the flag itself when none was given)."""
        return self._settled[3]

    def descriptor_entry(self) -> dict[str, Any]:
        """The descriptor's JSON object for this parameter (reference key order)."""
        return {
            "name": self.name,
            "type": self.param_type.value,
            "optional": self.optional,
            "flag": self.flag,
            "short_flag": self.settled_short_flag,
            "action": self.settled_action.value,
            "help": self.help,
            "default": self.settled_default,
            "ui_exposed": self.ui_exposed,
        }

    @property
    def spec(self) -> PluginParameterSpec:
        """The validated descriptor parameter model (imports pydantic)."""
        from chris_sdk.descriptor import PluginParameterSpec

        return PluginParameterSpec.model_validate(self.descriptor_entry())


#: The parameters chrisapp adds to every ts plugin (pl-topologicalcopy's CLI).
TS_PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "--plugininstances",
        "plugininstances",
        ParameterType.STR,
        help="comma-separated list of the ids of the parent plugin instances",
        default="",
    ),
    Parameter(
        "--filter",
        "filter",
        ParameterType.STR,
        short_flag="-f",
        help="comma-separated list of regular expressions, one per parent instance, "
        "selecting the files to copy",
        default="",
    ),
    Parameter(
        "--groupByInstance",
        "groupByInstance",
        ParameterType.BOOL,
        short_flag="-g",
        help="put the files of each parent under a directory named after its id",
        default=False,
    ),
)


class Invocation(_Frozen):
    """A parsed command line: typed options and the plugin's directories (immutable)."""

    __slots__ = _fields = (
        "options",
        "inputdir",
        "outputdir",
        "save_input_meta",
        "save_output_meta",
    )

    options: argparse.Namespace
    inputdir: Path | None
    outputdir: Path
    save_input_meta: bool
    save_output_meta: bool

    def __init__(
        self,
        options: argparse.Namespace,
        inputdir: Path | None,
        outputdir: Path,
        save_input_meta: bool = False,
        save_output_meta: bool = False,
    ) -> None:
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "inputdir", inputdir)
        object.__setattr__(self, "outputdir", outputdir)
        object.__setattr__(self, "save_input_meta", save_input_meta)
        object.__setattr__(self, "save_output_meta", save_output_meta)


def _converter(ptype: ParameterType) -> Callable[[str], Any]:
    """An argparse ``type=`` callable giving a clear message on a bad value."""

    def convert(text: str) -> Any:
        try:
            return ptype.coerce(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = ptype.api_name
    return convert


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter, sized without :mod:`shutil`.

    argparse builds a formatter for every argument it adds (to check the
    metavar), and its default width imports shutil, with the compression
    modules, at every plugin start: the terminal's width is asked here as
    :func:`shutil.get_terminal_size` would answer it.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # argparse's margin
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``$COLUMNS``, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _DescriptorAction(argparse.Action):
    """``--json``: print the descriptor and exit 0, before positionals are checked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.render: Callable[[], str] = kwargs.pop("render")
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        sys.stdout.write(self.render() + "\n")
        sys.stdout.flush()
        parser.exit(0)


class ChrisPlugin(_Frozen):
    """The declaration of a ChRIS plugin.

    Descriptor fields (``name``, ``type``, ``version``, ``dock_image``,
    ``title``, ...) are those of reference §2.1. Limits take the descriptor's
    forms: CPU as ``"1000m"`` or int millicores, memory as ``"2Gi"``/
    ``"2000Mi"`` or int MiB, ``""`` meaning CUBE's default; GPU limits are ints
    (``max_gpu_limit=None`` means 0, or unlimited when ``min_gpu_limit > 0``).
    ``output_meta`` is what ``--saveoutputmeta`` writes.

    Raises :class:`~chris_sdk.descriptor.DescriptorError` at declaration when
    the whole descriptor would be invalid (bad name or version, min above max,
    duplicate or reserved flags and names).

    Instances are immutable and equal when their fields are.
    """

    __slots__ = _fields = (
        "name",
        "type",
        "version",
        "dock_image",
        "run",
        "parameters",
        "title",
        "category",
        "description",
        "documentation",
        "license",
        "icon",
        "authors",
        "public_repo",
        "min_number_of_workers",
        "max_number_of_workers",
        "min_cpu_limit",
        "max_cpu_limit",
        "min_memory_limit",
        "max_memory_limit",
        "min_gpu_limit",
        "max_gpu_limit",
        "output_meta",
    )

    name: str
    type: PluginType | str
    version: str
    dock_image: str
    run: RunFunction
    parameters: Sequence[Parameter]
    title: str
    category: str
    description: str
    documentation: str
    license: str
    icon: str
    authors: str
    public_repo: str
    min_number_of_workers: int
    max_number_of_workers: int
    min_cpu_limit: int | str
    max_cpu_limit: int | str
    min_memory_limit: int | str
    max_memory_limit: int | str
    min_gpu_limit: int
    max_gpu_limit: int | None
    output_meta: Mapping[str, Any]

    def __init__(
        self,
        *,
        name: str,
        type: PluginType | str,
        version: str,
        dock_image: str,
        run: RunFunction,
        parameters: Sequence[Parameter] = (),
        title: str = "",
        category: str = "",
        description: str = "",
        documentation: str = "",
        license: str = "",
        icon: str = "",
        authors: str = "",
        public_repo: str = "",
        min_number_of_workers: int = 1,
        max_number_of_workers: int = 1,
        min_cpu_limit: int | str = "",
        max_cpu_limit: int | str = "",
        min_memory_limit: int | str = "",
        max_memory_limit: int | str = "",
        min_gpu_limit: int = 0,
        max_gpu_limit: int | None = None,
        output_meta: Mapping[str, Any] | None = None,
    ) -> None:
        # the arguments by name, before any other local is bound
        arguments = locals()
        for key in self._fields:
            object.__setattr__(self, key, arguments[key])
        if output_meta is None:
            object.__setattr__(self, "output_meta", {})
        try:
            plugin_type = PluginType(self.type)
        except ValueError as exc:
            raise DescriptorError(
                f"plugin type must be one of fs, ds, ts; got {self.type!r}", [("type", str(exc))]
            ) from exc
        object.__setattr__(self, "type", plugin_type)
        object.__setattr__(self, "parameters", tuple(self.parameters))
        for param in self.parameters:
            if not isinstance(param, Parameter):
                raise DescriptorError(f"parameters must be Parameter objects, got {param!r}")
            flags = {param.flag, param.settled_short_flag}
            if clash := sorted(f for f in flags if f in RESERVED_FLAGS):
                raise DescriptorError(
                    f"parameter {param.name!r}: flag {clash[0]} is reserved by the SDK",
                    [("parameters", f"reserved flag {clash[0]}")],
                )
            if param.name in RESERVED_NAMES:
                raise DescriptorError(
                    f"parameter name {param.name!r} is reserved by the SDK",
                    [("parameters", f"reserved name {param.name}")],
                )
        shorts = [
            p.settled_short_flag for p in self.all_parameters if p.settled_short_flag != p.flag
        ]
        longs = {p.flag for p in self.all_parameters}
        if len(set(shorts)) != len(shorts) or longs & set(shorts):
            raise DescriptorError(
                "parameter short flags must be unique", [("parameters", "duplicate short flag")]
            )
        # The whole declaration is checked now, so a bad one fails at import.
        self._check_declaration()

    def _check_declaration(self) -> None:
        """The descriptor-level rules (names, version, limits, clashes), as the
        model applies them, without building the model."""
        check_text("name", self.name, PLUGIN_NAME_PATTERN, 1, 100)
        check_text("dock_image", self.dock_image, None, 1, 500)
        check_text("version", self.version, VERSION_PATTERN, 1, 10)
        try:
            limits: dict[str, Any] = {
                key: parse_limit(key, getattr(self, key))
                for key in (
                    "min_cpu_limit",
                    "max_cpu_limit",
                    "min_memory_limit",
                    "max_memory_limit",
                )
            }
            for key in ("min_number_of_workers", "max_number_of_workers"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be at least 1")
            for key in ("min_gpu_limit", "max_gpu_limit"):
                if (getattr(self, key) or 0) < 0:
                    raise ValueError(f"{key} must not be negative")
            limits.update(
                min_number_of_workers=self.min_number_of_workers,
                max_number_of_workers=self.max_number_of_workers,
                min_gpu_limit=self.min_gpu_limit,
                max_gpu_limit=self.max_gpu_limit,
            )
            settle_plugin(limits, [(p.name, p.flag) for p in self.all_parameters])
        except ValueError as exc:
            raise DescriptorError(
                f"invalid plugin {self.name!r}: {exc}", [("plugin", str(exc))]
            ) from exc

    @property
    def plugin_type(self) -> PluginType:
        """The plugin type as the enum (``type`` is normalised to it at declaration)."""
        return PluginType(self.type)

    @property
    def all_parameters(self) -> tuple[Parameter, ...]:
        """Declared parameters, preceded by the ts ones for a ts plugin."""
        extra = TS_PARAMETERS if self.plugin_type is PluginType.TS else ()
        return (*extra, *self.parameters)

    # -- descriptor -------------------------------------------------------------------------

    def descriptor_dict(self, script: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The descriptor as the JSON object ``--json`` prints (reference key order).

        ``script`` is the path of the running console script (default
        ``sys.argv[0]``), resolved; its directory is ``selfpath`` and its name
        ``selfexec``. ``execshell`` is ``sys.executable``. Limits are emitted as
        declared (``""`` for CUBE's defaults). Raises ``DescriptorError`` when
        the result does not validate.
        """
        script_path = Path(script if script is not None else sys.argv[0]).resolve()
        data: dict[str, Any] = {
            "name": self.name,
            "dock_image": self.dock_image,
            "public_repo": self.public_repo,
            "type": self.plugin_type.value,
            "parameters": [p.descriptor_entry() for p in self.all_parameters],
            "icon": self.icon,
            "authors": self.authors,
            "title": self.title,
            "category": self.category,
            "description": self.description,
            "documentation": self.documentation,
            "license": self.license,
            "version": self.version,
            "selfpath": str(script_path.parent),
            "selfexec": script_path.name,
            "execshell": sys.executable,
            "min_number_of_workers": self.min_number_of_workers,
            "max_number_of_workers": self.max_number_of_workers,
            "min_memory_limit": self.min_memory_limit,
            "max_memory_limit": self.max_memory_limit,
            "min_cpu_limit": self.min_cpu_limit,
            "max_cpu_limit": self.max_cpu_limit,
            "min_gpu_limit": self.min_gpu_limit,
            "max_gpu_limit": self.max_gpu_limit,
        }
        from chris_sdk.descriptor import PluginDescriptor

        validated = PluginDescriptor.parse(data)
        # The model resolves an unset max GPU limit (0, or unlimited if a GPU is needed).
        data["max_gpu_limit"] = validated.max_gpu_limit
        return data

    def descriptor(self, script: str | os.PathLike[str] | None = None) -> PluginDescriptor:
        """The validated descriptor model (limits normalised); see :meth:`descriptor_dict`."""
        from chris_sdk.descriptor import PluginDescriptor

        return PluginDescriptor.parse(self.descriptor_dict(script))

    def descriptor_json(self, script: str | os.PathLike[str] | None = None) -> str:
        """The descriptor JSON text that ``--json`` prints."""
        import json  # only here and for the meta files: a plain run writes no JSON

        # ASCII escapes: the JSON survives any stdout encoding (a bare C locale, a pipe).
        return json.dumps(self.descriptor_dict(script), indent=2)

    # -- command line -----------------------------------------------------------------------

    def build_parser(
        self, prog: str | None = None, script: str | os.PathLike[str] | None = None
    ) -> argparse.ArgumentParser:
        """The argparse parser of the plugin's command line (ChRIS conventions).

        ``script`` is passed to :meth:`descriptor_json` for ``--json``.
        """
        parser = argparse.ArgumentParser(
            prog=prog,
            description=self.description or self.title or None,
            formatter_class=_HelpFormatter,
        )
        for param in self.all_parameters:
            _add_parameter(parser, param)
        if self.plugin_type is PluginType.DS:
            parser.add_argument("inputdir", type=Path, help="directory of the input files")
        parser.add_argument("outputdir", type=Path, help="directory for the output files")
        parser.add_argument(
            "--json",
            action=_DescriptorAction,
            render=lambda: self.descriptor_json(script),
            help="print the plugin descriptor as JSON and exit",
        )
        parser.add_argument(
            "--version", action="version", version=self.version, help="print the version and exit"
        )
        parser.add_argument(
            "--saveinputmeta",
            action="store_true",
            help=f"write the options to {INPUT_META_FILE} in outputdir",
        )
        parser.add_argument(
            "--saveoutputmeta",
            action="store_true",
            help=f"write output meta data to {OUTPUT_META_FILE} in outputdir",
        )
        return parser

    def parse_args(
        self, argv: Sequence[str] | None = None, script: str | os.PathLike[str] | None = None
    ) -> Invocation:
        """Parse a command line (default ``sys.argv[1:]``) into an :class:`Invocation`.

        Raises ``SystemExit`` as argparse does: 2 with a usage message on a bad
        command line (unknown flag, wrong type, missing required parameter,
        ``inputdir`` not a directory), 0 after ``--help``, ``--json`` or
        ``--version``.
        """
        parser = self.build_parser(script=script)
        ns = parser.parse_args(argv)
        inputdir: Path | None = getattr(ns, "inputdir", None)
        if inputdir is not None and not inputdir.is_dir():
            parser.error(f"inputdir {str(inputdir)!r} is not a directory")
        options = argparse.Namespace(**{p.name: getattr(ns, p.name) for p in self.all_parameters})
        return Invocation(
            options=options,
            inputdir=inputdir,
            outputdir=ns.outputdir,
            save_input_meta=ns.saveinputmeta,
            save_output_meta=ns.saveoutputmeta,
        )

    def execute(self, invocation: Invocation) -> int:
        """Run the plugin for a parsed invocation and return its exit status.

        Creates ``outputdir`` if needed, writes the meta files that were asked
        for, and calls ``run``. Exceptions of ``run`` (including
        :class:`PluginFailure`) propagate.
        """
        invocation.outputdir.mkdir(parents=True, exist_ok=True)
        if invocation.save_input_meta:
            meta = {
                **vars(invocation.options),
                "inputdir": None if invocation.inputdir is None else str(invocation.inputdir),
                "outputdir": str(invocation.outputdir),
            }
            _write_json(invocation.outputdir / INPUT_META_FILE, meta)
        status = self.run(invocation.options, invocation.inputdir, invocation.outputdir)
        if invocation.save_output_meta:
            _write_json(invocation.outputdir / OUTPUT_META_FILE, dict(self.output_meta))
        return 0 if status is None else status

    def main(
        self, argv: Sequence[str] | None = None, script: str | os.PathLike[str] | None = None
    ) -> int:
        """The command-line entry: parse, run, return the exit status.

        A :class:`PluginFailure` becomes its message on stderr and its exit
        status; other exceptions propagate (a traceback is the useful report).
        Raises ``SystemExit`` for usage errors, ``--help``, ``--json`` and
        ``--version`` (see :meth:`parse_args`).
        """
        invocation = self.parse_args(argv, script=script)
        try:
            return self.execute(invocation)
        except PluginFailure as exc:
            sys.stderr.write(f"{self.name}: error: {exc}\n")
            return exc.exit_status


def _add_parameter(parser: argparse.ArgumentParser, param: Parameter) -> None:
    """Add one declared parameter to ``parser``."""
    flags = [param.flag]
    if param.settled_short_flag != param.flag:
        flags.insert(0, param.settled_short_flag)
    required = not param.optional
    action = param.settled_action
    if action in (ParameterAction.STORE_TRUE, ParameterAction.STORE_FALSE):
        default = param.settled_default
        if default is None:
            default = action is ParameterAction.STORE_FALSE
        parser.add_argument(
            *flags,
            dest=param.name,
            action=action.value,
            default=default,
            required=required,
            help=param.help,
        )
        return
    parser.add_argument(
        *flags,
        dest=param.name,
        type=_converter(param.param_type),
        default=param.settled_default,
        required=required,
        metavar=param.param_type.value.upper(),
        help=param.help,
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` (UTF-8)."""
    import json  # only where JSON is written: see the imports

    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
