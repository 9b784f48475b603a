"""Extending a trained model's vocabulary with new tokens placed before the sentinels (as
`flan_jax.data.vocab.with_special_tokens` places them), e.g. Galactica's markers over T5's
vocabulary for finetuning Flan-T5: the rows of every vocab-sized param are remapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from flan_jax.model.config import T5Config
from flan_jax.model.params import Params, abstract_model, param_axes

ROW_MULTIPLE = 128  # T5's 32100 ids live in 32128 rows


def extend_vocab(params: Params, cfg: T5Config, pieces: int, new_tokens: int | Sequence[str],
                 sentinels: int) -> tuple[Params, T5Config]:
    """(params, config) for ids `[pieces) + [new tokens) + [sentinels)`, from a model trained
    on `[pieces) + [sentinels)` (then padding rows up to `cfg.vocab_size`).

    Along the `vocab` axis of every param that has one (the token embedding [vocab, embed],
    and T5 1.1 / Flan-T5's untied logits [embed, vocab]): rows [0, pieces) are kept; the k
    new rows at [pieces, pieces + k) are the mean of the piece rows (deterministic; Hugging
    Face's `resize_token_embeddings` also starts new rows at the mean, there with noise: a
    mean row's logit is the average piece logit, so a new token is neither favoured nor
    ruled out before finetuning); the sentinel rows move up by k; the rows after them are
    the old padding rows, then (where the table grew) more mean rows. The row count stays
    `cfg.vocab_size` while `pieces + k + sentinels` fits in it (T5's 32128 rows hold
    32000 pieces + up to 28 new tokens + 100 sentinels), else it grows to the next
    multiple of 128. Arrays come back as numpy.
    """
    k = new_tokens if isinstance(new_tokens, int) else len(new_tokens)
    old = cfg.vocab_size
    if min(pieces, sentinels, k) < 0 or pieces + sentinels > old:
        raise ValueError(f"extend_vocab: {pieces} pieces + {sentinels} sentinels do not fit "
                         f"the model's vocab_size={old} (or a count is negative)")
    used = pieces + k + sentinels
    new = old if used <= old else -(-used // ROW_MULTIPLE) * ROW_MULTIPLE
    axes = param_axes(abstract_model(cfg))
    out = jax.tree.map(lambda x, a: _remap(np.asarray(x), a, pieces, k, sentinels, new)
                       if "vocab" in a else x, params, axes)
    return out, cfg.replace(vocab_size=new)


def _remap(x: np.ndarray, axes: tuple[str, ...], pieces: int, k: int, sentinels: int,
           rows: int) -> np.ndarray:
    axis = axes.index("vocab")
    v = np.moveaxis(x, axis, 0)  # [vocab, ...]
    mean = v[:pieces].astype(np.float32).mean(axis=0).astype(v.dtype)
    pad = v[pieces + sentinels:][:rows - pieces - k - sentinels]
    fill = rows - pieces - k - sentinels - len(pad)
    out = np.concatenate([v[:pieces], np.broadcast_to(mean, (k, *mean.shape)),
                          v[pieces:pieces + sentinels], pad,
                          np.broadcast_to(mean, (fill, *mean.shape))])
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))
