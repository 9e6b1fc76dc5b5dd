"""pl-topologicalcopy: join the outputs of several plugin instances (a ts plugin).

As in ChRIS, the join itself is CUBE's work (reference §1.8): once every
parent of the instance finished successfully and the job ended, CUBE puts
the files of each parent that pass its ``--filter`` expression into the
instance's output directory (under ``<parent id>/`` with
``--groupByInstance``), following :mod:`chris_sdk.topology`. So no parent
data travels to the compute site, and the job gets no input directory (ts
plugins take only ``outputdir``, §2.3).

What runs in the job checks the command line CUBE built with the same
rules CUBE joins by, so a malformed ``--plugininstances`` or ``--filter``
fails the instance with a clear message instead of joining something else,
and writes nothing to the output directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chris_sdk import ChrisPlugin, PluginFailure, PluginType
from chris_sdk.topology import parse_filters, parse_instance_ids


def check_join(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Check ``--plugininstances`` and ``--filter``; the join is CUBE's (see the module).

    Raises :class:`~chris_sdk.PluginFailure` when the ids or the filters are malformed.
    """
    try:
        parents = parse_instance_ids(options.plugininstances)
        parse_filters(options.filter, len(parents))
    except ValueError as exc:
        raise PluginFailure(str(exc)) from exc
    return 0


plugin = ChrisPlugin(
    name="pl-topologicalcopy",
    type=PluginType.TS,
    version="1.0.0",
    dock_image="chris-fabric/pl-topologicalcopy:1.0.0",
    title="Topological copy",
    category="Utility",
    description="Join the (filtered) output files of several plugin instances",
    authors="chris-fabric developers",
    license="MIT",
    run=check_join,
    min_memory_limit="100Mi",
    min_cpu_limit="100m",
)


def main() -> None:
    """Console script ``topologicalcopy``."""
    sys.exit(plugin.main())
