"""The published Flan 2022 collection (pre-rendered rows) as seqio Tasks, ready for mixing.py.

Rows are `{inputs, targets, task_name, template_type}` in parquet or JSONL files (other
columns, e.g. `task_source`, are ignored). Unlike flan.py nothing is rendered here: the text
is used as published, tokenised by seqio, with `task` and `format` carried on every example.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seqio

from flan_jax.data import formats as F
from flan_jax.data import prepare as P
from flan_jax.data.prepare import COLUMNS, check_nulls, open_parquet
from flan_jax.data.registry import make_room
from flan_jax.data.rows import ConcatRows, JsonlRows, ListRows, parse_row
from flan_jax.data.sources import SourceError, from_generator, indexed_source, read_jsonl

log = logging.getLogger(__name__)

SCHEMA = {c: str for c in COLUMNS}
FEATURES = ("inputs", "targets", "task", "format")  # of every example a source yields
# `template_type` as the FLAN code writes it (flan/v2/tasks.py): zero-/few-shot, with or
# without answer options. The CoT, dialog and NIv2 submixes only have the `_opt` kinds.
TEMPLATE_FORMATS: Mapping[str, str] = {
    "zs_opt": F.ZS_OPT, "zs_noopt": F.ZS_NOOPT, "fs_opt": F.FS_OPT, "fs_noopt": F.FS_NOOPT}
# The CoT submix is tagged zs_opt / fs_opt like the others; its rows are chain of thought.
COT_TEMPLATE_FORMATS: Mapping[str, str] = {"zs_opt": F.COT_ZS, "fs_opt": F.COT_FS}
BATCH_ROWS = 1024

Files = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
Key = tuple[str, str]  # (task_name, template_type)
Batch = dict[str, list[str]]  # column -> values, at most BATCH_ROWS of them


def read_flan2022(path: str | os.PathLike[str], *, keys: Collection[Key] | None = None,
                  batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """Column batches of one parquet or JSONL file, checked; only `keys` rows if given.

    Parquet is read one row group at a time in batches of `batch_rows`, so memory stays
    bounded by a batch, never the file. Errors name the file and the JSONL line or the
    parquet row (0-based, as in `pyarrow.parquet.read_table(path).slice(row, 1)`).
    """
    yield from _read(Path(path), keys, None, batch_rows)


def count_rows(files: Files) -> Counter[Key]:
    """Rows per (task_name, template_type) over files, in one streaming pass.

    Parquet: only the two key columns are read, a row group at a time. JSONL: every row is
    parsed and checked against SCHEMA, so a bad row fails here, not mid-training.
    """
    total: Counter[Key] = Counter()
    for path in _paths(files, "count_rows"):
        total.update(_scan(path).counts)
    return total


def flan2022_source(files_by_split: Mapping[str, Files], *,
                    template_formats: Mapping[str, str] = TEMPLATE_FORMATS):
    """A seqio source of one submix's rows (FEATURES, all strings), counted by one pass."""
    files = {split: _paths(v, f"split {split!r}") for split, v in files_by_split.items()}
    scans = {p: _scan(p) for ps in files.values() for p in ps}
    _check_template_types(scans, template_formats)
    return _source(files, scans, template_formats, keys=None)


