"""Rendered text of a task or mixture: preview it (`flan-jax show`), stream it to JSONL
(`flan-jax export`), and report each task's share (`--stats`).

Text is read from each task's source, before tokenization, so an export needs no
vocabulary work and holds one example at a time. Mixtures of flan-jax tasks are read as
the Grain training reader reads them (mixing by index, `reader/mixture.py`: the same rates
and, for the same seed, the same examples in the same order); other mixtures are sampled in
Python by their rates, one stream per task, as seqio weights them. An export is written to
an anonymous file in the target directory (Linux `O_TMPFILE`) that is linked into place
only when complete: killed at any moment, it leaves no partial file behind.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import seqio

from flan_jax.atomic import atomic_file
from flan_jax.data.templates import plain_text

TEXT_FEATURES = ("inputs", "targets", "task", "format", "template_id")
DEFAULT_MODULES = ("mixtures",)  # every module of this package is imported


class ExportError(ValueError):
    """A name, split or output path that can't be exported; the message names it."""


def import_modules(modules: Sequence[str] = DEFAULT_MODULES) -> None:
    """Imports task modules (a package: all of its modules), which register their tasks.

    The working directory is importable, as under `python -m` (the `flan-jax` script alone
    would not look there), so `--gin.DataConfig.module_imports="('my_tasks',)"` finds
    ./my_tasks.py. Grain workers inherit this search path.
    """
    import sys

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name.split(".")[0] and e.name != name:
                raise  # the module exists; something it imports does not
            raise ExportError(f"can't import task module {name!r} (DataConfig.module_imports "
                              f"/ --module): no such module in {os.getcwd()} or on "
                              "PYTHONPATH") from e
        except ImportError as e:
            raise ExportError(f"can't import task module {name!r}: {e}") from e
        if hasattr(module, "__path__"):
            for info in pkgutil.iter_modules(module.__path__, prefix=f"{name}."):
                importlib.import_module(info.name)


def resolve(name: str) -> seqio.Task | seqio.Mixture:
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.MixtureRegistry.names())
        hint = [t for t in sorted(seqio.TaskRegistry.names()) if t.startswith(name)][:8]
        raise ExportError(
            f"no seqio task or mixture named {name!r}; mixtures: {known}"
            + (f"; tasks starting with it: {hint}" if hint else "")) from None


def shares(name: str) -> list[tuple[str, float]]:
    """(task, share of examples) of a mixture, largest first; a task is all of itself."""
    obj = resolve(name)
    if isinstance(obj, seqio.Task):
        return [(obj.name, 1.0)]
    rates = [(t.name, float(obj.get_rate(t))) for t in obj.tasks]
    total = sum(r for _, r in rates)
    return sorted(((n, r / total) for n, r in rates), key=lambda x: (-x[1], x[0]))


def token_pieces(task: str, feature: str, text: str) -> list[str]:
    """The pieces `text` is tokenized into by `task`'s `feature` vocabulary (the ids the
    readers feed the model, shown as pieces): what `flan-jax show --tokens` prints, e.g. a
    Galactica span as one piece per character."""
    from flan_jax.data.tokenizer import tokenizer_for

    vocabulary = resolve(task).output_features[feature].vocabulary
    ids = tokenizer_for(vocabulary).encode(text)
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return [vocabulary.tokenizer.id_to_piece(i) for i in ids]
    return [vocabulary.decode([i]) for i in ids]


def _row(example: dict[str, Any], task: str) -> dict[str, Any]:
    row = {}
    for key in TEXT_FEATURES:
        if key in example:
            row[key] = plain_text(example[key])
    row.setdefault("task", task)
    return row


def task_rows(task: seqio.Task, split: str, *, shuffle: bool = False, seed: int | None = None,
              repeat: bool = False) -> Iterator[dict[str, Any]]:
    """One task's examples as text rows, from its source (or seqio's pretokenized copy)."""
    if split not in task.splits:
        raise ExportError(f"task {task.name!r} has no split {split!r} (has {list(task.splits)})")
    while True:
        if hasattr(task.source, "iter_examples"):  # rendered in Python: skip tf.data
            for ex in task.source.iter_examples(split, shuffle=shuffle, seed=seed):
                yield _row(ex, task.name)
        elif _has_text(task.source.get_dataset(split, shuffle=False)):
            for ex in task.source.get_dataset(split, shuffle=shuffle,
                                              seed=seed).as_numpy_iterator():
                yield _row(ex, task.name)
        else:  # a plain seqio task: run its preprocessors, keep the text copies
            ds = task.get_dataset(None, split=split, shuffle=shuffle, seed=seed,
                                  trim_output_features=False)
            for ex in ds.as_numpy_iterator():
                text = {k: ex.get(f"{k}_pretokenized", ex.get(k)) for k in ("inputs", "targets")}
                yield _row({**ex, **text}, task.name)
        if not repeat:
            return
        seed = None if seed is None else seed + 1


