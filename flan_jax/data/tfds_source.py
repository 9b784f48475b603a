"""A TFDS dataset prepared as ArrayRecord, as a seqio source with rows by index.

`tfds_source` reads through `tfds.data_source` (random access; TFDS's `file_format=
"array_record"`), not tf.data, so the Grain reader gets `TfdsRows`; seqio reads the same
rows in order. Values become plain Python (bytes -> str, numpy scalars -> int/float/bool).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax.data.sources import Schema, SourceError, indexed_source, validate_schema
from flan_jax.data.templates import plain_text

# Python type -> tf.data dtype name; lists of these have shape (None,).
_DTYPES = {str: "string", int: "int64", float: "float32", bool: "bool"}
_WIDENINGS = {(int, float), (list[int], list[float])}


def tfds_source(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                splits: Sequence[str] | None = None, schema: Schema | None = None):
    """An `IndexedSource` over a prepared TFDS dataset (`name`, e.g. "mnli:1.0.0").

    The dataset must be prepared in `data_dir` with `file_format="array_record"` (TFDS's
    random-access format). `splits` keeps those (default: all; TFDS slices such as
    "train[:1%]" work). Fields keep their types: Text and string scalars become str,
    integer scalars and ClassLabel int, floats float, bools bool, and 1-D sequences of
    these lists; `schema` (as in `sources.py`) selects fields and may widen int to float.
    """
    import tensorflow as tf

    tfds = _import_tfds()
    if schema is not None:
        validate_schema(schema)
    where = name if data_dir is None else f"{name} (data_dir={os.fspath(data_dir)})"
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        info = tfds.builder(name, data_dir=data_dir).info
    except Exception as e:  # tfds raises many kinds (not found, not prepared...); keep it
        raise SourceError(f"{where}: cannot load ({type(e).__name__}: {e})") from e
    splits = list(info.splits) if splits is None else list(splits)
    if not splits:
        raise SourceError(f"{where}: the dataset has no splits (is it prepared?)")
    types = _types(info.features, schema, where)
    rows = {split: TfdsRows(name, data_dir, split, types) for split in splits}
    for split, r in rows.items():  # opens each split now, so a bad one fails here
        try:
            len(r)
        except Exception as e:
            raise SourceError(f"{where} split {split!r}: cannot open for random access "
                              f"({type(e).__name__}: {e}); prepare it with "
                              "file_format='array_record'") from e
    signature = {k: tf.TensorSpec(() if t in _DTYPES else (None,),
                                  _DTYPES[t] if t in _DTYPES else _DTYPES[t.__args__[0]])
                 for k, t in types.items()}
    return indexed_source(rows, signature)


class TfdsRows:
    """One split of a prepared TFDS dataset by index, values as plain Python `types`.

    Opens `tfds.data_source(name, data_dir=, split=)` on first use and pickles as those
    three names (a few hundred bytes): a TFDS data source pickles with its builder, which
    a worker could import only if it can import the module defining the builder class.
    """

    def __init__(self, name: str, data_dir: str | None, split: str, types: Mapping[str, Any]):
        self.name, self.data_dir, self.split, self.types = name, data_dir, split, dict(types)
        self._source = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    @property
    def source(self) -> Any:
        if self._source is None:
            self._source = _import_tfds().data_source(self.name, data_dir=self.data_dir,
                                                      split=self.split)
        return self._source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} split {self.split!r}: row {index} of {len(self)}")
        example = self.source[index]
        out = {}
        for key, want in self.types.items():
            try:
                out[key] = _plain(example[key], want)
            except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
                raise SourceError(f"{self.name} split {self.split!r}: row {index}: field "
                                  f"{key!r}: {type(e).__name__}: {e}") from None
        return out


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("tfds_source needs tensorflow-datasets: pip install "
                          "tensorflow-datasets array-record") from e
    return tfds


def _plain(value: Any, want: Any) -> Any:
    """A decoded TFDS value (numpy scalar, bytes, array or list) as `want`."""
    if want in _DTYPES:
        if want is str:
            return str(plain_text(value))
        if hasattr(value, "shape") and value.shape != ():
            raise ValueError(f"expected a scalar, got shape {value.shape}")
        return want(value.item() if hasattr(value, "item") else value)
    (item,) = want.__args__
    return [_plain(v, item) for v in value]


def _feature_type(feature: Any, key: str, where: str) -> Any:
    """The Python type of a TFDS feature (a key of _DTYPES, or list of one)."""
    import numpy as np
    import tensorflow_datasets as tfds

    f = tfds.features
    if isinstance(feature, f.ClassLabel):
        return int
    if isinstance(feature, f.Text):
        return str
    if isinstance(feature, f.Sequence) and not isinstance(feature.feature, f.Sequence):
        inner = _feature_type(feature.feature, key, where)
        if inner in _DTYPES:
            return list[inner]
    elif isinstance(feature, f.Tensor) and len(feature.shape) <= 1:
        dtype = np.dtype(feature.np_dtype)
        kind = (str if dtype.kind in "SUO" else bool if dtype.kind == "b" else
                int if dtype.kind in "iu" and dtype != np.uint64 else
                float if dtype.kind == "f" else None)
        if kind is not None:
            return kind if len(feature.shape) == 0 else list[kind]
    raise SourceError(f"{where}: field {key!r} is {feature!r}, which tfds_source can't feed "
                      "to tf.data (it takes text, numbers, bools and 1-D lists of them); "
                      "leave it out with schema={...}")


def _types(features: Any, schema: Schema | None, where: str) -> dict[str, Any]:
    if schema is None:
        return {k: _feature_type(v, k, where) for k, v in features.items()}
    out = {}
    for key, want in schema.items():
        if key not in features:
            raise SourceError(f"{where}: no field {key!r} (fields: {sorted(features)})")
        have = _feature_type(features[key], key, where)
        if have != want and (have, want) not in _WIDENINGS:
            raise SourceError(f"{where}: field {key!r} is {_name(have)} but the schema wants "
                              f"{_name(want)} (tfds_source only widens int to float)")
        out[key] = want
    return out


def _name(t: Any) -> str:
    return str(t) if hasattr(t, "__args__") else t.__name__
