"""Model behaviour that needs no reference implementation: packing, dtypes, dropout, axes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flan_jax.model import create_model, get_config, param_axes, params_of
from flan_jax.model.losses import token_cross_entropy


@nnx.jit
def forward(model, batch):
    return model(**batch)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("tiny", vocab_size=64, num_decoder_layers=3)
    return cfg, create_model(cfg, seed=3)


def _examples(rng, n, vocab):
    out = []
    for _ in range(n):
        le, ld = int(rng.integers(3, 14)), int(rng.integers(2, 8))
        inputs = np.append(rng.integers(2, vocab, le - 1), 1)
        targets = np.append(rng.integers(2, vocab, ld - 1), 1)
        out.append((inputs, targets))
    return out


def _pack(examples, enc_len, dec_len, rows):
    """Greedy packing into `rows` rows, in seqio's feature layout."""
    f = {k: np.zeros((rows, enc_len if k.startswith("encoder") else dec_len), np.int32)
         for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                   "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
                   "decoder_positions")}
    where = []
    row, e_off, d_off, seg = 0, 0, 0, 0
    for inputs, targets in examples:
        if e_off + len(inputs) > enc_len or d_off + len(targets) > dec_len:
            row, e_off, d_off, seg = row + 1, 0, 0, 0
        seg += 1
        es, ds = slice(e_off, e_off + len(inputs)), slice(d_off, d_off + len(targets))
        f["encoder_input_tokens"][row, es] = inputs
        f["encoder_segment_ids"][row, es] = seg
        f["encoder_positions"][row, es] = np.arange(len(inputs))
        f["decoder_target_tokens"][row, ds] = targets
        f["decoder_input_tokens"][row, ds] = np.append(0, targets[:-1])
        f["decoder_segment_ids"][row, ds] = seg
        f["decoder_positions"][row, ds] = np.arange(len(targets))
        where.append((row, ds))
        e_off, d_off = e_off + len(inputs), d_off + len(targets)
    assert row < rows
    return f, where


def test_packed_rows_give_the_same_per_example_loss_as_unpacked(tiny):
    cfg, model = tiny
    examples = _examples(np.random.default_rng(0), 7, cfg.vocab_size)
    packed, where = _pack(examples, enc_len=40, dec_len=24, rows=4)
    segs_per_row = [int(r.max()) for r in packed["encoder_segment_ids"]]
    assert max(segs_per_row) >= 3, segs_per_row  # rows really hold several examples
    batch = {k: jnp.asarray(v) for k, v in packed.items()}
    targets = batch.pop("decoder_target_tokens")
    nll = np.asarray(token_cross_entropy(forward(model, batch), targets))
    packed_losses = [nll[row, ds].sum() for row, ds in where]

    # The same examples one per row, right-padded, with masks inferred from padding.
    n = len(examples)
    enc, dec_in, tgt = (np.zeros((n, 14), np.int32), np.zeros((n, 8), np.int32),
                        np.zeros((n, 8), np.int32))
    for i, (inputs, targets) in enumerate(examples):
        enc[i, :len(inputs)] = inputs
        tgt[i, :len(targets)] = targets
        dec_in[i, :len(targets)] = np.append(0, targets[:-1])
    logits = forward(model, {"encoder_input_tokens": jnp.asarray(enc),
                             "decoder_input_tokens": jnp.asarray(dec_in)})
    nll = np.asarray(token_cross_entropy(logits, jnp.asarray(tgt))) * (tgt != 0)
    np.testing.assert_allclose(packed_losses, nll.sum(axis=1), rtol=1e-5)


def test_every_param_has_one_logical_axis_name_per_dim(tiny):
    _, model = tiny
    params, axes = params_of(model), param_axes(model)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, tuple)))
    assert len(flat_p) == len(flat_a)
    known = {"embed", "mlp", "heads", "kv", "vocab", "relpos_buckets"}
    for path, value in flat_p:
        names = flat_a[path]
        assert len(names) == value.ndim and set(names) <= known, (path, names)


def test_param_and_compute_dtypes(tiny):
    cfg, model = tiny
    x = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9)))
    y = jnp.zeros((2, 5), jnp.int32)
    ref = model(x, y)
    bf16 = create_model(cfg.replace(param_dtype="bfloat16", dtype="bfloat16"), seed=3)
    assert {p.dtype for p in jax.tree.leaves(params_of(bf16))} == {jnp.dtype("bfloat16")}
    mixed = create_model(cfg.replace(dtype="bfloat16"), seed=3)
    assert {p.dtype for p in jax.tree.leaves(params_of(mixed))} == {jnp.dtype("float32")}
    out = mixed(x, y)
    assert out.dtype == jnp.float32  # logits stay f32
    assert mixed.encode(x).dtype == jnp.bfloat16
    np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))


def test_dropout_only_with_rngs(tiny):
    cfg, _ = tiny
    model = create_model(cfg.replace(dropout_rate=0.3), seed=3)
    x = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9)))
    y = jnp.zeros((2, 5), jnp.int32)
    np.testing.assert_array_equal(model(x, y), model(x, y))
    a = model(x, y, rngs=nnx.Rngs(dropout=0))
    b = model(x, y, rngs=nnx.Rngs(dropout=1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, model(x, y, rngs=nnx.Rngs(dropout=0)))


def test_forward_and_grad_under_jit(tiny):
    cfg, model = tiny
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9)))
    y = jnp.asarray(np.random.default_rng(1).integers(2, cfg.vocab_size, (2, 5)))

    @jax.jit
    def loss_fn(state):
        m = nnx.merge(graphdef, state)
        return token_cross_entropy(m(x, jnp.zeros_like(y)), y).mean()

    grads = jax.grad(loss_fn)(state)
    norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms)


@functools.cache
def _remat_value_and_grad(remat):
    """Loss, grads and jaxpr of one layer each side with dropout (jitted: op by op took a
    minute; one layer per stack halves the compile, the remat wrapping is per layer)."""
    x = jnp.asarray(np.random.default_rng(0).integers(2, 500, (2, 12)), jnp.int32)
    y = jnp.asarray(np.random.default_rng(1).integers(2, 500, (2, 5)), jnp.int32)
    cfg = get_config("tiny", remat=remat, dropout_rate=0.1, num_encoder_layers=1,
                     num_decoder_layers=1)
    graphdef, state = nnx.split(create_model(cfg, seed=0))

    def loss(state):
        logits = nnx.merge(graphdef, state)(x, y, rngs=nnx.Rngs(dropout=jax.random.key(0)))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])
    fn = jax.value_and_grad(loss)
    return jax.jit(fn)(state), str(jax.make_jaxpr(fn)(state))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_recomputes_layers_without_changing_loss_or_gradients(policy):
    (want, want_grads), plain = _remat_value_and_grad("none")
    (got, got_grads), rematted = _remat_value_and_grad(policy)
    assert "remat" not in plain and "remat" in rematted  # the checkpoint is really there
    assert got == pytest.approx(float(want), rel=1e-6)  # dropout masks too are the same
    for a, b in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_remat_policy_is_named():
    from flan_jax.model import get_config

    with pytest.raises(ValueError, match="T5Config.remat='some'"):
        get_config("tiny", remat="some")
