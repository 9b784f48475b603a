"""Before a run does any work: the first rows of every source it trains on, rendered with
every template of every format it uses, so a template naming a missing field, a bad first
row or an empty split fails at once (naming task, template, file:line), not after the model
is built, the step-0 eval has run and the model dir is written.

The cost is a few rows per task (the rows' index is what the reader builds anyway), so it
stays a second or two at the scale of a whole collection.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from flan_jax.data.reader.build import leaf_tasks
from flan_jax.data.render import render_every_template
from flan_jax.data.sources import random_access

ROWS = 2  # per source: the first rows (few-shot formats take exemplars from the others)


def check_first_rows(mixture_or_task: str, split: str = "train") -> dict[str, Any]:
    """Renders the first rows of each flan-jax source of the mixture with every template of
    each of its formats in the mixture; raises the render or source error. Tasks that are not
    flan-jax tasks, or whose source has no random access, are left to the reader."""
    from flan_jax.data.flan import RenderedSource

    t0 = time.perf_counter()
    formats: dict[int, tuple[Any, list[str]]] = {}
    for task, _ in leaf_tasks(mixture_or_task):
        source = task.source
        if isinstance(source, RenderedSource):
            formats.setdefault(id(source.spec), (source.spec, []))[1].append(source.fmt)
    checked = collections.Counter()
    for spec, fmts in formats.values():
        rows = random_access(spec.source, split)
        if rows is None:
            checked["unindexed"] += 1
            continue
        raw = [rows[i] for i in range(min(ROWS, len(rows)))]
        if not raw:
            continue  # (the reader names an empty split)
        checked["renders"] += len(render_every_template(spec, raw, formats=fmts))
        checked["sources"] += 1
    return {**checked, "seconds": time.perf_counter() - t0}
