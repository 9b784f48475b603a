"""Raw-example sources: schema-checked JSONL files and random-access splits, as seqio sources.

`IndexedSource` is the seqio `DataSource` over `rows.Rows` per split: seqio (tf.data) reads
it as a stream, the Grain training reader reads the same rows by index through
`random_access(split)`. A bad row stops the pipeline with `file:line` and what is wrong;
nothing is skipped silently (`skip_invalid=True` skips bad rows and logs how many, once;
fields the schema lacks are dropped with one warning per file, refused with `strict=True`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flan_jax.data.rows import (ConcatRows, JsonlRows, Rows, UnknownFields, parse_row,
                                 tell_unknown, type_name)
from flan_jax.errors import FlanJaxError, SourceError

__all__ = ["IndexedSource", "SourceError", "indexed_source", "iter_source", "jsonl_source",
           "python_source", "random_access", "read_jsonl", "validate_schema"]

log = logging.getLogger(__name__)

# Field types a schema may name, with their tf.data signatures (dtype, shape).
_TYPES: dict[Any, tuple[str, tuple[int | None, ...]]] = {
    str: ("string", ()), int: ("int64", ()), float: ("float32", ()), bool: ("bool", ()),
    list[str]: ("string", (None,)), list[int]: ("int64", (None,)),
    list[float]: ("float32", (None,)),
}
Schema = Mapping[str, Any]  # field name -> one of the types above


def validate_schema(schema: Schema) -> None:
    for name, t in schema.items():
        if t not in _TYPES:
            raise SourceError(f"schema field {name!r}: type {type_name(t)} is not one of "
                              f"{[type_name(k) for k in _TYPES]}")


def read_jsonl(path: str | os.PathLike[str], schema: Schema | None = None, *,
               skip_invalid: bool = False, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yields each row of a JSONL file (blank lines ignored), checked against `schema`.

    Only the schema's fields are kept, so every row has the same structure downstream;
    others are dropped with one warning for the file, or refused with `strict`.
    """
    path = Path(path)
    if schema is not None:
        validate_schema(schema)
    skipped, told_unknown = 0, False
    try:
        f = path.open("rb")  # bytes: bad UTF-8 is a row error with its line, not a crash
    except OSError as e:
        raise SourceError(f"{path}: cannot open ({e.strerror})") from e
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = parse_row(line, schema, unknown_ok=told_unknown)
            except SourceError as e:
                if isinstance(e, UnknownFields) and not strict:
                    told_unknown = True
                    row = tell_unknown(f"{path}:{lineno}", e)
                elif not skip_invalid:
                    raise SourceError(f"{path}:{lineno}: {e}") from None
                else:
                    skipped += 1
                    continue
            yield row
    if skipped:
        log.warning("%s: skipped %d invalid row(s) (skip_invalid=True)", path, skipped)


_CHUNK = 64  # examples per from_generator call
Generate = Callable[[str, bool, "int | None"], Iterator[dict[str, Any]]]


_RAISED: collections.deque[FlanJaxError] = collections.deque(maxlen=1)


def from_generator(generate: Callable[[], Iterator[Any]], signature: Any):
    """`tf.data.Dataset.from_generator` that remembers a FlanJaxError its generator raises:
    tf.data wraps it in an InvalidArgumentError holding the whole Python traceback, once per
    reading thread; `user_errors_from_tf` raises the original instead."""
    import tensorflow as tf

    def remembering() -> Iterator[Any]:
        try:
            yield from generate()
        except FlanJaxError as e:
            _RAISED.append(e)
            raise

    return tf.data.Dataset.from_generator(remembering, output_signature=signature)


@contextlib.contextmanager
def user_errors_from_tf() -> Iterator[None]:
    """Around code that reads tf.data pipelines over our sources (the seqio reader, seqio
    evaluation): a bad row's `file:line` error comes out as itself, once, not as TF's."""
    try:
        yield
    except Exception as e:
        # Only TF's wrapper of that very error (its text holds ours): a remembered error
        # from an earlier pipeline never stands in for an unrelated TF failure.
        if (type(e).__module__.startswith("tensorflow") and _RAISED
                and str(_RAISED[-1]) in str(e)):
            raise _RAISED.pop() from None
        raise


def _tf_dataset(generate: Callable[[], Iterator[dict[str, Any]]], signature: Mapping[str, Any]):
    """tf.data over a Python generator of example dicts, in chunks where features are scalar.

    from_generator's per-call cost is far above rendering one example (measured: chunks make
    the packed mixture 1.7-2.4x faster); ragged features cross one example per call.
    """
    import tensorflow as tf

    if not all(len(spec.shape) == 0 for spec in signature.values()):
        return from_generator(generate, dict(signature))

    def chunks() -> Iterator[dict[str, list[Any]]]:
        buf: list[dict[str, Any]] = []
        for ex in generate():
            buf.append(ex)
            if len(buf) == _CHUNK:
                yield {k: [e[k] for e in buf] for k in signature}
                buf = []
        if buf:
            yield {k: [e[k] for e in buf] for k in signature}

    chunked = {k: tf.TensorSpec((None,), spec.dtype) for k, spec in signature.items()}
    return from_generator(chunks, chunked).unbatch()


