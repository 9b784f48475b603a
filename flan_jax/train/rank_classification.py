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
from flan_jax.train.step import forward

OPTION_FORMATS = (F.ZS_OPT, F.FS_OPT)


def rank_classification(model, vocabulary, task_name: str, *, split: str,
                        num_examples: int | None, batch_size: int,
                        lengths: dict[str, int], feature_converter: str = "enc_dec"
                        ) -> dict[str, float] | None:
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
    scores = score(model, vocabulary, pairs, batch_size=batch_size, lengths=lengths,
                   feature_converter=feature_converter)
    hits, start = 0, 0
    for _, choices, answer in questions:
        hits += int(np.argmax(scores[start:start + len(choices)]) == answer)
        start += len(choices)
    return {"rank_accuracy": 100.0 * hits / len(questions)}


def score(model, vocabulary, pairs: Sequence[tuple[str, str]], *, batch_size: int,
          lengths: dict[str, int], feature_converter: str = "enc_dec") -> np.ndarray:
    """Summed target log-likelihood of each (inputs, targets) text pair, f32 [len(pairs)].

    Texts are tokenized as the seqio Tasks do (EOS after trimming) and laid out by the
    training reader's own feature writer for `feature_converter` (so a decoder-only model
    scores the option after [start, inputs] exactly as it trained); batches are padded to a
    fixed shape so the scorer compiles once.
    """
    from flan_jax.data.reader.packing import pad, trim_eos

    graphdef, state = nnx.split(model)
    out = np.zeros(len(pairs), np.float32)
    li, lt, eos = lengths["inputs"], lengths["targets"], vocabulary.eos_id
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        examples = [(trim_eos(vocabulary.encode(i), li, eos), trim_eos(vocabulary.encode(t),
                                                                      lt, eos))
                    for i, t in chunk]
        examples += [([eos], [eos])] * (batch_size - len(chunk))  # fixed shapes
        features = pad(examples, li, lt, feature_converter)
        ll = _log_likelihood(graphdef, state, {k: jnp.asarray(v) for k, v in features.items()})
        out[start:start + len(chunk)] = np.asarray(ll)[:len(chunk)]
    return out


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihood(graphdef, state, batch: dict[str, jax.Array]) -> jax.Array:
    """A padded batch of the converter's features -> f32 [b]: the trainer's loss, per token,
    summed over the target tokens (loss weights)."""
    model = nnx.merge(graphdef, state)
    lp = -token_cross_entropy(forward(model, batch), batch["decoder_target_tokens"])
    return jnp.sum(lp * batch["decoder_loss_weights"], axis=-1)
