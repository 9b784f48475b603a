"""T5 building blocks: RMS norm, embedding, MLP, relative position bias, dropout.

Every parameter is an `nnx.Param` whose `logical_axes` metadata names its axes
(`embed`, `mlp`, `heads`, `kv`, `vocab`, `relpos_buckets`); `flan_jax.parallel` maps those
names onto a device mesh, so nothing here mentions devices.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.config import T5Config

Initializer = nnx.initializers.Initializer


_SHAPES_ONLY = contextvars.ContextVar("flan_jax_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only():
    """Modules built inside hold `jax.ShapeDtypeStruct`s instead of initialised arrays.

    What `nnx.eval_shape` gives, without tracing the constructor: under a trace every
    `rngs.params()` makes flax ask a tracer for `.sharding`, and the error message JAX builds
    for that walks the whole trace, so tracing a model costs time quadratic in its size
    (seconds for XL / XXL)."""
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], dtype: jnp.dtype,
          axes: tuple[str, ...], kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
    """A parameter tagged with its logical axis names (one per dimension); `kind`: a
    subclass such as `nnx.LoRAParam` (LoRA adapters, `flan_jax.model.lora`)."""
    assert len(axes) == len(shape), (shape, axes)
    if _SHAPES_ONLY.get():
        return kind(jax.ShapeDtypeStruct(tuple(shape), dtype), logical_axes=axes)
    return kind(init(rngs.params(), shape, dtype), logical_axes=axes)


def adapted(module: nnx.Module, name: str, x: jax.Array, y: jax.Array,
            rngs: nnx.Rngs | None) -> jax.Array:
    """`y` = x times the module's projection `name`, plus that projection's LoRA update
    where `lora.apply_lora` gave it one (`module.lora`, None without LoRA: then `y` itself)."""
    if module.lora is None or name not in module.lora:
        return y
    return y + module.lora[name](x, rngs).astype(y.dtype)


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout; the identity when `rngs` is None (eval / decode) or rate is 0."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class RMSNorm(nnx.Module):
    """T5 layer norm: scale only, no mean subtraction, statistics in f32."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.eps = cfg.layer_norm_eps
        self.dtype = cfg.jnp_dtype
        self.scale = param(rngs, nnx.initializers.ones, (cfg.d_model,), cfg.jnp_param_dtype,
                           ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding shared by encoder and decoder (and by the logits when tied)."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.dtype = cfg.jnp_dtype
        self.embedding = param(rngs, nnx.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model),
                               cfg.jnp_param_dtype, ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:  # [b, l] -> [b, l, embed]
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:  # [b, l, embed] -> [b, l, vocab]
        return jnp.einsum("ble,ve->blv", x, self.embedding[...].astype(self.dtype))


class MLP(nnx.Module):
    """ReLU MLP (T5 1.0) or gated-GELU MLP (T5 1.1 / Flan-T5, tanh-approximated GELU)."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.gated = cfg.gated
        self.dtype = cfg.jnp_dtype
        pd = cfg.jnp_param_dtype
        # T5's init: std = fan_in ** -0.5 for every projection.
        init_in = nnx.initializers.normal(cfg.d_model**-0.5)
        init_out = nnx.initializers.normal(cfg.d_ff**-0.5)
        shape_in, shape_out = (cfg.d_model, cfg.d_ff), (cfg.d_ff, cfg.d_model)
        if self.gated:
            self.wi_0 = param(rngs, init_in, shape_in, pd, ("embed", "mlp"))
            self.wi_1 = param(rngs, init_in, shape_in, pd, ("embed", "mlp"))
        else:
            self.wi = param(rngs, init_in, shape_in, pd, ("embed", "mlp"))
        self.wo = param(rngs, init_out, shape_out, pd, ("mlp", "embed"))
        self.rate = cfg.dropout_rate
        self.lora = None  # LoRA adapters by projection name (`lora.apply_lora`)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        dt = self.dtype
        if self.gated:
            h = jax.nn.gelu(adapted(self, "wi_0", x, x @ self.wi_0[...].astype(dt), rngs),
                            approximate=True)
            h = h * adapted(self, "wi_1", x, x @ self.wi_1[...].astype(dt), rngs)
        else:
            h = jax.nn.relu(adapted(self, "wi", x, x @ self.wi[...].astype(dt), rngs))
        h = dropout(h, self.rate, rngs)  # [b, l, mlp]
        return adapted(self, "wo", h, h @ self.wo[...].astype(dt), rngs)


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
    """T5's log-spaced buckets of (key position - query position).

    Half the buckets are exact offsets, the rest grow logarithmically up to `max_distance`;
    bidirectional splits the buckets between future (upper half) and past offsets, while the
    causal variant folds every future offset into bucket 0.
    """
    rp = relative_position
    bucket = jnp.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rp > 0).astype(rp.dtype) * num_buckets
        n = jnp.abs(rp)
    else:
        n = -jnp.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Guard log(0): those entries take the `is_small` branch anyway.
    n_safe = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(n_safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(rp.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nnx.Module):
    """One learned table [heads, buckets] per stack, shared by all of the stack's layers."""

    def __init__(self, cfg: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.embedding = param(rngs, nnx.initializers.normal(cfg.d_model**-0.5),
                               (cfg.num_heads, self.num_buckets), cfg.jnp_param_dtype,
                               ("heads", "relpos_buckets"))

    def buckets(self, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
        """[b, lq], [b, lk] -> int32 [b, lq, lk]."""
        rel = kv_positions[:, None, :] - q_positions[:, :, None]
        return relative_position_bucket(rel.astype(jnp.int32), bidirectional=self.bidirectional,
                                        num_buckets=self.num_buckets,
                                        max_distance=self.max_distance)

    def __call__(self, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
        """Full bias [b, heads, lq, lk] in f32 (what the `xla` attention backend adds)."""
        table = self.embedding[...].astype(jnp.float32)  # [h, buckets]
        return jnp.moveaxis(table.T[self.buckets(q_positions, kv_positions)], -1, 1)
