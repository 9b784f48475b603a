"""Hugging Face `datasets` as a seqio source: local JSON/CSV/parquet files or a saved dataset.

An optional extra (`pip install 'flan-jax[hf]'`): `datasets` is imported only when
`hf_source` is called. Columns become tf.data features typed from the dataset's `features`;
a loaded (not streamed) dataset also gives its rows by index (`HfRows`, for the Grain reader).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flan_jax.data.rows import type_name
from flan_jax.data.sources import (Schema, SourceError, from_generator, indexed_source,
                                    validate_schema)

# Column types hf_source can feed to tf.data, with their signatures (dtype, shape). Like
# sources.py, floats become float32 and ints int64.
_SPECS: dict[Any, tuple[str, tuple[int | None, ...]]] = {
    str: ("string", ()), int: ("int64", ()), float: ("float32", ()), bool: ("bool", ()),
    list[str]: ("string", (None,)), list[int]: ("int64", (None,)),
    list[float]: ("float32", (None,)), list[bool]: ("bool", (None,)),
}
# `datasets.Value` dtypes -> the Python type of their values. uint64 is left out: it does
# not fit int64.
_VALUE_TYPES: dict[str, type] = {
    "string": str, "large_string": str, "bool": bool,
    **{d: int for d in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")},
    **{d: float for d in ("float16", "float32", "float64")},
}
# Schema types hf_source converts on the fly; anything else must match the dataset.
_WIDENINGS = {(int, float), (list[int], list[float])}


def hf_source(path_or_name: str | os.PathLike[str], *, splits: Sequence[str] | None = None,
              data_files: Any = None, schema: Schema | None = None, streaming: bool = False,
              **load_kwargs: Any):
    """A seqio source over `datasets.load_dataset(path_or_name, ...)`.

    `path_or_name` is a builder with `data_files` (`"json"` for JSON/JSONL, `"csv"`,
    `"parquet"`), a dataset directory, or a `save_to_disk` directory (read with
    `load_from_disk`). `splits` keeps only those splits (default: all). Columns keep their
    dataset types (strings, ints, floats, bools and lists of them); `schema` (as in
    `sources.py`) selects columns and may widen int to float. To cast anything else, pass
    `features=datasets.Features(...)`, which goes to `load_dataset` with `**load_kwargs`.
    Unless `streaming`, the source is a `sources.IndexedSource` over `HfRows` per split:
    rows by index (`random_access(split)`), counted, and read in order by seqio, whose
    buffer shuffles (as for every IndexedSource; `shuffle_files` is not applied). Streaming
    gives a `seqio.FunctionDataSource` with no counts, whose `shuffle_files` shuffles shards
    and a small buffer.
    """
    import seqio
    import tensorflow as tf

    datasets = _import_datasets()
    if schema is not None:
        validate_schema(schema)
    loaded = _load(datasets, path_or_name, data_files, streaming, load_kwargs)
    if splits is not None:
        missing = [s for s in splits if s not in loaded]
        if missing:
            raise SourceError(f"{_where(path_or_name, data_files)}: no split(s) {missing} "
                              f"(has {sorted(loaded)})")
        loaded = {s: loaded[s] for s in splits}
    if not loaded:
        raise SourceError(f"{_where(path_or_name, data_files)}: the dataset has no splits")

    columns: dict[str, dict[str, Any]] = {}
    for split, ds in loaded.items():
        where = _where(path_or_name, data_files, split)
        columns[split] = _columns(datasets, ds.features, schema, where)
    first, types = next(iter(columns.items()))
    for split, other in columns.items():
        if other != types:
            raise SourceError(
                f"{_where(path_or_name, data_files)}: split {split!r} has columns "
                f"{_describe(other)} but split {first!r} has {_describe(types)}; "
                "pass schema={...} to pick common ones")
    signature = {name: tf.TensorSpec(shape=_SPECS[t][1], dtype=_SPECS[t][0])
                 for name, t in types.items()}
    names = list(types)
    if not streaming:
        return indexed_source({split: HfRows(ds.select_columns(names), types,
                                             _where(path_or_name, data_files, split))
                               for split, ds in loaded.items()}, signature)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        if split not in loaded:
            raise SourceError(f"{_where(path_or_name, data_files)}: no split {split!r} "
                              f"(has {sorted(loaded)})")
        ds = loaded[split].select_columns(names)
        if shuffle_files:
            ds = ds.shuffle(seed=seed)
        where = _where(path_or_name, data_files, split)
        return from_generator(lambda: _rows(ds, names, where), signature)

    return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=list(loaded),
                                    num_input_examples=None)


class HfRows:
    """One split of a loaded `datasets.Dataset` by index: `rows[i]` is `dataset[i]`, its
    values plain Python of the column types (`types`: an int column under a float schema
    becomes float). A null fails with the split, row and column.

    Pickles as the Dataset does: a dataset loaded from files (Arrow cache, `save_to_disk`)
    by reference to its memory-mapped files (a few KB), an in-memory one with its table.
    """

    def __init__(self, dataset: Any, types: Mapping[str, Any], where: str):
        self.dataset, self.types, self.where = dataset, dict(types), where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"{self.where}: row {index} of {len(self.dataset)}")
        row = self.dataset[index]
        return {name: _plain(row[name], t, name, index, self.where)
                for name, t in self.types.items()}


def _plain(value: Any, want: Any, name: str, index: int, where: str) -> Any:
    if value is None or (isinstance(value, list) and None in value):
        raise SourceError(f"{where}: row {index}: column {name!r} is null"
                          + (" (in its list)" if value is not None else ""))
    if want is float:
        return float(value)
    if want == list[float]:
        return [float(v) for v in value]
    return value


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError("hf_source needs the Hugging Face `datasets` package: "
                          "pip install 'flan-jax[hf]'") from e
    return datasets


def _where(path_or_name: Any, data_files: Any, split: str | None = None) -> str:
    """How errors name the source: path or builder, its files, and the split."""
    text = os.fspath(path_or_name)
    files = data_files.get(split) if isinstance(data_files, Mapping) and split else data_files
    if files is not None:
        text += f" (data_files={files!r})"
    return text + (f" split {split!r}" if split is not None else "")


def _load(datasets: Any, path_or_name: Any, data_files: Any, streaming: bool,
          load_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """split -> `Dataset` (or `IterableDataset` when streaming)."""
    if "split" in load_kwargs:
        raise TypeError("hf_source: pass splits=[...] rather than split=")
    path = Path(os.fspath(path_or_name))
    saved = path.is_dir() and any((path / f).exists() for f in (
        datasets.config.DATASETDICT_JSON_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME))
    try:
        if saved:
            if data_files is not None or streaming:
                raise SourceError(f"{path}: a save_to_disk directory takes no data_files and "
                                  "is not streamed (it is memory-mapped already)")
            loaded = datasets.load_from_disk(str(path), **load_kwargs)
        else:
            loaded = datasets.load_dataset(os.fspath(path_or_name), data_files=data_files,
                                           streaming=streaming, **load_kwargs)
    except SourceError:
        raise
    except Exception as e:  # datasets raises many kinds; keep the cause, add the source
        raise SourceError(f"{_where(path_or_name, data_files)}: cannot load "
                          f"({type(e).__name__}: {e})") from e
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        return {str(loaded.split) if loaded.split else "train": loaded}
    return dict(loaded)


def _column_type(datasets: Any, name: str, feature: Any, where: str) -> Any:
    if isinstance(feature, datasets.ClassLabel):
        return int
    if isinstance(feature, datasets.Value) and feature.dtype in _VALUE_TYPES:
        return _VALUE_TYPES[feature.dtype]
    item = getattr(feature, "feature", None)
    if (isinstance(feature, (datasets.Sequence, datasets.LargeList))
            and isinstance(item, datasets.Value) and item.dtype in _VALUE_TYPES):
        return list[_VALUE_TYPES[item.dtype]]
    raise SourceError(f"{where}: column {name!r} has type {feature!r}, which hf_source can't "
                      "feed to tf.data (it takes strings, ints, floats, bools and lists of "
                      "them); drop it with schema={...} or cast it (features=...)")


def _columns(datasets: Any, features: Any, schema: Schema | None, where: str
             ) -> dict[str, Any]:
    """column -> Python type (a key of _SPECS), from the features and the schema."""
    if features is None:
        if schema is None:
            raise SourceError(f"{where}: the dataset declares no features (some streaming "
                              "builders don't); pass schema={...}")
        return dict(schema)
    if schema is None:
        return {name: _column_type(datasets, name, f, where) for name, f in features.items()}
    out = {}
    for name, want in schema.items():
        if name not in features:
            raise SourceError(f"{where}: no column {name!r} (columns: {sorted(features)})")
        have = _column_type(datasets, name, features[name], where)
        if have != want and (have, want) not in _WIDENINGS:
            raise SourceError(
                f"{where}: column {name!r} is {type_name(have)} but the schema wants "
                f"{type_name(want)} (hf_source only widens int to float; pass "
                "features=datasets.Features(...) to cast when loading)")
        out[name] = want
    return out


def _rows(ds: Any, names: Sequence[str], where: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(ds):
        for name in names:
            value = row[name]
            if value is None or (isinstance(value, list) and None in value):
                raise SourceError(f"{where}: row {i}: column {name!r} is null"
                                  + (" (in its list)" if value is not None else ""))
        yield row


def _describe(types: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {type_name(t)}" for k, t in types.items()) + "}"
