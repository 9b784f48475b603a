"""METALM's semi-causal objective on plain text: each text cut by a seeded rule into an
encoded span and its causal continuation, as a task any reader and model can train on.

`SemiCausalRows` turns row i of a text source into {"inputs": the text's first words,
"targets": the rest}; the cut falls after a fraction of the words drawn from
`span` (uniformly) by `numpy.random.default_rng((seed, i))`, so it is the same for a row
whatever reads it (the Grain reader by index, seqio in order, any host) and changes with
`seed`. With the "semi_causal" features the inputs are the span the model's encoder reads and
the targets carry the loss. METALM samples several spans per sequence; here each text has
one span, at its start, and packing puts several such texts in a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from flan_jax.data.registry import make_room
from flan_jax.data.rows import Rows
from flan_jax.data.sources import indexed_source, random_access
from flan_jax.errors import SourceError

_WORD = re.compile(r"\S+")


def cut_words(text: str, fraction: float) -> tuple[str, str]:
    """(the first round(fraction * words) words, the rest), whitespace at the cut dropped; at
    least one word on each side when the text has two or more."""
    starts = [m.start() for m in _WORD.finditer(text)]
    if len(starts) < 2:
        return "", text.strip()
    k = min(max(round(fraction * len(starts)), 1), len(starts) - 1)
    return text[:starts[k]].rstrip(), text[starts[k]:].rstrip()


class SemiCausalRows:
    """A text split by index: `rows[i]` = {"inputs": span, "targets": continuation}."""

    def __init__(self, raw: Rows, *, text_field: str = "text", seed: int = 0,
                 span: tuple[float, float] = (0.25, 0.75), where: str = "source"):
        lo, hi = span
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"semi-causal span={span!r}: need 0 <= low <= high <= 1")
        self.raw, self.text_field, self.seed, self.span, self.where = (
            raw, text_field, seed, (lo, hi), where)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, str]:
        row = self.raw[index]
        if self.text_field not in row:
            raise SourceError(f"{self.where}: row {index} has no field {self.text_field!r} "
                              f"(has {sorted(row)}); set text_field")
        text = row[self.text_field]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        fraction = np.random.default_rng((self.seed, index)).uniform(*self.span)
        inputs, targets = cut_words(text, float(fraction))
        return {"inputs": inputs, "targets": targets}


def register_semi_causal_task(name: str, source: Any, *, text_field: str = "text",
                              seed: int = 0, span: tuple[float, float] = (0.25, 0.75),
                              vocabulary: Any = None, replace: bool = False) -> str:
    """Registers seqio Task `name` over a random-access text source (e.g. `jsonl_source`):
    every split of `source`, each row cut by `SemiCausalRows`. Train it with
    gin/arch/semi_causal.gin; other architectures read it as a prefix-continuation task."""
    import seqio
    import tensorflow as tf

    if vocabulary is None:
        from flan_jax.data.vocab import default_vocabulary
        vocabulary = default_vocabulary()
    split_rows: Mapping[str, Rows] = {}
    for split in source.splits:
        raw = random_access(source, split)
        if raw is None:
            raise SourceError(f"semi-causal task {name!r}: its source "
                              f"({type(source).__name__}) has no random access; use a "
                              "flan-jax source such as jsonl_source")
        split_rows[split] = SemiCausalRows(raw, text_field=text_field, seed=seed, span=span,
                                           where=f"task {name!r}, split {split!r}")
    signature = {k: tf.TensorSpec(shape=(), dtype=tf.string) for k in ("inputs", "targets")}
    make_room(seqio.TaskRegistry, [name], replace=replace, kind="Task")
    features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True)
                for k in ("inputs", "targets")}
    seqio.TaskRegistry.add(
        name, source=indexed_source(split_rows, signature), output_features=features,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
    return name
