"""flan_jax.kernels flash attention (interpret mode) against the model's `xla` attention.

Inputs are fresh random draws each run (the seed is printed on failure). Outputs and the
gradients wrt q, k, v and the relative position bias table must match the reference, which
builds the dense [b, h, lq, lk] bias from the bucket table directly.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flan_jax.kernels import flash_attention
from flan_jax.model import attention, create_model, get_config
from flan_jax.model.attention import (attention_mask, dot_product_attention, prepare_attention,
                                      relative_bias_vector)
from flan_jax.model.layers import RelativePositionBias, relative_position_bucket
from flan_jax.model.losses import mean_cross_entropy

TOL = {"float32": 1e-5, "bfloat16": 1e-2}


@pytest.fixture
def rng():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")  # pytest shows it when the test fails
    return np.random.default_rng(seed)


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.all(np.isfinite(got)), "non-finite values"
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _odd_length(rng, block: int) -> int:
    """2-3 blocks and a bit (65..127 for 32), never a multiple of the block: padded inside."""
    return int(block * rng.integers(2, 4) + rng.integers(1, block))


def _segments(rng, b: int, length: int, n_segments: int, pad: bool):
    """Segment ids 1..n in consecutive runs (then padding) and positions restarting per run."""
    seg, pos = np.zeros((b, length), np.int32), np.zeros((b, length), np.int32)
    for row in range(b):
        used = int(length * rng.uniform(0.6, 0.9)) if pad else length
        cuts = np.sort(rng.choice(np.arange(1, used), n_segments - 1, replace=False))
        for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, used])):
            seg[row, lo:hi] = i + 1
            pos[row, lo:hi] = np.arange(hi - lo)
    return jnp.asarray(seg), jnp.asarray(pos)


# name: (self-attention?, bias: None / "bidirectional" / "causal", segments, padding,
#        head_dim, (num_buckets, max_distance))
CASES = {
    "encoder_self": (True, "bidirectional", 1, True, 64, (32, 128)),
    "decoder_self": (True, "causal", 1, True, 128, (32, 128)),
    "cross": (False, None, 1, True, 128, None),
    "packed_encoder_clipped": (True, "bidirectional", 3, True, 128, (32, 24)),
    "packed_decoder_clipped": (True, "causal", 4, True, 64, (32, 24)),
    "packed_cross": (False, None, 3, True, 64, None),
}


def _case_inputs(rng, name: str, dtype: str):
    self_attn, bias, n_seg, pad, d, buckets = CASES[name]
    b, h = 2, 2
    block_q, block_k = (16, 32) if rng.integers(2) else (32, 16)
    lq = _odd_length(rng, 32)
    lk = lq if self_attn else _odd_length(rng, 32)
    q_seg, q_pos = _segments(rng, b, lq, n_seg, pad)
    kv_seg, kv_pos = (q_seg, q_pos) if self_attn else _segments(rng, b, lk, n_seg, pad)
    if not self_attn:
        kv_pos = jnp.zeros_like(kv_pos)  # what the model passes for cross-attention
    q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), dtype) for n in (lq, lk, lk))
    relpos = None
    if bias is not None:
        nb, md = buckets
        cfg = get_config("tiny", num_heads=h, relative_attention_num_buckets=nb,
                         relative_attention_max_distance=md)
        relpos = RelativePositionBias(cfg, bidirectional=bias == "bidirectional",
                                      rngs=nnx.Rngs(int(rng.integers(1 << 30))))
        relpos.embedding[...] = jnp.asarray(rng.normal(size=(h, nb)), jnp.float32)
    masks = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos,
                 kv_positions=kv_pos, causal=bias == "causal")
    return (q, k, v), relpos, masks, (block_q, block_k)


def _with_table(relpos, table):
    if relpos is None:
        return None
    graphdef, state = nnx.split(relpos)
    nnx.replace_by_pure_dict(state, {"embedding": table})
    return nnx.merge(graphdef, state)


def _reference(qkv, table, relpos, masks):
    inputs = prepare_attention(**masks, relpos=_with_table(relpos, table), backend="xla")
    return dot_product_attention(*qkv, inputs)


def _kernel(qkv, table, relpos, masks, blocks):
    relpos = _with_table(relpos, table)
    vec = None if relpos is None else relative_bias_vector(relpos)
    return flash_attention(*qkv, **masks, bias=vec,
                           max_distance=0 if relpos is None else relpos.max_distance,
                           block_q=blocks[0], block_k=blocks[1], mode="interpret")


def _live_rows(masks):
    """bool [b, lq]: query rows with at least one key to attend to (others are padding)."""
    m = attention_mask(masks["q_segment_ids"], masks["kv_segment_ids"], masks["q_positions"],
                       masks["kv_positions"], masks["causal"])
    return np.asarray(m[:, 0].any(axis=-1))


def _value_and_grads(fn, cotangent):
    def f(q, k, v, table):
        out = fn((q, k, v), table)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


# Every case in f32; bf16 for one of each kind (causal bias, bidirectional bias, no bias).
@pytest.mark.parametrize("name,dtype", [(name, "float32") for name in CASES] + [
    ("decoder_self", "bfloat16"), ("packed_encoder_clipped", "bfloat16"),
    ("packed_cross", "bfloat16")])
def test_kernel_matches_xla_reference_forward_and_gradients(rng, name, dtype):
    qkv, relpos, masks, blocks = _case_inputs(rng, name, dtype)
    assert_matches_reference(rng, qkv, relpos, masks, dtype,
                             lambda qkv, t: _kernel(qkv, t, relpos, masks, blocks))


def assert_matches_reference(rng, qkv, relpos, masks, dtype, kernel):
    """`kernel((q, k, v), table)` gives xla's output on live rows and xla's gradients wrt
    q, k, v and the bias table (shared with the TPU kernel's tests)."""
    table = (jnp.zeros((1, 1), jnp.float32) if relpos is None
             else relpos.embedding[...])
    live = _live_rows(masks)
    assert live.any() and not live.all()  # padding rows are present, and real ones
    # The loss ignores padding rows, as the model's does (their outputs differ: see below).
    cotangent = jnp.asarray(rng.normal(size=qkv[0].shape) * live[:, :, None, None], dtype)

    (_, out), grads = _value_and_grads(kernel, cotangent)(*qkv, table)
    (_, want), want_grads = _value_and_grads(
        lambda qkv, t: _reference(qkv, t, relpos, masks), cotangent)(*qkv, table)
    assert out.shape == want.shape and out.dtype == want.dtype
    assert np.all(np.isfinite(np.asarray(out, np.float32)))  # padding rows too
    tol = TOL[dtype]
    err = _rel_err(out[live], want[live])
    assert err <= tol, ("output", err)
    for gname, got, ref in zip(("dq", "dk", "dv", "dtable"), grads, want_grads):
        assert got.shape == ref.shape, gname
        assert _rel_err(got, ref) <= tol, (gname, _rel_err(got, ref))
    if relpos is not None:
        assert float(jnp.abs(want_grads[3]).sum()) > 0  # the table gradient is really checked
    else:
        assert float(jnp.abs(grads[3]).sum()) == 0


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 12), (16, 40), (64, 256)])
def test_buckets_saturate_at_max_distance(bidirectional, num_buckets, max_distance):
    """The kernel clips offsets to [-max_distance, max_distance]: that must not change buckets."""
    rel = jnp.arange(-8 * max_distance, 8 * max_distance + 1, dtype=jnp.int32)
    kw = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    clipped = jnp.clip(rel, -max_distance, max_distance)
    np.testing.assert_array_equal(relative_position_bucket(rel, **kw),
                                  relative_position_bucket(clipped, **kw))


