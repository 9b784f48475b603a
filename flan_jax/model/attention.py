"""Multi-head attention for T5, with a KV cache and one kernel switch (`backend`).

Masks come from segment ids (0 = padding, packed examples have distinct ids) and positions
(causal = key position <= query position, within a segment), so packed rows and incremental
decoding use the same code. T5 never scales scores by 1/sqrt(head_dim): that factor lives in
the query initialisation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.config import T5Config
from flan_jax.model.layers import RelativePositionBias, dropout, param

BACKENDS = ("auto", "xla")
# Large negative instead of -inf so a fully masked (padding) query row stays finite.
_MASK_VALUE = -1e9


def resolve_backend(backend: str) -> str:
    """Maps 'auto' to the best backend for the running platform (XLA until kernels land)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"attention_backend={backend!r} is not available; choose one of {BACKENDS}"
        )
    return "xla"


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                   q_positions: jax.Array, kv_positions: jax.Array,
                   causal: bool) -> jax.Array:
    """bool [b, 1, lq, lk]: same non-padding segment, and key not in the future if causal."""
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
        kv_segment_ids[:, None, :] != 0)
    if causal:
        mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
    return mask[:, None]


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """Everything but q/k/v, prepared once per stack and shared by its layers.

    The `xla` backend folds mask and relative position bias into one additive f32 tensor
    [b, heads or 1, lq, lk]; kernels (flan_jax.kernels) will read the small bias table and
    positions instead and never materialise it.
    """

    dense_bias: jax.Array
    backend: str = "xla"


def prepare_attention(*, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                      q_positions: jax.Array, kv_positions: jax.Array, causal: bool,
                      relpos: RelativePositionBias | None, backend: str) -> AttentionInputs:
    backend = resolve_backend(backend)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal)
    bias = jnp.zeros((), jnp.float32) if relpos is None else relpos(q_positions, kv_positions)
    return AttentionInputs(dense_bias=jnp.where(mask, bias, _MASK_VALUE), backend=backend)


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


_BACKEND_IMPLS = {"xla": _xla_attention}


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

    def project_kv(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[b, lk, embed] -> k, v [b, lk, h, d]; the cross-attention cache holds these."""
        dt = self.dtype
        k = jnp.einsum("ble,ehd->blhd", source, self.k[...].astype(dt))
        v = jnp.einsum("ble,ehd->blhd", source, self.v[...].astype(dt))
        return k, v

    def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """Queries from x [b, lq, embed] against given keys / values -> [b, lq, embed]."""
        dt = self.dtype
        q = jnp.einsum("ble,ehd->blhd", x, self.q[...].astype(dt))
        out = dot_product_attention(q, k, v, inputs, dropout_rate=self.rate, rngs=rngs)
        return jnp.einsum("blhd,hde->ble", out, self.o[...].astype(dt))

    def __call__(self, x: jax.Array, source: jax.Array, inputs: AttentionInputs,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        k, v = self.project_kv(source)
        return self.attend(x, k, v, inputs, rngs)