def register_flan2022_submix(name: str, files_by_split: Mapping[str, Files],
                             vocabulary: seqio.Vocabulary | None = None, *, by: str = "task",
                             template_formats: Mapping[str, str] = TEMPLATE_FORMATS,
                             replace: bool = False,
                             prepared_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Registers seqio Tasks over a published Flan 2022 submix; returns their names.

    `by="task"`: one Task per (task_name, format), named `{name}.{task}:{format}` (task_name
    with characters seqio rejects made `_`), which is the `{base}:{format}` shape that
    `mixing.task_rates` / `recipe_rates` cap and share per base task. `by="none"`: one Task
    `{name}` with every row. `template_formats` maps template_type to a format name
    (`COT_TEMPLATE_FORMATS` for the CoT submix).

    Each Task's source is a `sources.IndexedSource`: its rows by index (`random_access`,
    for the Grain reader) and, for seqio, the same rows in file order. Registration makes
    one pass over the files: JSONL rows are parsed and checked, and each row's byte offset
    is kept per (task_name, template_type) (8 bytes a row). Parquet files are read through
    a prepared ArrayRecord copy (`prepare.prepare_flan2022`, or `flan-jax prepare`) in
    `prepared_dir`, by default `~/.cache/flan_jax/prepared/<hash of the files>`
    (`$FLAN_JAX_CACHE` moves the root); when it holds no up-to-date result, registration
    prepares one (logged once) and later registrations reuse it.
    """
    if by not in ("task", "none"):
        raise ValueError(f"by={by!r}: use 'task' (one Task per task and format) or 'none'")
    bad = {t: f for t, f in template_formats.items() if f not in F.FORMATS}
    if bad:
        raise ValueError(f"template_formats {bad}: formats must be in {F.FORMATS}")
    if vocabulary is None:
        from flan_jax.data.vocab import default_vocabulary
        vocabulary = default_vocabulary()
    files = {split: _paths(v, f"split {split!r}") for split, v in files_by_split.items()}
    parquet = list(dict.fromkeys(p for ps in files.values() for p in ps if _kind(p) == "parquet"))
    prepared = _prepared(parquet, prepared_dir) if parquet else None
    scans = {p: _scan(p) if _kind(p) == "jsonl" else _Scan(prepared.counts(p), None)
             for ps in files.values() for p in ps}  # a file in two splits: once
    _check_template_types(scans, template_formats)
    output_features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True)
                       for k in ("inputs", "targets")}

    tasks: dict[str, tuple[set[Key] | None, str | None]] = {}
    if by == "none":
        tasks[name] = (None, None)
    else:
        raw_by_safe: dict[str, str] = {}
        for task, ttype in sorted({k for s in scans.values() for k in s.counts}):
            safe = re.sub(r"[^\w.]", "_", task)
            if raw_by_safe.setdefault(safe, task) != task:
                raise SourceError(f"task_name {task!r} and {raw_by_safe[safe]!r} both make "
                                  f"seqio name {safe!r}; rename one in the files")
            fmt = template_formats[ttype]
            keys, _ = tasks.setdefault(F.task_name(f"{name}.{safe}", fmt), (set(), fmt))
            keys.add((task, ttype))
    make_room(seqio.TaskRegistry, tasks, replace=replace, kind="Task")
    for tname, (keys, fmt) in sorted(tasks.items()):
        seqio.TaskRegistry.add(
            tname,
            source=_indexed(files, scans, prepared, template_formats, keys),
            output_features=output_features,
            preprocessors=[seqio.preprocessors.tokenize,
                           seqio.preprocessors.append_eos_after_trim],
            postprocess_fn=_cot_answer if fmt in (F.COT_ZS, F.COT_FS) else None)
    log.info("Flan 2022 submix %r: %d rows in %d file(s) -> %d seqio Task(s)", name,
             sum(sum(s.counts.values()) for s in scans.values()), len(scans), len(tasks))
    return sorted(tasks)


@dataclasses.dataclass(frozen=True)
class _Scan:
    """What one pass over a file learnt: rows per key, and (parquet) which row groups."""

    counts: Counter[Key]
    row_groups: Mapping[Key, int] | None  # bit i set: row group i holds the key
    offsets: Mapping[Key, np.ndarray] | None = None  # JSONL: each row's byte offset, int64


def _paths(files: Files, what: str) -> list[Path]:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(p) for p in files]
    for p in paths:
        if not p.is_file():
            raise SourceError(f"{p}: no such file ({what})")
        if _kind(p) is None:
            raise SourceError(f"{p}: not a .parquet or .jsonl file ({what})")
    return paths


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "parquet" if suffix == ".parquet" else "jsonl" if suffix in (".jsonl", ".json") \
        else None


def _scan(path: Path) -> _Scan:
    if _kind(path) == "jsonl":
        return _scan_jsonl(path)
    import pyarrow.compute as pc

    pf, offsets = open_parquet(path)
    counts: Counter[Key] = Counter()
    groups: dict[Key, int] = {}
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg, columns=["task_name", "template_type"])
        for column in ("task_name", "template_type"):
            check_nulls(path, offsets[rg], column, table.column(column), pc)
        for row in table.group_by(["task_name", "template_type"]).aggregate(
                [("task_name", "count")]).to_pylist():
            key = (row["task_name"], row["template_type"])
            counts[key] += row["task_name_count"]
            groups[key] = groups.get(key, 0) | (1 << rg)
    return _Scan(counts, groups)


def _scan_jsonl(path: Path) -> _Scan:
    """Parses and checks every row (a bad one fails with `file:line`), keeping its offset."""
    by_key: dict[Key, array.array] = {}
    try:
        f = path.open("rb")
    except OSError as e:
        raise SourceError(f"{path}: cannot open ({e.strerror})") from e
    with f:
        offset = 0
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = parse_row(line, SCHEMA)
                except SourceError as e:
                    raise SourceError(f"{path}:{lineno}: {e}") from None
                key = (row["task_name"], row["template_type"])
                by_key.setdefault(key, array.array("q")).append(offset)
            offset += len(line)
    offsets = {k: np.frombuffer(v, dtype=np.int64) for k, v in by_key.items()}
    return _Scan(Counter({k: len(v) for k, v in offsets.items()}), None, offsets)


def _prepared(parquet: Sequence[Path], prepared_dir: str | os.PathLike[str] | None
              ) -> P.PreparedFlan2022:
    """The up-to-date prepared copy of the parquet files, prepared now if there is none."""
    out = Path(prepared_dir) if prepared_dir is not None else P.default_prepared_dir(parquet)
    prepared = P.load_prepared(out, parquet)
    if prepared is None:
        prepared = P.prepare_flan2022(parquet, out)
        log.warning("Flan 2022: prepared %d parquet file(s) (%d rows) for reading by index "
                    "into %s; reused while the files are unchanged", len(parquet),
                    prepared.num_rows, out)
    return prepared


def _indexed(files: Mapping[str, list[Path]], scans: Mapping[Path, _Scan],
             prepared: P.PreparedFlan2022 | None, formats: Mapping[str, str],
             keys: Collection[Key] | None):
    """An IndexedSource of the rows of `keys` (all rows if None), yielding FEATURES.

    Per split, the files' rows of `keys` in file order: per JSONL file an offset array (the
    key's own one, or several merged), per parquet file a prepared range or record array.
    """
    import tensorflow as tf

    split_rows = {}
    for split, paths in files.items():
        parts: list[Any] = []
        for p in paths:
            counts = scans[p].counts
            wanted = [k for k in (counts if keys is None else keys) if counts.get(k)]
            if not wanted:
                continue
            if prepared is not None and _kind(p) == "parquet":
                parts.append(prepared.rows(p, None if keys is None else wanted))
                continue
            offsets = scans[p].offsets
            merged = offsets[wanted[0]] if len(wanted) == 1 else np.sort(
                np.concatenate([offsets[k] for k in wanted]))
            parts.append(JsonlRows(p, SCHEMA, offsets=merged))
        rows = parts[0] if len(parts) == 1 else ConcatRows(parts) if parts else ListRows([])
        split_rows[split] = P.Flan2022Rows(rows, formats)
    signature = {f: tf.TensorSpec((), tf.string) for f in FEATURES}
    return indexed_source(split_rows, signature)


def _check_template_types(scans: Mapping[Path, _Scan], formats: Mapping[str, str]) -> None:
    for path, scan in scans.items():
        unknown: Counter[str] = Counter()
        for (_, ttype), n in scan.counts.items():
            if ttype not in formats:
                unknown[ttype] += n
        if unknown:
            ttype, n = unknown.most_common(1)[0]
            raise SourceError(f"{path}: template_type {ttype!r} ({n} rows) is not in "
                              f"template_formats {sorted(formats)}; pass template_formats=")


def _source(files: Mapping[str, list[Path]], scans: Mapping[Path, _Scan],
            formats: Mapping[str, str], keys: Collection[Key] | None):
    """A seqio source of the rows of `keys` (all rows if None), yielding FEATURES."""
    import tensorflow as tf

    def hits(path: Path) -> tuple[int, list[int] | None]:
        """Rows of `keys` in a file, and the parquet row groups that hold them."""
        scan = scans[path]
        wanted = scan.counts if keys is None else keys
        n = sum(scan.counts.get(k, 0) for k in wanted)
        if scan.row_groups is None:
            return n, None
        mask = 0
        for k in wanted:
            mask |= scan.row_groups.get(k, 0)
        return n, [i for i in range(mask.bit_length()) if mask >> i & 1]

    plan = {split: [(p, *hits(p)) for p in paths] for split, paths in files.items()}
    signature = {f: tf.TensorSpec((None,), tf.string) for f in FEATURES}

    def batches(split: str, shuffle: bool, seed: int | None) -> Iterator[Batch]:
        units = [(p, groups) for p, n, groups in plan[split] if n]
        rng = random.Random(seed)
        if shuffle:  # file order and row-group order; seqio's buffer shuffles examples
            rng.shuffle(units)
        for path, groups in units:
            if shuffle and groups is not None:
                groups = rng.sample(groups, len(groups))
            for b in _read(path, keys, groups, BATCH_ROWS):
                fmts = [formats.get(t) for t in b["template_type"]]
                if None in fmts:
                    raise SourceError(f"{path}: template_type "
                                      f"{b['template_type'][fmts.index(None)]!r} is not in "
                                      f"template_formats {sorted(formats)}")
                yield {"inputs": b["inputs"], "targets": b["targets"],
                       "task": b["task_name"], "format": fmts}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        if split not in plan:
            raise SourceError(f"Flan 2022 source has no split {split!r} (has {sorted(plan)})")
        return from_generator(lambda: batches(split, shuffle_files, seed), signature).unbatch()

    counts = {split: sum(n for _, n, _ in units) for split, units in plan.items()}
    return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=list(files),
                                    num_input_examples=counts)


def _read(path: Path, keys: Collection[Key] | None, row_groups: Sequence[int] | None,
          batch_rows: int) -> Iterator[Batch]:
    wanted = None if keys is None else set(keys)
    if _kind(path) == "jsonl":
        batch: Batch = {c: [] for c in COLUMNS}
        for row in read_jsonl(path, SCHEMA):
            if wanted is None or (row["task_name"], row["template_type"]) in wanted:
                for c in COLUMNS:
                    batch[c].append(row[c])
                if len(batch["inputs"]) == batch_rows:
                    yield batch
                    batch = {c: [] for c in COLUMNS}
        if batch["inputs"]:
            yield batch
        return
    import pyarrow as pa
    import pyarrow.compute as pc

    pf, offsets = open_parquet(path)
    joined = None if wanted is None else pa.array(sorted(f"{t}\x1f{tt}" for t, tt in wanted))
    for rg in range(pf.num_row_groups) if row_groups is None else row_groups:
        start = offsets[rg]
        for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=list(COLUMNS)):
            for c in COLUMNS:
                check_nulls(path, start, c, rb.column(c), pc)
            start += rb.num_rows
            if joined is not None:  # (string or large_string columns) -> one string key
                key = pc.binary_join_element_wise(rb.column("task_name").cast(pa.string()),
                                                  rb.column("template_type").cast(pa.string()),
                                                  "\x1f")
                rb = rb.filter(pc.is_in(key, value_set=joined))
            if rb.num_rows:
                yield {c: rb.column(c).to_pylist() for c in COLUMNS}


def _cot_answer(output: Any, example: Any = None, is_target: bool = False) -> str:
    """seqio postprocess_fn for CoT formats: the final answer of the generated text."""
    return F.extract_cot_answer(output)