def test_rows_with_nothing_to_attend_output_zero_and_pass_no_gradient(rng):
    qkv, relpos, masks, blocks = _case_inputs(rng, "packed_encoder_clipped", "float32")
    assert_dead_rows_are_zero(rng, qkv, relpos, masks,
                              lambda qkv, t, masks: _kernel(qkv, t, relpos, masks, blocks))


def assert_dead_rows_are_zero(rng, qkv, relpos, masks, kernel):
    """Rows with nothing to attend to (padding, or a segment with no keys) output exactly 0
    and pass no gradient, whatever their cotangent; the reference averages v over all keys
    there instead. Live rows and all gradients (loss on live rows) match the reference.
    `kernel((q, k, v), table, masks)`; shared with the TPU kernel's tests."""
    kv_seg = masks["kv_segment_ids"]
    masks = {**masks, "kv_segment_ids": jnp.where(kv_seg == 1, 0, kv_seg)}  # hide segment 1
    live = _live_rows(masks)
    assert (~live & (np.asarray(masks["q_segment_ids"]) == 1)).any()
    table = relpos.embedding[...]
    everywhere = jnp.asarray(rng.normal(size=qkv[0].shape), jnp.float32)
    cotangent = everywhere * live[:, :, None, None]
    fn = functools.partial(kernel, masks=masks)
    (_, out), grads = _value_and_grads(fn, everywhere)(*qkv, table)
    assert np.all(np.asarray(out)[~live] == 0)
    (_, out), live_grads = _value_and_grads(fn, cotangent)(*qkv, table)
    for g, lg in zip(grads, live_grads):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(lg))
    (_, want), want_grads = _value_and_grads(
        lambda qkv, t: _reference(qkv, t, relpos, masks), cotangent)(*qkv, table)
    assert _rel_err(out[live], want[live]) <= 1e-5
    for got, ref in zip(live_grads, want_grads):
        assert _rel_err(got, ref) <= 1e-5


