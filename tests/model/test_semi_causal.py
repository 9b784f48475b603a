"""METALM's semi-causal model: span layout, a zero-width span is the causal decoder, spans
are encoded apart and only their own tokens reach them, the loss ignores encoded positions,
KV-cache decoding reproduces the full forward (both connectors)."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flan_jax.data.reader.packing import pack
from flan_jax.model import create_model, get_config, param_axes, params_of
from flan_jax.model.decoder_only import DecoderOnly
from flan_jax.model.params import abstract_model
from flan_jax.model.semi_causal import SemiCausal, span_layout
from flan_jax.model.losses import token_losses
from flan_jax.train.step import forward

CONNECTORS = ("linear", "pooled")


def semi_causal_config(connector="linear", **overrides):
    overrides = {"vocab_size": 64, "num_decoder_layers": 2, "num_encoder_layers": 1,
                 "connector": connector, "connector_tokens": 2, **overrides}
    return get_config("tiny", architecture="semi_causal", **overrides)


@functools.cache
def tiny_model(connector="linear"):
    cfg = semi_causal_config(connector)
    return cfg, create_model(cfg, seed=5)


@nnx.jit
def run(model, batch):
    return forward(model, batch)


EXAMPLES = [([7, 8, 5, 1], [3, 9, 1]), ([8, 4, 9, 3, 1], [4, 1]), ([5, 1], [6, 1])]


def packed(examples=EXAMPLES, length=24):
    return {k: jnp.asarray(v) for k, v in pack(examples, length // 2, length - length // 2,
                                                "semi_causal").items()}


def test_span_layout_numbers_runs_within_segments_and_counts_back_from_their_ends():
    span = np.array([[0, 1, 1, 1, 0, 1, 1, 0, 1, 1]])
    seg = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])  # a run cut by a segment; padding last
    ids, rank = span_layout(jnp.asarray(span), jnp.asarray(seg))
    np.testing.assert_array_equal(ids, [[0, 1, 1, 1, 0, 2, 3, 0, 4, 0]])
    np.testing.assert_array_equal(rank, [[0, 2, 1, 0, 0, 0, 0, 0, 0, 0]])


def test_semi_causal_features_mark_each_examples_inputs():
    f = {k: np.asarray(v)[0] for k, v in packed().items()}
    # decoder_input_tokens: [0, 7, 8, 5, 1, 3, 9 | 0, 8, 4, 9, 3, 1, 4 | 0, 5, 1, 6 | pad]
    np.testing.assert_array_equal(
        f["decoder_encoded_span"],
        [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0] + [0] * 6)
    # the loss never falls on an encoded position except the last, which predicts a target
    span = f["decoder_encoded_span"] > 0
    ends = span & ~np.append(span[1:], False)
    assert not (f["decoder_loss_weights"][span & ~ends]).any()
    assert f["decoder_loss_weights"][ends].all()
    assert "decoder_causal_attention" not in f


@pytest.mark.parametrize("connector", CONNECTORS)
def test_a_zero_width_span_is_the_causal_decoder(connector):
    """No encoded position: the logits are those of a DecoderOnly with the same decoder params."""
    cfg, model = tiny_model(connector)
    decoder = create_model(cfg.replace(architecture="decoder_only"), seed=0)
    ours = params_of(model)
    nnx.update(decoder, {k: ours[k] for k in params_of(decoder)})
    batch = packed()
    batch.pop("decoder_encoded_span")
    common = {k: batch[k] for k in ("decoder_input_tokens", "decoder_segment_ids",
                                    "decoder_positions")}
    want = run(decoder, common)
    np.testing.assert_allclose(run(model, common), want, atol=1e-6)
    zero = {**common, "decoder_encoded_span": jnp.zeros_like(batch["decoder_input_tokens"])}
    np.testing.assert_allclose(run(model, zero), want, atol=1e-6)


@pytest.mark.parametrize("connector", CONNECTORS)
def test_spans_are_encoded_apart_and_the_decoder_stays_causal(connector):
    """Which logits change when each token alone changes, against the rule: the decoder input
    at p depends on token p, or on its whole span if p is encoded; query i reads its own
    input and the visible keys p <= i of its segment (the pooled connector hides a span's
    positions before its last k)."""
    cfg, model = tiny_model(connector)
    batch = packed()
    length = batch["decoder_input_tokens"].shape[1]
    variants = np.repeat(np.asarray(batch["decoder_input_tokens"]), length + 1, axis=0)
    for j in range(length):
        variants[j + 1, j] = 2 + (variants[j + 1, j] - 1) % (cfg.vocab_size - 2)
    rows = {k: jnp.repeat(v, length + 1, axis=0) for k, v in batch.items()}
    rows["decoder_input_tokens"] = jnp.asarray(variants)
    logits = np.asarray(run(model, rows))
    depends = np.abs(logits[1:] - logits[:1]).max(axis=-1).T > 1e-6  # [query i, changed j]

    seg = np.asarray(batch["decoder_segment_ids"])[0]
    ids, rank = (np.asarray(a)[0] for a in span_layout(batch["decoder_encoded_span"],
                                                       batch["decoder_segment_ids"]))
    hidden = (ids > 0) & (rank >= cfg.connector_tokens) if connector == "pooled" else ids < 0
    index = np.arange(length)
    reads = (ids[:, None] > 0) & (ids[:, None] == ids[None, :]) | (index[:, None] == index)
    sees = (seg[:, None] == seg[None, :]) & (index[None, :] <= index[:, None]) & ~hidden
    sees |= np.eye(length, dtype=bool)
    want = (sees.astype(int) @ reads.astype(int)) > 0
    live = seg > 0
    np.testing.assert_array_equal(depends[live][:, live], want[live][:, live])
    assert (ids.max(), seg.max()) == (3, 3)  # three segments, a span each
    if connector == "pooled":
        assert hidden.any()


@pytest.mark.parametrize("connector", CONNECTORS)
def test_the_loss_ignores_the_encoded_span(connector):
    """Targets under encoded positions (but the last, which predicts the first target) carry
    no loss: changing them leaves loss and gradients as they were."""
    cfg, model = tiny_model(connector)
    batch = packed()
    span = np.asarray(batch["decoder_encoded_span"]) > 0
    ends = span & ~np.concatenate([span[:, 1:], np.zeros_like(span[:, :1])], axis=1)
    other = np.asarray(batch["decoder_target_tokens"]).copy()
    other[span & ~ends] = 2 + other[span & ~ends] % (cfg.vocab_size - 2)

    def loss(targets):
        per_token, _ = token_losses(forward(model, batch), targets)
        return float(jnp.sum(per_token * batch["decoder_loss_weights"]))

    assert loss(jnp.asarray(other)) == loss(batch["decoder_target_tokens"])
    assert not np.asarray(batch["decoder_loss_weights"])[span & ~ends].any()


@pytest.mark.parametrize("connector", CONNECTORS)
def test_prefill_and_decode_steps_reproduce_the_full_forward(connector):
    """Prompts [start, inputs] of 6 and 3 live tokens prefilled (the inputs encoded), then 5
    tokens one at a time: each step's logits are the full forward's at that position."""
    cfg, model = tiny_model(connector)
    rng = np.random.default_rng(1)
    lengths, steps, lp = np.array([6, 3]), 5, 6
    seqs = rng.integers(2, cfg.vocab_size, (2, lp + steps))
    seqs[:, 0] = 0
    index = np.arange(lp + steps)[None]
    span = jnp.asarray((index >= 1) & (index < lengths[:, None]), jnp.int32)
    full = run(model, {"decoder_input_tokens": jnp.asarray(seqs), "decoder_encoded_span": span})
    prefill = nnx.jit(lambda m, t, n: m.prefill(t, lp + steps, prompt_lengths=n))
    step = nnx.jit(lambda m, c, t: m.decode_step(c, t))
    prompt = jnp.asarray(seqs[:, :lp] * (np.arange(lp)[None] < lengths[:, None]))
    logits, cache = prefill(model, prompt, jnp.asarray(lengths))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(logits[row, n - 1], full[row, n - 1], atol=1e-5)
    rows = np.arange(2)
    for i in range(steps):
        logits, cache = step(model, cache, jnp.asarray(seqs[rows, lengths + i]))
        np.testing.assert_allclose(logits, full[rows, lengths + i], atol=1e-5)


@pytest.mark.parametrize("connector", CONNECTORS)
def test_params_have_axes_and_the_abstract_model_matches(connector):
    cfg, model = tiny_model(connector)
    assert isinstance(model, SemiCausal) and isinstance(model, DecoderOnly)
    axes = param_axes(model)
    flat_params = params_of(model)
    abstract = params_of(abstract_model(cfg))
    assert set(flat_params) == set(abstract) == set(axes)
    extra = {"encoder_layers", "encoder_relpos", "encoder_norm"} | (
        {"connector"} if connector == "linear" else {"connector_queries", "connector_pool"})
    assert extra <= set(flat_params)


@pytest.mark.parametrize("connector", CONNECTORS)
def test_the_kernel_backend_gives_xlas_logits(connector):
    """Encoder over span ids, pooling, and a decoder whose keys differ from its queries (the
    pooled connector hides positions): the Pallas kernel (interpret mode) agrees with xla."""
    cfg, model = tiny_model(connector)
    kernel = create_model(cfg.replace(attention_backend="pallas_interpret"), seed=5)
    batch = packed()
    live = np.asarray(batch["decoder_segment_ids"]) > 0
    want, got = np.asarray(run(model, batch)), np.asarray(run(kernel, batch))
    np.testing.assert_allclose(got[live], want[live], atol=2e-5, rtol=1e-5)
