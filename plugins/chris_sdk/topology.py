"""The conventions of ts (topological) plugins: parents, filters and the join.

A ts plugin instance has several parent instances (``--plugininstances``, a
comma-separated list of ids) and joins their outputs into its own output
directory (reference ``chris.md`` §1.8, §2.3):

* ``--filter`` is empty (every file of every parent) or a comma-separated list
  of regular expressions, one per parent, in the order of
  ``--plugininstances``; an empty expression keeps every file of its parent. A
  file is kept when its expression matches somewhere in its path relative to
  the parent's output directory (:func:`re.search`).
* ``--groupByInstance`` puts each parent's files under a directory named after
  the parent's id (``<outputdir>/<id>/...``); otherwise they are merged, and
  where two parents have a file at the same path the later parent's file wins
  (as successive copies would).

CUBE performs the join (as ChRIS's CUBE does); the functions here are the one
definition of it, shared with the reference plugin ``pl-topologicalcopy``,
which checks its command line with them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def parse_instance_ids(text: str) -> list[int]:
    """The parent ids of ``--plugininstances`` (``"3,5"``), in order.

    Raises:
        ValueError: empty, not positive integers, or a repeated id.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError("plugininstances names no parent instance")
    ids: list[int] = []
    for part in parts:
        if not part.isascii() or not part.isdigit() or int(part) < 1:
            raise ValueError(f"plugininstances: {part!r} is not a plugin instance id")
        if int(part) in ids:
            raise ValueError(f"plugininstances: instance {part} is listed twice")
        ids.append(int(part))
    return ids


def parse_filters(text: str, parents: int) -> list[re.Pattern[str] | None]:
    """One compiled filter per parent (``None``: keep every file).

    Raises:
        ValueError: a number of expressions other than ``parents`` (when any
            is given), or an expression that does not compile.
    """
    if not text:
        return [None] * parents
    parts = str(text).split(",")
    if len(parts) != parents:
        raise ValueError(
            f"filter has {len(parts)} regular expression(s) for {parents} parent instance(s); "
            "give one per parent, in the order of plugininstances (an empty one keeps all files)"
        )
    compiled: list[re.Pattern[str] | None] = []
    for n, part in enumerate(parts, start=1):
        try:
            compiled.append(re.compile(part) if part else None)
        except re.error as exc:
            raise ValueError(f"filter {n} ({part!r}) is not a regular expression: {exc}") from exc
    return compiled


def join_plan(
    parents: Sequence[tuple[int, Sequence[str]]],
    filters: Sequence[re.Pattern[str] | None],
    group_by_instance: bool,
) -> dict[str, tuple[int, str]]:
    """Where each kept parent file goes: ``{destination: (parent id, source)}``.

    ``parents`` lists ``(parent id, file paths relative to its output dir)``
    in the order of ``--plugininstances``; ``filters`` comes from
    :func:`parse_filters`. Destinations are relative to the ts instance's
    output directory.
    """
    if len(filters) != len(parents):
        raise ValueError(f"{len(filters)} filter(s) for {len(parents)} parent instance(s)")
    plan: dict[str, tuple[int, str]] = {}
    for (parent_id, files), pattern in zip(parents, filters, strict=True):
        for rel in files:
            if pattern is not None and pattern.search(rel) is None:
                continue
            dest = f"{parent_id}/{rel}" if group_by_instance else rel
            plan.pop(dest, None)  # re-insert: the later parent wins, in its order
            plan[dest] = (parent_id, rel)
    return plan