def test_kernel_backends_carry_no_dense_bias():
    cfg = get_config("tiny", num_heads=2)
    relpos = RelativePositionBias(cfg, bidirectional=False, rngs=nnx.Rngs(0))
    seg = jnp.ones((1, 300), jnp.int32)
    pos = jnp.arange(300, dtype=jnp.int32)[None]
    inputs = prepare_attention(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos,
                               kv_positions=pos, causal=True, relpos=relpos,
                               backend="pallas_interpret")
    assert inputs.dense_bias is None and inputs.causal
    assert inputs.bias_vector.shape == (2, 2 * cfg.relative_attention_max_distance + 1)
    assert inputs.q_prefix is None and inputs.kv_prefix is None
    prefix = pos < 40
    inputs = prepare_attention(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos,
                               kv_positions=pos, causal=True, relpos=relpos,
                               backend="pallas_interpret", q_prefix=prefix, kv_prefix=prefix)
    assert inputs.dense_bias is None and inputs.q_prefix is inputs.kv_prefix is prefix
    assert attention.resolve_backend("auto") == "xla"  # on CPU
    with pytest.raises(ValueError, match="pallas_interpret"):
        attention.resolve_backend("pallas_triton")


def test_pallas_backend_on_cpu_fails_loudly():
    q = jnp.zeros((1, 8, 2, 16))
    seg = jnp.ones((1, 8), jnp.int32)
    inputs = prepare_attention(q_segment_ids=seg, kv_segment_ids=seg, q_positions=seg,
                               kv_positions=seg, causal=False, relpos=None, backend="pallas")
    with pytest.raises(ValueError, match="attention_backend='pallas' needs a GPU or a TPU"):
        dot_product_attention(q, q, q, inputs)


def test_forward_backward_memory_grows_linearly_with_length():
    """No [lq, lk] bias, mask, probabilities or bias gradient: compiled temporaries of
    forward+backward (incl. the bias-vector gradient) double when the length doubles."""
    def temp_mib(length):
        h, m = 2, 128
        q = jnp.zeros((1, length, h, 64), jnp.float32)
        seg = jnp.ones((1, length), jnp.int32)
        pos = jnp.arange(length, dtype=jnp.int32)[None]

        def loss(q, k, v, vec):
            return flash_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                   q_positions=pos, kv_positions=pos, bias=vec, causal=True,
                                   max_distance=m).sum()

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        stats = grads.lower(q, q, q, jnp.zeros((h, 2 * m + 1))).compile().memory_analysis()
        return stats.temp_size_in_bytes / 2**20

    small, large = temp_mib(1024), temp_mib(2048)
    assert large / small < 2.5, (small, large)  # quadratic would be ~4
    assert large < 2 * 2048 * 2048 * 4 / 2**20  # less than one [h, L, L] f32 tensor


@pytest.mark.parametrize("dtype,head_dim,with_bias,causal,prefix", [
    ("bfloat16", 64, True, True, False), ("float32", 128, False, False, False),
    ("bfloat16", 64, True, True, True)])
