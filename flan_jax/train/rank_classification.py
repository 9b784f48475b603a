"""Rank classification for tasks with options: score every option, pick the likeliest.

FLAN and T0 report it beside exact match for multiple-choice tasks: a model can't miss by
wording, only by preferring a wrong option. Each (inputs, option target) pair is scored by
the summed log-likelihood of the option's tokens (EOS included) under teacher forcing. The
examples are the first `num_examples` of the split, rendered exactly as the seqio Task
renders them (same template, options style and few-shot exemplars).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flan_jax.data import formats as F
from flan_jax.data.flan import RenderedSource
from flan_jax.data.sources import iter_source
from flan_jax.model.losses import token_cross_entropy

OPTION_FORMATS = (F.ZS_OPT, F.FS_OPT)


def rank_classification(model, vocabulary, task_name: str, *, split: str,
                        num_examples: int | None, batch_size: int,
                        lengths: dict[str, int]) -> dict[str, float] | None:
    """{"rank_accuracy": %} for a registered Flan task in an options format, else None."""
    import seqio

    if task_name not in seqio.TaskRegistry.names():
        return None
    source = seqio.TaskRegistry.get(task_name).source
    if not isinstance(source, RenderedSource) or source.fmt not in OPTION_FORMATS:
        return None
    renderer = source.renderer  # the Task's own: same template, style and exemplars
    questions: list[tuple[str, list[str], int]] = []
    raw = iter_source(source.spec.source, split)
    for example in itertools.islice(raw, num_examples):
        fields = renderer.fields(example)
        rendered = renderer.render(fields)
        choices = renderer.choices(fields)
        if rendered["targets"] in choices:
            questions.append((rendered["inputs"], choices, choices.index(rendered["targets"])))
    if not questions:
        return None
    pairs = [(inputs, choice) for inputs, choices, _ in questions for choice in choices]
    scores = score(model, vocabulary, pairs, batch_size=batch_size, lengths=lengths)
    hits, start = 0, 0
    for _, choices, answer in questions:
        hits += int(np.argmax(scores[start:start + len(choices)]) == answer)
        start += len(choices)
    return {"rank_accuracy": 100.0 * hits / len(questions)}


def score(model, vocabulary, pairs: Sequence[tuple[str, str]], *, batch_size: int,
          lengths: dict[str, int]) -> np.ndarray:
    """Summed target log-likelihood of each (inputs, targets) text pair, f32 [len(pairs)].

    Texts are tokenized as the seqio Tasks do (EOS after trimming); batches are padded to a
    fixed shape so the scorer compiles once.
    """
    graphdef, state = nnx.split(model)
    out = np.zeros(len(pairs), np.float32)
    li, lt = lengths["inputs"], lengths["targets"]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        enc = np.zeros((batch_size, li), np.int32)
        tgt = np.zeros((batch_size, lt), np.int32)
        for i, (inputs, targets) in enumerate(chunk):
            _fill(enc[i], vocabulary.encode(inputs), vocabulary.eos_id)
            _fill(tgt[i], vocabulary.encode(targets), vocabulary.eos_id)
        ll = _log_likelihood(graphdef, state, jnp.asarray(enc), jnp.asarray(tgt))
        out[start:start + len(chunk)] = np.asarray(ll)[:len(chunk)]
    return out


def _fill(row: np.ndarray, ids: Sequence[int], eos_id: int) -> None:
    ids = list(ids)[:len(row) - 1] + [eos_id]
    row[:len(ids)] = ids


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihood(graphdef, state, enc: jax.Array, targets: jax.Array) -> jax.Array:
    """enc [b, li], targets [b, lt] (0 = padding) -> f32 [b]."""
    model = nnx.merge(graphdef, state)
    dec_in = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    logits = model(enc, dec_in)  # f32 [b, lt, vocab]
    lp = -token_cross_entropy(logits, targets)  # the trainer's loss, per token
    return jnp.sum(jnp.where(targets != 0, lp, 0.0), axis=-1)
