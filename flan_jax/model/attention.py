"""Multi-head attention for T5, with a KV cache and one kernel switch (`backend`).

Masks come from segment ids (0 = padding, packed examples have distinct ids) and positions
(causal = key position <= query position, within a segment), plus a prefix LM's prefix flags
(on every backend), so packed rows and incremental decoding use the same code. T5 never
scales scores by 1/sqrt(head_dim): that factor lives in the query initialisation.

Backends: `xla` (the reference: a dense [b, h, lq, lk] bias, always available), `pallas`
(flan_jax.kernels flash attention: Pallas' Triton lowering on GPU, its Mosaic variant on TPU,
which builds tile biases with strided rolls, TPU v5 and newer; checked in interpret mode and
compiled for v5e from CPU, not yet run or timed on a TPU), `pallas_interpret` (the GPU
kernel in interpret mode, for CPU tests), `pallas_tpu_interpret` (the TPU kernel in Pallas' TPU
interpret mode, for CPU tests) and `auto` (pallas on GPU and TPU v5+, xla on CPU and older TPUs).
Incremental decoding (`T5.decode_step`, one query per step against the KV cache) always uses
xla: a flash kernel has nothing to tile with one query.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.kernels import flash_attention
from flan_jax.kernels.common import MASK_VALUE
from flan_jax.model.config import T5Config
from flan_jax.model.layers import (RelativePositionBias, adapted, dropout, param,
                                   relative_position_bucket)

BACKENDS = ("auto", "xla", "pallas", "pallas_interpret", "pallas_tpu_interpret")
KERNEL_BACKENDS = ("pallas", "pallas_interpret", "pallas_tpu_interpret")
# Large negative instead of -inf so a fully masked (padding) query row stays finite.
# Flash-attention tiles for the kernel backends (interpret mode shrinks them to short inputs).
BLOCK_Q = 128
BLOCK_K = 128

_log = logging.getLogger(__name__)


def resolve_backend(backend: str, *, attention_dropout: bool = False,
                    prefix_mask: bool = False) -> str:
    """Maps 'auto' to the kernel on GPU and TPU and to XLA elsewhere; checks the name.

    `attention_dropout`: dropout on the attention probabilities is on (training with
    dropout_rate > 0), which only xla implements, so 'auto' picks xla then (and says so once).
    `prefix_mask`: a prefix-LM mask (`attention_mask`'s q_prefix / kv_prefix) is used. Every
    backend implements it, so it changes nothing: accepted so that callers keep working.
    """
    del prefix_mask  # the kernels take q_prefix / kv_prefix too
    if backend not in BACKENDS:
        raise ValueError(
            f"attention_backend={backend!r} is not available; choose one of {BACKENDS}"
        )
    if backend == "auto":
        if jax.default_backend() in _KERNEL_MODES:
            if attention_dropout:
                _log_once("attention_backend='auto' with dropout: xla (the Pallas kernel has "
                          "no attention dropout; set T5Config.dropout_rate=0 to use it)",
                          logging.WARNING)
                return "xla"
            if jax.default_backend() == "tpu":
                if not tpu_kernel_supported():
                    _log_once("attention_backend='auto' on TPU before v5: xla (the Mosaic "
                              "kernel's strided rolls need TPU v5 or newer)", logging.WARNING)
                    return "xla"
                _log_once("attention_backend='auto' on TPU: the Pallas (Mosaic) kernel, "
                          "compiled for v5e ahead of time but not yet run on a TPU; set "
                          "attention_backend='xla' if it misbehaves", logging.WARNING)
            return "pallas"
        return "xla"
    return backend


def tpu_kernel_supported() -> bool:
    """The TPU kernel builds bias tiles with strided `pltpu.roll`, which Mosaic implements on
    TPU v5 and newer only (v5e, v5p, v6e, 7x...)."""
    match = re.search(r"(\d+)", jax.devices()[0].device_kind)
    return match is not None and int(match.group(1)) >= 5


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                   q_positions: jax.Array, kv_positions: jax.Array,
                   causal: bool, q_prefix: jax.Array | None = None,
                   kv_prefix: jax.Array | None = None) -> jax.Array:
    """bool [b, 1, lq, lk]: same non-padding segment, and key not in the future if causal.

    A prefix LM passes q_prefix / kv_prefix (bool [b, lq] / [b, lk]; seqio's
    `decoder_causal_attention`): a causal mask then also lets a prefix query see every prefix
    key of its segment, later ones included (flaxformer's `make_decoder_mask` rule).
    """
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
        kv_segment_ids[:, None, :] != 0)
    if causal:
        visible = kv_positions[:, None, :] <= q_positions[:, :, None]
        if q_prefix is not None:
            visible |= q_prefix[:, :, None] & kv_prefix[:, None, :]
        mask &= visible
    return mask[:, None]


def relative_bias_vector(relpos: RelativePositionBias) -> jax.Array:
    """f32 [heads, 2*max_distance+1]: the bias for each offset kv_pos - q_pos in [-M, M].

    T5's buckets are constant for |offset| >= max_distance (both variants; see
    tests/kernels), so clipping offsets to [-M, M] and indexing this vector gives exactly the
    dense bias. Its gradient reaches the [heads, buckets] table through this gather.
    """
    m = relpos.max_distance
    offsets = jnp.arange(-m, m + 1, dtype=jnp.int32)
    buckets = relative_position_bucket(offsets, bidirectional=relpos.bidirectional,
                                       num_buckets=relpos.num_buckets, max_distance=m)
    return relpos.embedding[...].astype(jnp.float32)[:, buckets]


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """Everything but q/k/v, prepared once per stack and shared by its layers.

    The `xla` backend folds mask and relative position bias into one additive f32 tensor
    `dense_bias` [b, heads or 1, lq, lk]. Kernel backends never materialise it: they carry
    the per-offset bias vector [heads, 2*max_distance+1] (None without bias), segment ids and
    positions [b, l], the causal flag and a prefix LM's bool q_prefix / kv_prefix [b, l]
    (None otherwise), and form each tile's mask and bias themselves.
    """

    dense_bias: jax.Array | None = None
    backend: str = "xla"
    bias_vector: jax.Array | None = None
    max_distance: int = 0
    causal: bool = False
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    q_prefix: jax.Array | None = None
    kv_prefix: jax.Array | None = None


def prepare_attention(*, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                      q_positions: jax.Array, kv_positions: jax.Array, causal: bool,
                      relpos: RelativePositionBias | None, backend: str,
                      q_prefix: jax.Array | None = None,
                      kv_prefix: jax.Array | None = None) -> AttentionInputs:
    """The inputs of every layer of one stack; q_prefix / kv_prefix as in `attention_mask`."""
    if (q_prefix is None) != (kv_prefix is None):
        raise ValueError("prepare_attention: give both q_prefix and kv_prefix, or neither")
    backend = resolve_backend(backend)
    if backend in KERNEL_BACKENDS:
        return AttentionInputs(
            backend=backend, causal=causal,
            bias_vector=None if relpos is None else relative_bias_vector(relpos),
            max_distance=0 if relpos is None else relpos.max_distance,
            q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
            q_positions=q_positions, kv_positions=kv_positions,
            q_prefix=q_prefix, kv_prefix=kv_prefix)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal,
                          q_prefix, kv_prefix)
    bias = jnp.zeros((), jnp.float32) if relpos is None else relpos(q_positions, kv_positions)
    return AttentionInputs(dense_bias=jnp.where(mask, bias, MASK_VALUE), backend=backend)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs,
                          *, dropout_rate: float = 0.0,
                          rngs: nnx.Rngs | None = None) -> jax.Array:
    """q [b, lq, h, d], k/v [b, lk, h, d] -> [b, lq, h, d] with the inputs' backend."""
    return _BACKEND_IMPLS[inputs.backend](q, k, v, inputs, dropout_rate, rngs)


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs,
                   dropout_rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """The reference: scores, bias and softmax in f32 whatever the compute dtype."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + inputs.dense_bias, axis=-1)
    probs = dropout(probs, dropout_rate, rngs).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs,
                      dropout_rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """flan_jax.kernels flash attention: no [lq, lk] bias, mask or probabilities in memory."""
    if rngs is not None and dropout_rate > 0.0:
        raise NotImplementedError(
            f"attention_backend={inputs.backend!r} has no attention dropout "
            f"(dropout_rate={dropout_rate}); use attention_backend='xla' or dropout_rate=0")
    if inputs.backend == "pallas_interpret":
        mode = "interpret"
    elif inputs.backend == "pallas_tpu_interpret":
        mode = "mosaic_tpu_interpret"
    else:
        platform = jax.default_backend()
        if platform not in _KERNEL_MODES:
            raise ValueError(f"attention_backend='pallas' needs a GPU or a TPU, not {platform!r}; "
                             "use 'pallas_interpret' / 'pallas_tpu_interpret' (slow, for tests) "
                             "or 'xla' on CPU")
        mode = _KERNEL_MODES[platform]
        _log_once(f"attention: Pallas flash attention ({mode}) on {platform}")
    return flash_attention(
        q, k, v, q_segment_ids=inputs.q_segment_ids, kv_segment_ids=inputs.kv_segment_ids,
        q_positions=inputs.q_positions, kv_positions=inputs.kv_positions,
        bias=inputs.bias_vector, causal=inputs.causal, q_prefix=inputs.q_prefix,
        kv_prefix=inputs.kv_prefix, max_distance=inputs.max_distance,
        block_q=BLOCK_Q, block_k=BLOCK_K, mode=mode)


_KERNEL_MODES = {"gpu": "triton", "tpu": "mosaic_tpu"}
_logged: set[str] = set()


def _log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        _log.log(level, message)


_BACKEND_IMPLS = {"xla": _xla_attention, "pallas": _pallas_attention,
                  "pallas_interpret": _pallas_attention,
                  "pallas_tpu_interpret": _pallas_attention}


class Attention(nnx.Module):
    """Projections q, k, v [embed, heads, kv] and o [heads, kv, embed]."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        e, h, d = cfg.d_model, cfg.num_heads, cfg.head_dim
        pd = cfg.jnp_param_dtype
        normal = nnx.initializers.normal
        # T5 / Mesh TF init; the query's extra head_dim**-0.5 replaces score scaling.
        self.q = param(rngs, normal((e * d) ** -0.5), (e, h, d), pd, ("embed", "heads", "kv"))
        self.k = param(rngs, normal(e**-0.5), (e, h, d), pd, ("embed", "heads", "kv"))
        self.v = param(rngs, normal(e**-0.5), (e, h, d), pd, ("embed", "heads", "kv"))
        self.o = param(rngs, normal((h * d) ** -0.5), (h, d, e), pd, ("heads", "kv", "embed"))
        self.dtype = cfg.jnp_dtype
        self.rate = cfg.dropout_rate
        self.lora = None  # LoRA adapters by projection name (`lora.apply_lora`)

    def project_kv(self, source: jax.Array,
                   rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """[b, lk, embed] -> k, v [b, lk, h, d]; the cross-attention cache holds these."""
        dt = self.dtype
        k = jnp.einsum("ble,ehd->blhd", source, self.k[...].astype(dt))
        v = jnp.einsum("ble,ehd->blhd", source, self.v[...].astype(dt))
        return adapted(self, "k", source, k, rngs), adapted(self, "v", source, v, rngs)

    def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """Queries from x [b, lq, embed] against given keys / values -> [b, lq, embed]."""
        dt = self.dtype
        q = adapted(self, "q", x, jnp.einsum("ble,ehd->blhd", x, self.q[...].astype(dt)), rngs)
        out = dot_product_attention(q, k, v, inputs, dropout_rate=self.rate, rngs=rngs)
        return adapted(self, "o", out, jnp.einsum("blhd,hde->ble", out,
                                                  self.o[...].astype(dt)), rngs)

    def __call__(self, x: jax.Array, source: jax.Array, inputs: AttentionInputs,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        k, v = self.project_kv(source, rngs)
        return self.attend(x, k, v, inputs, rngs)
