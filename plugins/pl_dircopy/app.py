"""pl-dircopy: copy a directory into the output directory (an fs plugin).

ChRIS localises the value of ``path`` flags: the files of the listed storage
paths are extracted into the job's input directory and ``--dir`` is rewritten
to that directory (reference §2.2, §2.3). So the plugin copies the directory it
is given, recursively, into its output directory. ``--dir`` may also be a
comma-separated list of directories (as before localisation); their contents
are merged into the output directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chris_sdk import ChrisPlugin, Parameter, ParameterType, PluginFailure, PluginType, copy_tree


def copy_dirs(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Copy each directory of ``options.dir`` into ``outputdir``, keeping its structure.

    Raises :class:`~chris_sdk.PluginFailure` when a listed path is not a
    directory (checked for all of them before anything is copied).
    """
    sources = [Path(part) for part in str(options.dir).split(",") if part]
    if not sources:
        raise PluginFailure("--dir names no directory")
    if missing := [str(s) for s in sources if not s.is_dir()]:
        raise PluginFailure(f"not a directory: {', '.join(missing)}")
    for source in sources:
        try:
            copy_tree(source, outputdir)
        except (OSError, ValueError) as exc:
            raise PluginFailure(f"cannot copy {str(source)!r}: {exc}") from exc
    return 0


plugin = ChrisPlugin(
    name="pl-dircopy",
    type=PluginType.FS,
    version="1.0.0",
    dock_image="chris-fabric/pl-dircopy:1.0.0",
    title="Directory copy",
    category="Utility",
    description="Copy a directory of the ChRIS storage into a new feed",
    authors="chris-fabric developers",
    license="MIT",
    parameters=[
        Parameter(
            "--dir",
            "dir",
            ParameterType.PATH,
            help="directories to copy",
            optional=False,
        ),
    ],
    run=copy_dirs,
    min_memory_limit="100Mi",
    min_cpu_limit="100m",
)


def main() -> None:
    """Console script ``dircopy``."""
    sys.exit(plugin.main())