def _has_text(ds: Any) -> bool:
    spec = ds.element_spec
    return all(k in spec and spec[k].dtype.name == "string" for k in ("inputs", "targets"))


def rows(name: str, split: str = "train", *, seed: int = 0,
         shuffle: bool = True) -> Iterator[dict[str, Any]]:
    """Text rows of a task (one pass) or a mixture (sampled by rate, endless)."""
    from flan_jax.data.reader.build import UnsupportedMixture
    from flan_jax.data.reader.build import resolve as resolve_reader
    from flan_jax.errors import ReaderError

    obj = resolve(name)
    try:
        names, rates, split_rows, _ = resolve_reader(name, split)
    except UnsupportedMixture:
        pass
    except ReaderError as e:
        raise ExportError(str(e)) from None
    else:
        yield from _indexed_rows(names, rates, split_rows, seed=seed, shuffle=shuffle,
                                 one_pass=isinstance(obj, seqio.Task))
        return
    if isinstance(obj, seqio.Task):
        yield from task_rows(obj, split, shuffle=shuffle, seed=seed)
        return
    tasks = [t for t in obj.tasks if split in t.splits]
    if not tasks:
        raise ExportError(f"mixture {name!r}: none of its tasks has split {split!r}")
    weights = [float(obj.get_rate(t)) for t in tasks]
    streams: dict[str, Iterator[dict[str, Any]]] = {}
    rng = random.Random(seed)
    while True:
        task = rng.choices(tasks, weights)[0]
        if task.name not in streams:
            streams[task.name] = task_rows(task, split, shuffle=shuffle,
                                           seed=rng.randrange(2**31), repeat=True)
        yield next(streams[task.name])


def _indexed_rows(names: Sequence[str], rates: Sequence[float], split_rows: Sequence[Any], *,
                  seed: int, shuffle: bool, one_pass: bool) -> Iterator[dict[str, Any]]:
    """Rows by global index through the reader's mixing (a Task alone: each row once)."""
    import numpy as np

    from flan_jax.data.reader.mixture import IndexMixture

    mixture = IndexMixture(names, rates, [len(r) for r in split_rows], seed=seed or 0,
                           shuffle=shuffle)
    end = len(split_rows[0]) if one_pass else None
    start, step = 0, 256
    while end is None or start < end:
        stop = start + step if end is None else min(start + step, end)
        if one_pass:  # the task's first epoch: each row once (permuted when shuffled)
            tasks = np.zeros(stop - start, np.int64)
            picks = mixture.rows(tasks, np.arange(start, stop))
        else:
            tasks, picks = mixture.lookup_many(np.arange(start, stop))
        for t, r in zip(tasks.tolist(), picks.tolist()):
            yield _row(split_rows[t][r], names[t])
        start = stop


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    count: int
    per_task: Counter[str]


def export_jsonl(name: str, out: str | os.PathLike[str], *, n: int | None = None,
                 split: str = "train", seed: int = 0, overwrite: bool = False,
                 progress: Callable[[int], None] | None = None) -> ExportResult:
    """Streams `n` rows (a task: all of its split by default) to JSONL, atomically."""
    out = Path(out)
    obj = resolve(name)
    if n is None and isinstance(obj, seqio.Mixture):
        raise ExportError(f"{name!r} is a mixture (it samples without end): give --n")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such directory")
    per_task: Counter[str] = Counter()
    count = 0
    with atomic_file(out) as f:
        for row in rows(name, split, seed=seed, shuffle=True):
            if n is not None and count >= n:
                break
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            per_task[f"{row['task']}:{row['format']}" if "format" in row else row["task"]] += 1
            count += 1
            if progress is not None:
                progress(count)
    return ExportResult(out, count, per_task)