def python_source(generate: Generate, signature: Mapping[str, Any], splits: Sequence[str],
                  num_input_examples: Mapping[str, int] | Callable[[str], int | None] | None
                  = None):
    """A seqio source over `generate(split, shuffle, seed)`, a generator of example dicts.

    `num_input_examples` is a dict of counts or a function asked on demand (None: unknown).
    Such a source has no random access: the Grain reader can't read it (use `IndexedSource`
    or `flan-jax prepare`). Python consumers call `iter_examples` and skip tf.data.
    """
    import seqio

    class PythonSource(seqio.FunctionDataSource):
        def iter_examples(self, split: str, shuffle: bool = False,
                          seed: int | None = None) -> Iterator[dict[str, Any]]:
            if split not in self.splits:
                raise SourceError(f"split {split!r} is not one of {list(self.splits)}")
            return generate(split, shuffle, seed)

        def num_input_examples(self, split: str) -> int | None:
            if callable(count):
                return count(split)
            return super().num_input_examples(split)

    count = num_input_examples

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        return _tf_dataset(lambda: generate(split, shuffle_files, seed), signature)

    counts = dict(num_input_examples) if isinstance(num_input_examples, Mapping) else None
    return PythonSource(dataset_fn=dataset_fn, splits=tuple(splits), num_input_examples=counts)


def indexed_source(split_rows: Mapping[str, Rows], signature: Mapping[str, Any]):
    """An `IndexedSource` (a seqio DataSource with random access) over rows per split."""
    return _indexed_source_class()(split_rows, signature)


def random_access(source: Any, split: str) -> Rows | None:
    """The split's rows by index if the source offers them (flan-jax sources do), else None."""
    get = getattr(source, "random_access", None)
    return get(split) if get is not None else None


def iter_source(source, split: str, *, shuffle: bool = False,
                seed: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Examples of any seqio source in Python: directly for flan-jax sources, else tf.data."""
    if hasattr(source, "iter_examples"):
        return source.iter_examples(split, shuffle=shuffle, seed=seed)
    return source.get_dataset(split, shuffle=shuffle, seed=seed).as_numpy_iterator()


def jsonl_source(split_files: Mapping[str, str | os.PathLike[str] | Sequence[str | os.PathLike[str]]],
                 schema: Schema, *, skip_invalid: bool = False, strict: bool = False):
    """An `IndexedSource` over JSONL files per split, typed by `schema`.

    Each file gets a line-offset index on first use (one pass); rows are validated as they
    are read, and a bad row fails with its `file:line`. Fields the schema lacks are dropped
    with one warning per file; `strict=True` refuses them. It counts its rows, so
    `mixing.task_rates` needs no `sizes=`, and a file with no rows fails when counted.
    """
    import tensorflow as tf

    validate_schema(schema)
    files = {split: [Path(p) for p in ([v] if isinstance(v, (str, os.PathLike)) else v)]
             for split, v in split_files.items()}
    for split, paths in files.items():
        for p in paths:
            if not p.exists():
                raise SourceError(f"{p}: no such file (split {split!r})")
    signature = {name: tf.TensorSpec(shape=_TYPES[t][1], dtype=_TYPES[t][0])
                 for name, t in schema.items()}
    rows: dict[str, Rows] = {}
    for split, paths in files.items():
        parts = [JsonlRows(p, schema, skip_invalid=skip_invalid, strict=strict, split=split)
                 for p in paths]
        rows[split] = parts[0] if len(parts) == 1 else ConcatRows(parts)
    return indexed_source(rows, signature)


_INDEXED = None


def _indexed_source_class():
    """`IndexedSource`, defined on first use: seqio (and TF) load only when a source is made."""
    global _INDEXED
    if _INDEXED is not None:
        return _INDEXED
    import seqio

    class IndexedSource(seqio.DataSource):
        """Rows per split, as a seqio source (tf.data, in order; seqio shuffles) and by index.

        `shard_info` gives shard i every n-th row, as seqio's file sharding would.
        """

        def __init__(self, split_rows: Mapping[str, Rows], signature: Mapping[str, Any]):
            self.split_rows = dict(split_rows)
            self.signature = dict(signature)
            super().__init__(splits=tuple(self.split_rows), num_input_examples=None)

        @property
        def supports_arbitrary_sharding(self) -> bool:
            return True

        def random_access(self, split: str) -> Rows:
            if split not in self.split_rows:
                raise SourceError(f"split {split!r} is not one of {list(self.split_rows)}")
            return self.split_rows[split]

        def num_input_examples(self, split: str) -> int:
            return len(self.random_access(split))

        def list_shards(self, split: str) -> Sequence[str]:
            return [split]

        def iter_examples(self, split: str, shuffle: bool = False, seed: int | None = None,
                          shard_info: Any = None) -> Iterator[dict[str, Any]]:
            del shuffle, seed  # rows in order; seqio's buffer (or the Grain reader) shuffles
            rows = self.random_access(split)
            index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
            return (rows[i] for i in range(index, len(rows), count))

        def get_dataset(self, split: str = "train", shuffle: bool = True,
                        seed: int | None = None, shard_info: Any = None,
                        sequence_length: Any = None, use_cached: bool = False,
                        num_epochs: int | None = 1):
            del shuffle, seed, sequence_length, use_cached, num_epochs  # (the Task's job)
            return _tf_dataset(lambda: self.iter_examples(split, shard_info=shard_info),
                               self.signature)

    IndexedSource.__module__ = __name__
    _INDEXED = IndexedSource
    return IndexedSource