def test_triton_lowering_builds_for_cuda(dtype, head_dim, with_bias, causal, prefix):
    """Forward and both backward kernels lower to Triton (cross-platform lowering on CPU).

    This checks Pallas' Triton lowering of every op the kernels use (gathers of the bias
    vector, atomic scatter-adds of its gradient, dots, loops, the prefix flags' bit ops);
    compiling and running need a GPU.
    """
    lq, lk, h = 200, 77, 2
    q, k = jnp.zeros((1, lq, h, head_dim), dtype), jnp.zeros((1, lk, h, head_dim), dtype)
    qs, ks = jnp.ones((1, lq), jnp.int32), jnp.ones((1, lk), jnp.int32)
    vec = jnp.zeros((h, 2 * 128 + 1)) if with_bias else None
    flags = dict(q_prefix=qs, kv_prefix=ks) if prefix else {}

    def loss(q, k, v):
        out = flash_attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, q_positions=qs,
                              kv_positions=ks, bias=vec, causal=causal, block_q=64,
                              block_k=64, mode="triton", **flags)
        return out.astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(
        lowering_platforms=("cuda",))
    assert lowered.as_text().count("xla.gpu.triton") == 3  # forward, dk/dv, dq


def test_tiny_t5_loss_and_gradients_match_between_pallas_interpret_and_xla(rng, monkeypatch):
    assert_tiny_t5_matches_xla(rng, monkeypatch, "pallas_interpret")


def assert_tiny_t5_matches_xla(rng, monkeypatch, backend):
    """A whole T5 (packed, padded rows) gives xla's loss and gradients with `backend`
    (shared with the TPU kernel's tests)."""
    monkeypatch.setattr(attention, "BLOCK_Q", 16)  # several tiles per row
    monkeypatch.setattr(attention, "BLOCK_K", 16)
    cfg = get_config("tiny", vocab_size=64, num_encoder_layers=1, num_decoder_layers=1)
    seed = int(rng.integers(1 << 30))
    b, le, ld = 2, 37, 21
    enc_seg, enc_pos = _segments(rng, b, le, 3, pad=True)
    dec_seg, dec_pos = _segments(rng, b, ld, 3, pad=True)
    batch = dict(
        encoder_input_tokens=jnp.asarray(rng.integers(2, cfg.vocab_size, (b, le))) * (enc_seg > 0),
        decoder_input_tokens=jnp.asarray(rng.integers(2, cfg.vocab_size, (b, ld))),
        encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg,
        encoder_positions=enc_pos, decoder_positions=dec_pos)
    targets = jnp.asarray(rng.integers(2, cfg.vocab_size, (b, ld)))
    weights = (dec_seg > 0).astype(jnp.float32)

    def loss_and_grad(backend):
        # Same seed, same weights; the backend is part of the static config.
        graphdef, state = nnx.split(create_model(cfg.replace(attention_backend=backend), seed))

        @jax.jit
        def f(s):
            logits = nnx.merge(graphdef, s)(**batch)
            return mean_cross_entropy(logits, targets, weights)
        return jax.value_and_grad(f)(state)

    loss, grads = loss_and_grad(backend)
    want, want_grads = loss_and_grad("xla")
    assert np.isfinite(float(loss))
    assert abs(float(loss) - float(want)) <= 1e-5 * abs(float(want))
    flat, flat_want = jax.tree.leaves(grads), jax.tree.leaves(want_grads)
    assert len(flat) == len(flat_want) > 10
    for got, ref in zip(flat, flat_want):
        assert _rel_err(got, ref) <= 1e-4
    for stack in ("encoder", "decoder"):  # the bias tables get their gradient through the kernel
        assert float(jnp.abs(grads[stack]["relpos"]["embedding"][...]).sum()) > 0


def test_auto_picks_the_kernel_on_gpu_unless_attention_dropout_is_on(monkeypatch):
    """runs/train.gin trains with dropout 0.1: 'auto' must not pick a kernel that raises
    on attention dropout."""
    from flan_jax.model.t5 import stack_backend

    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    assert attention.resolve_backend("auto") == "pallas"
    assert attention.resolve_backend("auto", attention_dropout=True) == "xla"
    assert attention.resolve_backend("pallas", attention_dropout=True) == "pallas"  # as asked
    assert attention.resolve_backend("auto", prefix_mask=True) == "pallas"  # prefix LMs too
    assert attention.resolve_backend("pallas", prefix_mask=True) == "pallas"
    cfg = get_config("tiny", attention_backend="auto", dropout_rate=0.1)
    assert stack_backend(cfg, nnx.Rngs(dropout=0)) == "xla"  # training with dropout
    assert stack_backend(cfg, None) == "pallas"  # evaluation / decoding: no dropout
    assert stack_backend(cfg.replace(dropout_rate=0.0), nnx.Rngs(dropout=0)) == "pallas"


