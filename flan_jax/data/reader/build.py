"""From a registered seqio mixture or task to a Grain reader (runs in the main process).

seqio stays the registry: the mixture's leaf Tasks and rates come from
`seqio.get_mixture_or_task`, each Task's rows from its source's `random_access(split)`
(flan-jax sources have it), its tokenizer from its output features. A Task this reader
can't read exactly as seqio would (its own TF preprocessors, a source without random
access) raises `UnsupportedMixture`, naming it, and the trainer falls back to seqio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax.data.reader.mixture import IndexMixture
from flan_jax.data.reader.pipeline import ChunkMaker, GrainReader, StreamSettings
from flan_jax.data.sources import random_access
from flan_jax.data.tokenizer import tokenizer_for
from flan_jax.errors import ReaderError

log = logging.getLogger(__name__)


class UnsupportedMixture(ReaderError):
    """Tasks the Grain reader can't read as seqio would; `tasks` maps each to why."""

    def __init__(self, mixture: str, tasks: Mapping[str, str]):
        self.tasks = dict(tasks)
        shown = "; ".join(f"{t}: {why}" for t, why in list(self.tasks.items())[:3])
        more = f" (and {len(self.tasks) - 3} more)" if len(self.tasks) > 3 else ""
        super().__init__(f"{mixture!r}: the Grain reader can't read {len(self.tasks)} "
                         f"task(s): {shown}{more}")


def leaf_tasks(mixture_or_task: str) -> list[tuple[Any, float]]:
    """(seqio Task, rate) of every task with a positive rate (a Task alone: rate 1)."""
    import difflib

    import seqio

    if mixture_or_task not in (*seqio.MixtureRegistry.names(), *seqio.TaskRegistry.names()):
        close = difflib.get_close_matches(mixture_or_task, [*seqio.MixtureRegistry.names(),
                                                            *seqio.TaskRegistry.names()], n=3)
        raise ReaderError(f"DataConfig.mixture_or_task_name={mixture_or_task!r} is not a "
                          "registered seqio Mixture or Task"
                          + (f" (closest: {', '.join(close)})" if close else "")
                          + "; is its module in DataConfig.module_imports?")
    provider = seqio.get_mixture_or_task(mixture_or_task)
    if isinstance(provider, seqio.Mixture):
        pairs = [(t, float(provider.get_rate(t))) for t in provider.tasks]
        return [(t, r) for t, r in pairs if r > 0]
    return [(provider, 1.0)]


def _standard_preprocessors(task: Any) -> bool:
    import seqio

    allowed = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim)
    return all(getattr(p, "func", p) in allowed for p in task.preprocessors)


def resolve(mixture_or_task: str, split: str) -> tuple[list[str], list[float], list[Any], Any]:
    """(names, rates, rows, tokenizer) of a mixture, or UnsupportedMixture naming tasks."""
    names, rates, rows, why, vocabs = [], [], [], {}, []
    for task, rate in leaf_tasks(mixture_or_task):
        features = task.output_features
        if set(features) != {"inputs", "targets"} or not all(
                f.add_eos for f in features.values()):
            why[task.name] = "output features are not inputs/targets with EOS"
            continue
        if not _standard_preprocessors(task):
            why[task.name] = "has preprocessors other than tokenize + append_eos_after_trim"
            continue
        if split not in task.source.splits:
            raise ReaderError(f"task {task.name!r} has no split {split!r} (has "
                              f"{list(task.source.splits)}); set DataConfig.split")
        r = random_access(task.source, split)
        if r is None:
            why[task.name] = (f"its source ({type(task.source).__name__}) has no random "
                              "access (use a flan-jax source, or `flan-jax prepare`)")
            continue
        vocab = features["inputs"].vocabulary
        if features["targets"].vocabulary is not vocab:
            why[task.name] = "inputs and targets use different vocabularies"
            continue
        if not any(vocab == v for v in vocabs):  # (seqio shares one model per path)
            vocabs.append(vocab)
        names.append(task.name)
        rates.append(rate)
        rows.append(r)
    if why:
        raise UnsupportedMixture(mixture_or_task, why)
    if len(vocabs) != 1:
        raise UnsupportedMixture(mixture_or_task, {
            names[0]: f"its tasks use {len(vocabs)} different vocabularies"})
    return names, rates, rows, tokenizer_for(vocabs[0])


def grain_reader(settings: StreamSettings, *, process_index: int = 0,
                 process_count: int = 1, workers: int = 0,
                 state: Mapping[str, Sequence[int]] | None = None,
                 resolved: tuple | None = None) -> GrainReader:
    """This host's reader over its shards (`settings.shards / process_count` of them);
    `resolved`: what `resolve` returned for the settings' mixture, if already called."""
    if settings.shards % process_count:
        raise ReaderError(f"DataConfig.shards={settings.shards} must be a multiple of the "
                          f"{process_count} processes")
    t0 = time.perf_counter()
    names, rates, rows, tokenizer = resolved or resolve(settings.mixture, settings.split)
    sizes = [len(r) for r in rows]  # (indexes JSONL files: one pass each)
    mixture = IndexMixture(names, rates, sizes, seed=settings.seed, shuffle=settings.shuffle)
    k = settings.shards // process_count
    maker = ChunkMaker(names, rows, mixture, tokenizer, settings,
                       range(process_index * k, (process_index + 1) * k))
    log.info("Grain reader: %d task(s), %d example(s) in all, %d worker(s), shards %s; "
             "set up in %.1f s", len(names), sum(sizes), workers, list(maker.local_shards),
             time.perf_counter() - t0)
    return GrainReader(maker, workers=workers, state=state)
