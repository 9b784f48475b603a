"""The decoder-only model: masks against a hand-built reference on packed rows, KV-cache
decoding against the full forward, packing, gradients, dtypes, axes and backends."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from flan_jax import parallel
from flan_jax.model import attention, create_model, get_config, param_axes, params_of
from flan_jax.model.attention import attention_mask
from flan_jax.model.decoder_only import DecoderOnly
from flan_jax.model.losses import token_cross_entropy
from flan_jax.model.params import abstract_model, model_from_params

# What seqio 0.0.20's PrefixLMFeatureConverter(pack=True) gives for
# [{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1]}, {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1]},
#  {"inputs": [5, 1], "targets": [6, 1]}] at lengths {"inputs": 12, "targets": 12} (run once;
# importing TensorFlow costs ~10 s, too much for this file). Note decoder_causal_attention:
# one 1 more than each segment's inputs.
SEQIO_EXAMPLES = [([7, 8, 5, 1], [3, 9, 1]), ([8, 4, 9, 3, 1], [4, 1]), ([5, 1], [6, 1])]
SEQIO_PACKED = {
    "decoder_target_tokens": [7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 5, 1, 6, 1] + [0] * 6,
    "decoder_input_tokens": [0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0, 5, 1, 6] + [0] * 6,
    "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1] + [0] * 6,
    "decoder_segment_ids": [1] * 7 + [2] * 7 + [3] * 4 + [0] * 6,
    "decoder_positions": [*range(7), *range(7), *range(4)] + [0] * 6,
    "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0] + [0] * 6,
}


def decoder_only_config(variant="flan_t5", **overrides):
    overrides = {"vocab_size": 64, "num_decoder_layers": 2, **overrides}
    return get_config(f"{variant}-tiny", architecture="decoder_only", **overrides)


@functools.cache
def tiny_model(variant="flan_t5"):
    cfg = decoder_only_config(variant)
    return cfg, create_model(cfg, seed=3)


@pytest.fixture
def tiny():
    return tiny_model()


@nnx.jit
def forward(model, batch):
    return model(**batch)


def pack(examples, length, rows):
    """Greedy packing of (inputs, targets) pairs in PrefixLMFeatureConverter's layout.

    Returns the int32 features [rows, length] and, per example, (row, slice, inputs length)."""
    names = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
             "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
    f = {k: np.zeros((rows, length), np.int32) for k in names}
    where, row, off, seg = [], 0, 0, 0
    for inputs, targets in examples:
        seq = np.concatenate([inputs, targets])
        if off + len(seq) > length:
            row, off, seg = row + 1, 0, 0
        seg, s, n = seg + 1, slice(off, off + len(seq)), len(seq)
        f["decoder_target_tokens"][row, s] = seq
        f["decoder_input_tokens"][row, s] = np.append(0, seq[:-1])
        f["decoder_loss_weights"][row, s] = np.arange(n) >= len(inputs)
        f["decoder_segment_ids"][row, s] = seg
        f["decoder_positions"][row, s] = np.arange(n)
        f["decoder_causal_attention"][row, s] = np.arange(n) <= len(inputs)
        where.append((row, s, len(inputs)))
        off += n
    assert row < rows
    return f, where


def reference_visibility(where, length, prefix):
    """bool [length, length] for one packed row, from the examples alone: query offset i of an
    example sees key offset j of the same example iff j <= i, or, in a prefix LM, both lie in
    the prefix: offsets 0..len(inputs), the BOS and the inputs of decoder_input_tokens."""
    vis = np.zeros((length, length), bool)
    for _, s, n_inputs in where:
        for i in range(s.stop - s.start):
            for j in range(s.stop - s.start):
                in_prefix = prefix and i <= n_inputs and j <= n_inputs
                vis[s.start + i, s.start + j] = j <= i or in_prefix
    return vis


def random_examples(rng, n, vocab, max_inputs=7, max_targets=5):
    return [(np.append(rng.integers(2, vocab, int(rng.integers(1, max_inputs))), 1),
             np.append(rng.integers(2, vocab, int(rng.integers(1, max_targets))), 1))
            for _ in range(n)]


def test_pack_helper_reproduces_seqio_prefix_lm_features():
    got, _ = pack([(np.array(i), np.array(t)) for i, t in SEQIO_EXAMPLES], 24, 1)
    for name, want in SEQIO_PACKED.items():
        np.testing.assert_array_equal(got[name][0], want, err_msg=name)


@pytest.mark.parametrize("prefix", [False, True], ids=["causal", "prefix"])
def test_masks_match_a_dense_reference_on_packed_rows(tiny, prefix):
    """On a row of 3 packed examples + padding: the mask `attention_mask` builds, and which
    logits change when each token alone changes (2 layers: the mask's closure is itself)."""
    cfg, model = tiny
    rng = np.random.default_rng(0)
    length = 38
    f, where = pack(random_examples(rng, 3, cfg.vocab_size), length, 1)
    assert f["decoder_segment_ids"].max() == 3 and f["decoder_segment_ids"][0, -1] == 0
    want = reference_visibility(where, length, prefix)
    seg, pos = f["decoder_segment_ids"], f["decoder_positions"]
    dca = f["decoder_causal_attention"] > 0 if prefix else None
    got = np.asarray(attention_mask(seg, seg, pos, pos, True, dca, dca))[0, 0]
    np.testing.assert_array_equal(got, want)

    # Row j + 1 changes token j only; row 0 is the original.
    tokens = np.repeat(f["decoder_input_tokens"], length + 1, axis=0)
    for j in range(length):
        tokens[j + 1, j] = 2 + (tokens[j + 1, j] - 1) % (cfg.vocab_size - 2)
    batch = {"decoder_input_tokens": jnp.asarray(tokens),
             "decoder_segment_ids": jnp.asarray(np.repeat(seg, length + 1, 0)),
             "decoder_positions": jnp.asarray(np.repeat(pos, length + 1, 0))}
    if prefix:
        batch["decoder_causal_attention"] = jnp.asarray(
            np.repeat(f["decoder_causal_attention"], length + 1, 0))
    logits = np.asarray(forward(model, batch))
    depends = np.abs(logits[1:] - logits[:1]).max(axis=-1).T > 1e-6  # [query i, changed j]
    live = seg[0] > 0
    np.testing.assert_array_equal(depends[live], want[live])
    if prefix:  # spelled out: the first prefix token reads the last one, never a target
        row, s, n_inputs = where[1]
        assert depends[s.start, s.start + n_inputs]
        assert not depends[s.start:s.start + n_inputs + 1, s.start + n_inputs + 1:s.stop].any()


@pytest.mark.parametrize("variant", ["flan_t5", "t5_1_0"])
@pytest.mark.parametrize("prefix", [False, True], ids=["causal", "prefix"])
def test_prefill_and_decode_steps_reproduce_the_full_forward(variant, prefix):
    """Prompts of 5 and 3 tokens (right-padded to 5) prefilled, then 6 tokens one at a time:
    each step's logits are the full forward's at that position (f32)."""
    cfg, model = tiny_model(variant)
    rng = np.random.default_rng(1)
    lengths, steps, lp = np.array([5, 3]), 6, 5
    seqs = jnp.asarray(rng.integers(2, cfg.vocab_size, (2, lp + steps)))
    dca = jnp.asarray(np.arange(lp + steps)[None] < lengths[:, None], jnp.int32)
    full = forward(model, {"decoder_input_tokens": seqs,
                           **({"decoder_causal_attention": dca} if prefix else {})})

    prefill = nnx.jit(lambda m, t, n: m.prefill(t, lp + steps, prompt_lengths=n, prefix=prefix))
    step = nnx.jit(lambda m, c, t: m.decode_step(c, t))
    prompt = seqs[:, :lp] * (np.arange(lp)[None] < lengths[:, None])  # padding zeroed
    logits, cache = prefill(model, prompt, jnp.asarray(lengths))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(logits[row, :n], full[row, :n], atol=1e-5)
    rows = np.arange(2)
    for i in range(steps):
        logits, cache = step(model, cache, seqs[rows, lengths + i])
        np.testing.assert_allclose(logits, full[rows, lengths + i], atol=1e-5)
    assert int(cache["index"]) == lp + steps
    np.testing.assert_array_equal(cache["next_position"], lengths + steps)


def test_decoding_from_an_empty_cache_is_causal_lm(tiny):
    cfg, model = tiny
    tokens = jnp.asarray(np.random.default_rng(2).integers(2, cfg.vocab_size, (2, 7)))
    full = forward(model, {"decoder_input_tokens": tokens})
    cache = model.init_cache(2, 7)
    step = nnx.jit(lambda m, c, t: m.decode_step(c, t))
    for i in range(7):
        logits, cache = step(model, cache, tokens[:, i])
        np.testing.assert_allclose(logits, full[:, i], atol=1e-5)


@pytest.mark.parametrize("prefix", [False, True], ids=["causal", "prefix"])
def test_packed_rows_give_the_same_logits_as_unpacked(tiny, prefix):
    cfg, model = tiny
    examples = random_examples(np.random.default_rng(3), 8, cfg.vocab_size)
    packed, where = pack(examples, length=32, rows=3)
    assert max(int(r.max()) for r in packed["decoder_segment_ids"]) >= 3
    keys = ["decoder_input_tokens", "decoder_segment_ids", "decoder_positions"]
    keys += ["decoder_causal_attention"] if prefix else []
    logits = np.asarray(forward(model, {k: jnp.asarray(packed[k]) for k in keys}))

    # One example per row, right-padded, no segment ids or positions (defaults).
    rows = [pack([ex], 12, 1)[0] for ex in examples]
    single = {"decoder_input_tokens": np.concatenate([r["decoder_input_tokens"] for r in rows])}
    if prefix:
        single["decoder_causal_attention"] = np.concatenate(
            [r["decoder_causal_attention"] for r in rows])
    want = np.asarray(forward(model, {k: jnp.asarray(v) for k, v in single.items()}))
    for i, (row, s, _) in enumerate(where):
        np.testing.assert_allclose(logits[row, s], want[i, :s.stop - s.start], atol=1e-5)


def test_gradients_reach_every_param_through_rematted_layers(tiny):
    """Loss on a packed prefix-LM batch (targets only); remat="full" checkpoints each layer
    (the same `t5.remat` whose gradients tests/model/test_t5.py checks against no remat)."""
    cfg, model = tiny
    f, _ = pack(random_examples(np.random.default_rng(4), 4, cfg.vocab_size), 24, 2)
    batch = {k: jnp.asarray(f[k]) for k in ("decoder_input_tokens", "decoder_segment_ids",
                                            "decoder_positions", "decoder_causal_attention")}
    targets, weights = jnp.asarray(f["decoder_target_tokens"]), f["decoder_loss_weights"]
    graphdef, state = nnx.split(model_from_params(cfg.replace(remat="full"), params_of(model)))

    def loss(state):
        logits = nnx.merge(graphdef, state)(**batch)
        return (token_cross_entropy(logits, targets) * weights).sum()

    assert "remat" in str(jax.make_jaxpr(jax.grad(loss))(state))
    grads = jax.jit(jax.grad(loss))(state)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_every_param_has_logical_axes_and_shards_with_the_t5_rules(tiny):
    _, model = tiny
    params, axes = params_of(model), param_axes(model)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, tuple)))
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    # embedding, relpos, 2 x (2 norms, q k v o, gated MLP), final norm, logits_dense
    assert len(flat_p) == len(flat_a) == 1 + 1 + 2 * (2 + 4 + 3) + 1 + 1
    for path, value in flat_p:
        names = flat_a[path]
        assert len(names) == value.ndim
        assert set(names) <= {"embed", "mlp", "heads", "kv", "vocab", "relpos_buckets"}, path
    mesh = AbstractMesh((2, 2, 2), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    shardings = parallel.param_shardings(params, axes, parallel.DEFAULT_RULES, mesh)
    assert shardings["layers"][0]["self_attn"]["q"].spec == P("fsdp", "model", None)
    assert shardings["layers"][1]["mlp"]["wo"].spec == P("model", "fsdp")
    assert shardings["token_embedder"]["embedding"].spec == P("model", "fsdp")


def test_bf16_params_and_compute(tiny):
    cfg, model = tiny
    tokens = jnp.asarray(np.random.default_rng(5).integers(2, cfg.vocab_size, (2, 9)))
    dca = jnp.asarray(np.arange(9)[None] < 4, jnp.int32).repeat(2, 0)
    batch = {"decoder_input_tokens": tokens, "decoder_causal_attention": dca}
    ref = forward(model, batch)
    bf16 = model_from_params(cfg.replace(param_dtype="bfloat16", dtype="bfloat16"),
                             params_of(model))
    assert {p.dtype for p in jax.tree.leaves(params_of(bf16))} == {jnp.dtype("bfloat16")}
    mixed = model_from_params(cfg.replace(dtype="bfloat16"), params_of(model))
    out = forward(mixed, batch)
    assert out.dtype == jnp.float32  # logits stay f32
    np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))

    @nnx.jit
    def decode(m, tokens):
        logits, cache = m.prefill(tokens[:, :4], 9, prefix=True)
        step, _ = m.decode_step(cache, tokens[:, 4])
        return logits, cache["layers"][0]["k"].dtype == jnp.bfloat16, step

    logits, cache_is_bf16, step = decode(bf16, tokens)
    assert cache_is_bf16 and logits.dtype == step.dtype == jnp.float32
    np.testing.assert_allclose(step, ref[:, 4], atol=0.1 * float(jnp.abs(ref).max()))