# Prefix LM (seqio's decoder_causal_attention): two packed rows of length 70 (not a multiple of
# 16 or 32), (segment length, prefix length) per segment, then padding. Prefixes of 0 (row 0's
# first: plain causal) up to a whole segment (row 1's last); row 0's second and third prefixes
# cross the block boundaries 16 and 48, row 1's first crosses 16 and 32, so with 16 x 16,
# 16 x 32 and 32 x 16 tiles some tiles wholly in the causal future hold live prefix pairs.
PREFIX_ROWS = ([(14, 0), (25, 9), (20, 12)], [(40, 35), (9, 3), (12, 12)])
PREFIX_LENGTH = 70


def prefix_lm_masks():
    """Segment ids, positions and bool prefix flags [2, 70] of PREFIX_ROWS, as `masks`
    (keyword arguments of flash_attention / prepare_attention), and the hand-built
    visibility bool [2, 70, 70]: same segment, and key offset <= query offset or both in the
    prefix."""
    shape = (len(PREFIX_ROWS), PREFIX_LENGTH)
    seg, pos, pre = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, bool)
    visible = np.zeros(shape + (PREFIX_LENGTH,), bool)
    for row, segments in enumerate(PREFIX_ROWS):
        start = 0
        for i, (n, n_prefix) in enumerate(segments):
            s = slice(start, start + n)
            seg[row, s], pos[row, s] = i + 1, np.arange(n)
            pre[row, start:start + n_prefix] = True
            off = np.arange(n)
            in_prefix = off < n_prefix
            visible[row, s, s] = (off[None, :] <= off[:, None]) | (in_prefix[:, None]
                                                                  & in_prefix[None, :])
            start += n
        assert start < PREFIX_LENGTH  # padding at the end
    masks = dict(q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg),
                 q_positions=jnp.asarray(pos), kv_positions=jnp.asarray(pos), causal=True,
                 q_prefix=jnp.asarray(pre), kv_prefix=jnp.asarray(pre))
    return masks, visible


def _dense_prefix_reference(qkv, vec, masks, max_distance):
    """The xla backend on `attention_mask` (prefix included) + the bias vector, gathered
    densely: vec[:, clip(kv_pos - q_pos) + M] (so its gradient is checked per offset)."""
    mask = attention_mask(masks["q_segment_ids"], masks["kv_segment_ids"],
                          masks["q_positions"], masks["kv_positions"], True,
                          masks["q_prefix"], masks["kv_prefix"])  # [b, 1, lq, lk]
    m = max_distance
    offsets = masks["kv_positions"][:, None, :] - masks["q_positions"][:, :, None]
    bias = vec[:, jnp.clip(offsets, -m, m) + m].transpose(1, 0, 2, 3)  # [b, h, lq, lk]
    inputs = attention.AttentionInputs(dense_bias=jnp.where(mask, bias, attention.MASK_VALUE))
    return dot_product_attention(*qkv, inputs)


def assert_prefix_lm_matches_reference(rng, kernel, max_distance=24):
    """`kernel((q, k, v), vec, masks)` on PREFIX_ROWS (f32, causal bias vector clipped at
    max_distance < the longest segment) gives the dense reference's output on live rows and
    its gradients wrt q, k, v and the bias vector (shared with the TPU kernel's tests)."""
    masks, visible = prefix_lm_masks()
    np.testing.assert_array_equal(np.asarray(attention_mask(
        *(masks[n] for n in ("q_segment_ids", "kv_segment_ids", "q_positions",
                             "kv_positions")), True, masks["q_prefix"],
        masks["kv_prefix"]))[:, 0], visible)  # the reference's mask is the layout's
    b, h, d = len(PREFIX_ROWS), 2, 64
    qkv = tuple(jnp.asarray(rng.normal(size=(b, PREFIX_LENGTH, h, d)), jnp.float32)
                for _ in range(3))
    vec = jnp.asarray(rng.normal(size=(h, 2 * max_distance + 1)), jnp.float32)
    live = np.asarray(masks["q_segment_ids"]) > 0
    cotangent = jnp.asarray(rng.normal(size=qkv[0].shape) * live[:, :, None, None],
                            jnp.float32)

    def value_and_grads(fn):
        def f(q, k, v, vec):
            out = fn((q, k, v), vec)
            return jnp.sum(out * cotangent), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(*qkv, vec)

    (_, out), grads = value_and_grads(lambda qkv, vec: kernel(qkv, vec, masks))
    (_, want), want_grads = value_and_grads(
        lambda qkv, vec: _dense_prefix_reference(qkv, vec, masks, max_distance))
    assert _rel_err(out[live], want[live]) <= TOL["float32"], "output"
    for gname, got, ref in zip(("dq", "dk", "dv", "dvec"), grads, want_grads):
        assert _rel_err(got, ref) <= TOL["float32"], (gname, _rel_err(got, ref))
    # Future prefix keys reach the bias gradient at positive (and clipped) offsets.
    assert float(jnp.abs(want_grads[3][:, max_distance + 1:]).min()) > 0


