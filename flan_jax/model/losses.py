"""Token-level cross entropy on f32 logits, the loss every parity test and trainer shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """f32 [b, l, vocab], int [b, l] -> per-token negative log-likelihood f32 [b, l]."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def mean_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Loss averaged over real target tokens (weights > 0), like HF's ignore_index=-100."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_cross_entropy(logits, targets) * weights) / jnp.maximum(
        jnp.sum(weights), 1.0)
