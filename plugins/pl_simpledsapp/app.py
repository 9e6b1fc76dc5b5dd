"""pl-simpledsapp: copy the input files to the output, prefixing their names (a ds plugin).

The classic ChRIS test plugin. Every file under the input directory is copied
to the same relative place under the output directory with ``--prefix``
prepended to its file name (directory names are kept); nothing else is written
to the output directory (unless ``--saveinputmeta``/``--saveoutputmeta`` ask
for it). ``--ignoreInputDir`` copies nothing; ``--sleepLength`` waits that many
seconds first (to simulate a long job); ``--dummyInt`` and ``--dummyFloat``
exist to exercise typed parameters and are otherwise unused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from chris_sdk import ChrisPlugin, Parameter, ParameterType, PluginFailure, PluginType, copy_tree


def copy_with_prefix(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Copy every file of ``inputdir`` into ``outputdir``, adding ``options.prefix``.

    Raises :class:`~chris_sdk.PluginFailure` for a prefix containing ``/``
    or a negative ``--sleepLength`` (before anything is written), and for I/O
    failures.
    """
    prefix: str = options.prefix
    if "/" in prefix or "\0" in prefix:
        raise PluginFailure(f"--prefix must be a plain file name prefix, got {prefix!r}")
    if options.sleepLength < 0:
        raise PluginFailure(f"--sleepLength must be >= 0 seconds, got {options.sleepLength}")
    if options.sleepLength:
        # The point of the parameter: a job that takes a while.
        time.sleep(options.sleepLength)
    if options.ignoreInputDir or inputdir is None:
        return 0
    try:
        copy_tree(inputdir, outputdir, rename=lambda name: prefix + name)
    except (OSError, ValueError) as exc:
        raise PluginFailure(f"cannot copy {str(inputdir)!r}: {exc}") from exc
    return 0


plugin = ChrisPlugin(
    name="pl-simpledsapp",
    type=PluginType.DS,
    version="1.0.0",
    dock_image="chris-fabric/pl-simpledsapp:1.0.0",
    title="Simple ds app",
    category="Utility",
    description="Copy the input files to the output directory, adding a prefix to their names",
    authors="chris-fabric developers",
    license="MIT",
    parameters=[
        Parameter(
            "--prefix",
            "prefix",
            ParameterType.STR,
            help="prefix added to the name of each copied file",
            default="",
        ),
        Parameter(
            "--ignoreInputDir",
            "ignoreInputDir",
            ParameterType.BOOL,
            help="copy nothing (ignore the input directory)",
            default=False,
            action="store_true",
        ),
        Parameter(
            "--sleepLength",
            "sleepLength",
            ParameterType.INT,
            help="seconds to wait before copying",
            default=0,
        ),
        Parameter(
            "--dummyInt",
            "dummyInt",
            ParameterType.INT,
            help="an unused integer parameter",
            default=111,
        ),
        Parameter(
            "--dummyFloat",
            "dummyFloat",
            ParameterType.FLOAT,
            help="an unused float parameter",
            default=1.1,
        ),
    ],
    run=copy_with_prefix,
    min_memory_limit="100Mi",
    min_cpu_limit="100m",
)


def main() -> None:
    """Console script ``simpledsapp``."""
    sys.exit(plugin.main())