def assert_prefix_lm_attends_where_the_layout_says(rng, kernel):
    """With v = the identity (value j = e_j), the kernel's output rows are its attention
    probabilities: nonzero exactly where PREFIX_ROWS' hand-built visibility says, so a prefix
    query reads the later prefix keys of its own segment, never a later non-prefix key,
    never another segment or padding. `kernel((q, k, v), masks)`, no bias."""
    masks, visible = prefix_lm_masks()
    b, h, d = len(PREFIX_ROWS), 2, 128  # d >= length: room for the identity
    q, k = (jnp.asarray(0.1 * rng.normal(size=(b, PREFIX_LENGTH, h, d)), jnp.float32)
            for _ in range(2))
    v = jnp.broadcast_to(jnp.eye(PREFIX_LENGTH, d)[None, :, None, :], (b, PREFIX_LENGTH, h, d))
    probs = np.asarray(jax.jit(lambda q, k, v: kernel((q, k, v), masks))(q, k, v))
    probs = probs[..., :PREFIX_LENGTH].transpose(0, 2, 1, 3)  # [b, h, query, key]
    live = np.asarray(masks["q_segment_ids"]) > 0
    for head in range(h):
        np.testing.assert_array_equal((probs[:, head] > 0)[live], visible[live])
    np.testing.assert_allclose(probs.sum(-1).transpose(0, 2, 1)[live], 1.0, rtol=1e-5)
    start, n_prefix = 14 + 25, 12  # spelled out on row 0's third segment (keys 39..58)
    first = probs[0, :, start]  # [h, key]: the segment's first query, a prefix one
    assert (first[:, start:start + n_prefix] > 0).all()  # every prefix key, later ones too
    assert (first[:, start + n_prefix:] == 0).all()  # no later non-prefix key, no padding
    assert (first[:, :start] == 0).all()  # no other segment


@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16)])
def test_prefix_lm_mask_matches_xla_reference_forward_and_gradients(rng, blocks):
    assert_prefix_lm_matches_reference(rng, lambda qkv, vec, masks: flash_attention(
        *qkv, **masks, bias=vec, max_distance=vec.shape[1] // 2, block_q=blocks[0],
        block_k=blocks[1], mode="interpret"))


def test_prefix_lm_kernel_attends_exactly_where_the_layout_says(rng):
    assert_prefix_lm_attends_where_the_layout_says(rng, lambda qkv, masks: flash_attention(
        *qkv, **masks, block_q=16, block_k=16, mode="interpret"))


def test_prefix_arrays_come_in_pairs_and_only_widen_a_causal_mask(rng):
    masks, _ = prefix_lm_masks()
    qkv = tuple(jnp.asarray(rng.normal(size=(2, PREFIX_LENGTH, 2, 16)), jnp.float32)
                for _ in range(3))
    with pytest.raises(ValueError, match="both q_prefix and kv_prefix"):
        flash_attention(*qkv, **{**masks, "kv_prefix": None})
    with pytest.raises(ValueError, match="q_prefix"):
        flash_attention(*qkv, **{**masks, "q_prefix": masks["q_prefix"][:, :5]})
    bidirectional = {**masks, "causal": False}  # prefix flags change nothing then
    plain = {k: v for k, v in bidirectional.items() if "prefix" not in k}
    np.testing.assert_array_equal(flash_attention(*qkv, **bidirectional, block_q=16),
                                  flash_attention(*qkv, **plain, block_q=16))
