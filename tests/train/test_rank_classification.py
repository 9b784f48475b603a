"""Rank classification: option targets, likelihood scoring, and the accuracy it reports,
checked against an independent computation (seqio's rendered text + the train loss)."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data.options import OptionsStyle
from flan_jax.data.templates import Template
from flan_jax.model import create_model, get_config
from flan_jax.model.losses import token_losses

TEMPLATE = Template("Is {a} bigger than {b}?\n{options_}", "{answer}")
EXAMPLE = {"a": "7", "b": "3", "options": ["yes", "no"], "answer": "yes"}


def test_choices_are_the_option_targets_in_the_options_style():
    assert TEMPLATE.choices(EXAMPLE) == ["yes", "no"]
    lettered = OptionsStyle(marker="({label}) {text}", labels="upper")
    assert TEMPLATE.choices(EXAMPLE, style=lettered) == ["(A)", "(B)"]
    # The rendered target is always one of the choices.
    assert TEMPLATE.render(EXAMPLE, style=lettered)[1] == "(A)"


def test_no_choices_without_options_or_when_the_target_is_not_an_option():
    assert TEMPLATE.without_options().choices(EXAMPLE) == []
    worded = Template("Is {a} bigger than {b}?\n{options_}", "The answer is {answer}.")
    assert worded.choices(EXAMPLE) == []


@pytest.fixture(scope="module")
def default_tasks():
    import mixtures.default  # noqa: F401  (registers the synthetic families)
    import seqio

    return seqio


@pytest.fixture(scope="module")
def model():
    return create_model(get_config("tiny", dtype="float32"), seed=3)


def _reference_log_likelihood(model, vocabulary, inputs: str, targets: str, lengths) -> float:
    """-(sum of token cross entropies), from the train step's own loss with z-loss off."""
    enc = (list(vocabulary.encode(inputs))[:lengths["inputs"] - 1] + [1])
    tgt = (list(vocabulary.encode(targets))[:lengths["targets"] - 1] + [1])
    enc, tgt = jnp.asarray([enc]), jnp.asarray([tgt])
    dec_in = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
    losses, _ = token_losses(model(enc, dec_in), tgt)
    return -float(jnp.sum(losses))


def test_scores_are_log_likelihoods_whatever_the_batch_padding(default_tasks, model):
    from flan_jax.data.vocab import default_vocabulary
    from flan_jax.train.rank_classification import score

    vocab = default_vocabulary()
    assert vocab.vocab_size <= model.cfg.vocab_size
    lengths = {"inputs": 48, "targets": 12}
    pairs = [("What is 2 plus 2?", "4"), ("Sort: b a c", "a b c"), ("Say hi", "hi there")]
    batched = score(model, vocab, pairs, batch_size=4, lengths=lengths)
    single = score(model, vocab, pairs, batch_size=1, lengths=lengths)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-4)
    for (inputs, targets), got in zip(pairs, batched):
        want = _reference_log_likelihood(model, vocab, inputs, targets, lengths)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert got < 0


@pytest.mark.parametrize("task", ["synth_weekday:zs_opt", "synth_comparison:fs_opt"])
def test_rank_accuracy_matches_an_independent_count(default_tasks, model, task):
    """Inputs come from the seqio Task's own rendering (flan_jax.data.export.rows); the
    choices from the spec; the scores from the train loss."""
    from flan_jax.data import export
    from flan_jax.data.flan import FlanRenderer, registered_flan_task
    from flan_jax.data.sources import iter_source
    from flan_jax.train.rank_classification import rank_classification

    seqio = default_tasks
    assert task in seqio.TaskRegistry.names()
    vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
    lengths = {"inputs": 256, "targets": 16}
    n = 6
    got = rank_classification(model, vocab, task, split="validation", num_examples=n,
                              batch_size=8, lengths=lengths)
    assert got is not None and set(got) == {"rank_accuracy"}

    spec, fmt = registered_flan_task(task)
    renderer = FlanRenderer(spec, fmt, count_tokens=lambda s: len(vocab.encode(s)))
    rows = list(itertools.islice(export.rows(task, "validation", shuffle=False), n))
    raws = list(itertools.islice(iter_source(spec.source, "validation"), n))
    hits = 0
    for row, raw in zip(rows, raws):
        choices = renderer.choices(renderer.fields(raw))
        assert row["targets"] in choices, (row, choices)
        scores = [_reference_log_likelihood(model, vocab, row["inputs"], c, lengths)
                  for c in choices]
        hits += int(np.argmax(scores) == choices.index(row["targets"]))
    assert got["rank_accuracy"] == pytest.approx(100.0 * hits / n)


def test_tasks_without_options_get_no_rank_metric(default_tasks, model):
    from flan_jax.data.vocab import default_vocabulary
    from flan_jax.train.rank_classification import rank_classification

    kw = dict(split="validation", num_examples=2, batch_size=2,
              lengths={"inputs": 64, "targets": 16})
    assert rank_classification(model, default_vocabulary(), "synth_weekday:zs_noopt",
                               **kw) is None
    assert rank_classification(model, default_vocabulary(), "no_such_task", **kw) is None


def test_summary_averages_accuracy_and_rank_accuracy_per_group():
    from flan_jax.train.evaluate import summary

    results = {"held_in": {"a:zs_opt": {"accuracy": 50.0, "rank_accuracy": 80.0},
                           "a:zs_noopt": {"accuracy": 10.0}},
               "held_out": {"b:zs_noopt": {"accuracy": 0.0}}}
    flat = summary(results)
    assert flat["eval/held_in/accuracy"] == 30.0
    assert flat["eval/held_in/rank_accuracy"] == 80.0
    assert flat["eval/held_in/a:zs_opt/rank_accuracy"] == 80.0
    assert flat["eval/held_out/accuracy"] == 0.0 and "eval/held_out/rank_accuracy" not in flat