def test_dropout_only_with_rngs(tiny):
    cfg, plain = tiny
    model = model_from_params(cfg.replace(dropout_rate=0.3), params_of(plain))
    x = jnp.asarray(np.random.default_rng(6).integers(2, 64, (2, 9)))
    # rbg keys: XLA:CPU takes ~9 s to compile this model's ten threefry draws, rbg ~1 s.
    run = nnx.jit(lambda m, x, seed: m(x, rngs=None if seed is None else nnx.Rngs(
        dropout=jax.random.key(seed, impl="rbg"))))
    off = run(model, x, None)
    np.testing.assert_allclose(off, run(plain, x, None), atol=1e-6)
    a, b = run(model, x, 0), run(model, x, 1)
    assert not np.allclose(a, b) and not np.allclose(a, off)
    np.testing.assert_array_equal(a, run(model, x, 0))


def test_kernel_backends_run_causal_and_auto_runs_a_prefix_mask(tiny, monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_Q", 16)  # several tiles per row
    monkeypatch.setattr(attention, "BLOCK_K", 16)
    f, _ = pack(random_examples(np.random.default_rng(7), 3, 64, 5, 4), 32, 1)
    batch = {k: jnp.asarray(f[k]) for k in ("decoder_input_tokens", "decoder_segment_ids",
                                            "decoder_positions")}
    cfg, model = tiny
    one_layer = cfg.replace(num_decoder_layers=1)  # the fixture's first layer only
    params = {**params_of(model), "layers": {0: params_of(model)["layers"][0]}}
    xla = model_from_params(one_layer, params)
    kernel = model_from_params(one_layer.replace(attention_backend="pallas_interpret"), params)
    live = f["decoder_segment_ids"] > 0
    np.testing.assert_allclose(np.asarray(forward(kernel, batch))[live],
                               np.asarray(forward(xla, batch))[live], atol=1e-5)
    auto = model_from_params(one_layer.replace(attention_backend="auto"), params)
    batch["decoder_causal_attention"] = jnp.asarray(f["decoder_causal_attention"])
    np.testing.assert_array_equal(forward(auto, batch), forward(xla, batch))  # auto: xla on CPU


def test_create_abstract_and_load_follow_the_architecture(tiny):
    cfg, model = tiny
    assert isinstance(model, DecoderOnly)
    got = abstract_model(cfg)
    want = nnx.eval_shape(lambda: DecoderOnly(cfg, rngs=nnx.Rngs(params=0)))
    assert nnx.graphdef(got) == nnx.graphdef(want)
    assert (jax.tree_util.tree_leaves_with_path(nnx.state(got))
            == jax.tree_util.tree_leaves_with_path(nnx.state(want)))
    assert param_axes(got) == param_axes(model)
    loaded = model_from_params(cfg, params_of(model))
    x = {"decoder_input_tokens": jnp.asarray(np.random.default_rng(8).integers(2, 64, (1, 6)))}
    np.testing.assert_array_equal(forward(loaded, x), forward(model, x))
    assert "encoder" not in params_of(model) and "logits_dense" in params_of(model)
    assert "logits_dense" not in params_of(abstract_model(cfg.replace(tie_embeddings=True)))
    with pytest.raises(ValueError, match="architecture='decoder_only'"):
        DecoderOnly(get_config("tiny"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("backend", ["pallas_interpret", "pallas_tpu_interpret"])
def test_kernel_backends_give_xla_logits_for_a_packed_prefix_lm_batch(tiny, monkeypatch,
                                                                     backend):
    """Both layers of the fixture on 2 packed rows of 3+ examples (decoder_causal_attention,
    padding at the end) with 16-token tiles: a kernel's prefix-LM mask is xla's."""
    monkeypatch.setattr(attention, "BLOCK_Q", 16)  # several tiles per row, prefixes across them
    monkeypatch.setattr(attention, "BLOCK_K", 16)
    cfg, model = tiny
    f, where = pack(random_examples(np.random.default_rng(14), 7, cfg.vocab_size, 12, 5),
                    40, 2)
    assert min(int(r.max()) for r in f["decoder_segment_ids"]) >= 3
    assert (f["decoder_segment_ids"][:, -1] == 0).all()  # padding at the end of each row
    # In both rows a prefix (offsets 0..n_inputs) spans a tile boundary.
    crossing = {row for row, s, n in where for edge in (16, 32) if s.start < edge <= s.start + n}
    assert crossing == {0, 1}
    batch = {k: jnp.asarray(f[k]) for k in ("decoder_input_tokens", "decoder_segment_ids",
                                            "decoder_positions", "decoder_causal_attention")}
    kernel = model_from_params(cfg.replace(attention_backend=backend), params_of(model))
    live = f["decoder_segment_ids"] > 0
    np.testing.assert_allclose(np.asarray(forward(kernel, batch))[live],
                               np.asarray(forward(model, batch))[live], atol=1e-5)
