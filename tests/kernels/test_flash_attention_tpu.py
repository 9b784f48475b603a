"""The TPU (Mosaic) variant of the flash-attention kernel against the model's `xla` attention.

Runs in Pallas' TPU interpret mode on CPU (mode="mosaic_tpu_interpret", and mode="mosaic_tpu"
under `pltpu.force_tpu_interpret_mode()`), on fresh random inputs each run (seed printed on
failure), with tiny blocks so every case has several tiles and padded last blocks. Mosaic
lowering (not compilation: that needs a TPU) is checked from CPU with
`lower(lowering_platforms=("tpu",))` at TPU block sizes.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from flan_jax.kernels import flash_attention
from flan_jax.model import attention
from flan_jax.model.attention import relative_bias_vector
from tests.kernels.test_flash_attention import (_case_inputs, _live_rows, _reference, _rel_err,
                                                _with_table, assert_dead_rows_are_zero,
                                                assert_matches_reference,
                                                assert_prefix_lm_attends_where_the_layout_says,
                                                assert_prefix_lm_matches_reference,
                                                assert_tiny_t5_matches_xla, rng)

__all__ = ["rng"]  # the fixture


def _kernel(qkv, table, relpos, masks, block, mode="mosaic_tpu_interpret"):
    relpos = _with_table(relpos, table)
    vec = None if relpos is None else relative_bias_vector(relpos)
    return flash_attention(*qkv, **masks, bias=vec,
                           max_distance=0 if relpos is None else relpos.max_distance,
                           block_q=block, block_k=block, mode=mode)


# encoder self (bidirectional bias), decoder self (causal), cross (no bias, lq != lk), packed
# rows with 3-4 segments and offsets clipped at max_distance; lengths never divide the block.
@pytest.mark.parametrize("name,dtype", [
    ("encoder_self", "float32"), ("decoder_self", "float32"), ("packed_cross", "float32"),
    ("packed_encoder_clipped", "float32"), ("packed_decoder_clipped", "bfloat16")])
def test_tpu_kernel_matches_xla_reference_forward_and_gradients(rng, name, dtype):
    qkv, relpos, masks, _ = _case_inputs(rng, name, dtype)
    while name == "packed_cross" and qkv[0].shape[1] == qkv[1].shape[1]:  # want lq != lk
        qkv, relpos, masks, _ = _case_inputs(rng, name, dtype)
    block = 16 if name.startswith("packed") else 32
    assert_matches_reference(rng, qkv, relpos, masks, dtype,
                             lambda qkv, t: _kernel(qkv, t, relpos, masks, block))


def test_mosaic_tpu_mode_runs_under_force_tpu_interpret_mode(rng):
    """mode="mosaic_tpu" (what attention_backend='pallas' uses on TPU) on CPU, forward."""
    qkv, relpos, masks, _ = _case_inputs(rng, "decoder_self", "float32")
    table = relpos.embedding[...]
    live = _live_rows(masks)
    with pltpu.force_tpu_interpret_mode():
        out = jax.jit(lambda qkv, t: _kernel(qkv, t, relpos, masks, 32, "mosaic_tpu"))(
            qkv, table)
    want = _reference(qkv, table, relpos, masks)
    assert _rel_err(out[live], want[live]) <= 1e-5


def test_backends_pick_the_tpu_kernel(monkeypatch):
    assert "pallas_tpu_interpret" in attention.BACKENDS
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "tpu")
    assert not attention.tpu_kernel_supported()  # CPU devices here
    assert attention.resolve_backend("auto") == "xla"  # as on TPU v4 and older
    monkeypatch.setattr(attention, "tpu_kernel_supported", lambda: True)
    assert attention.resolve_backend("auto") == "pallas"
    assert attention.resolve_backend("auto", attention_dropout=True) == "xla"
    assert attention.resolve_backend("auto", prefix_mask=True) == "pallas"
    calls = []
    monkeypatch.setattr(attention, "flash_attention",
                        lambda *a, mode, **kw: calls.append(mode) or a[0])
    q = jnp.zeros((1, 8, 2, 16))
    seg = jnp.ones((1, 8), jnp.int32)
    for backend in ("pallas", "pallas_tpu_interpret"):
        inputs = attention.prepare_attention(q_segment_ids=seg, kv_segment_ids=seg,
                                             q_positions=seg, kv_positions=seg, causal=False,
                                             relpos=None, backend=backend)
        attention.dot_product_attention(q, q, q, inputs)
    assert calls == ["mosaic_tpu", "mosaic_tpu_interpret"]


@pytest.mark.parametrize("dtype,head_dim,with_bias,causal,prefix", [
    ("bfloat16", 64, True, True, False), ("float32", 128, False, False, False),
    ("bfloat16", 64, True, True, True)])
def test_mosaic_lowering_builds_for_tpu(dtype, head_dim, with_bias, causal, prefix):
    """Forward and both backward kernels lower to Mosaic (cross-platform lowering on CPU):
    block shapes, strided rolls, dynamic row reads / writes of the window table, loops and
    conds (and the prefix flags' bit ops) pass Pallas' TPU lowering. Mosaic compilation and
    running need a TPU."""
    lq, lk, h = 300, 77, 2
    q, k = jnp.zeros((1, lq, h, head_dim), dtype), jnp.zeros((1, lk, h, head_dim), dtype)
    qs, ks = jnp.ones((1, lq), jnp.int32), jnp.ones((1, lk), jnp.int32)
    vec = jnp.zeros((h, 2 * 128 + 1)) if with_bias else None
    flags = dict(q_prefix=qs, kv_prefix=ks) if prefix else {}

    def loss(q, k, v, vec):
        out = flash_attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, q_positions=qs,
                              kv_positions=ks, bias=vec, causal=causal, mode="mosaic_tpu",
                              **flags)
        return out.astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3) if with_bias else (0, 1, 2))).trace(
        q, k, k, vec).lower(lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dk/dv (+ bias), dq


def test_rows_with_nothing_to_attend_output_zero_and_pass_no_gradient(rng):
    qkv, relpos, masks, _ = _case_inputs(rng, "packed_encoder_clipped", "float32")
    assert_dead_rows_are_zero(rng, qkv, relpos, masks,
                              lambda qkv, t, masks: _kernel(qkv, t, relpos, masks, 16))


def test_tpu_kernel_prefix_lm_mask_matches_xla_reference_forward_and_gradients(rng):
    assert_prefix_lm_matches_reference(rng, lambda qkv, vec, masks: flash_attention(
        *qkv, **masks, bias=vec, max_distance=vec.shape[1] // 2, block_q=16, block_k=16,
        mode="mosaic_tpu_interpret"))


def test_tpu_kernel_prefix_lm_attends_exactly_where_the_layout_says(rng):
    assert_prefix_lm_attends_where_the_layout_says(rng, lambda qkv, masks: flash_attention(
        *qkv, **masks, block_q=16, block_k=16, mode="mosaic_tpu_interpret"))


def test_tiny_t5_loss_and_gradients_match_between_pallas_tpu_interpret_and_xla(rng,
                                                                              monkeypatch):
    assert_tiny_t5_matches_xla(rng, monkeypatch, "pallas_tpu_interpret")


_AOT_SCRIPT = """
import jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding
from flan_jax.kernels import flash_attention
dev = topologies.get_topology_desc("v5e:2x2", "tpu").devices[0]
def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=SingleDeviceSharding(dev))
# The last case: a length whose whole k / v would not fit in VMEM (the grid streams tiles).
for dtype, hd, with_bias, causal, b, lq, lk, h in [
        ("bfloat16", 64, True, True, 2, 300, 200, 2), ("float32", 128, True, False, 2, 300, 200, 2),
        ("bfloat16", 128, False, False, 2, 300, 200, 2),
        ("bfloat16", 64, True, True, 1, 32768, 32768, 16)]:
    q, k = sds((b, lq, h, hd), dtype), sds((b, lk, h, hd), dtype)
    qs, ks = sds((b, lq), jnp.int32), sds((b, lk), jnp.int32)
    def loss(q, k, v, vec, qs, ks):
        return flash_attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, q_positions=qs,
                               kv_positions=ks, bias=vec if with_bias else None, causal=causal,
                               mode="mosaic_tpu").astype(jnp.float32).sum()
    jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(
        q, k, k, sds((h, 257), jnp.float32), qs, ks).lower(lowering_platforms=("tpu",)).compile()
    print("compiled", dtype, hd, with_bias, causal)
"""


def test_mosaic_compiles_for_tpu_v5e_ahead_of_time():
    """Mosaic's own compilation (layouts, strided rolls, dynamic row access, conds), for a
    compile-only TPU v5e topology: needs libtpu (pip install libtpu, or TPU_LIBRARY_PATH), no
    TPU. Runs in a subprocess so that this process keeps its CPU-only backends."""
    import importlib.util
    import os
    import subprocess
    import sys

    if not (importlib.util.find_spec("libtpu") or os.environ.get("TPU_LIBRARY_PATH")):
        pytest.skip("libtpu not installed: no ahead-of-time TPU compilation")
    env = {**os.environ, "JAX_PLATFORMS": ""}
    done = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 4, done.stdout
