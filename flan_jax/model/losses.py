"""Token-level losses on f32 logits: the one loss the trainer, rank classification, every
parity test and benchmark share (t5x's cross entropy with label smoothing and z-loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array, *, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """[b, l, vocab], int [b, l] -> per-token (cross entropy + z-loss, z-loss), f32 [b, l].

    With `label_smoothing`, the smoothed distribution's entropy is subtracted so a perfect
    model scores 0, as t5x does."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_lp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z
    if label_smoothing:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / max(vocab - 1, 1)
        normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        sum_lp = jnp.sum(logits, -1) - vocab * log_z  # sum of log-probs over the vocabulary
        ce = -(confidence * target_lp + low * (sum_lp - target_lp)) - normalizer
    else:
        ce = -target_lp
    z = z_loss * jnp.square(log_z)
    return ce + z, z


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood f32 [b, l] (no smoothing, no z-loss)."""
    return token_losses(logits, targets)[0]


def mean_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Loss averaged over real target tokens (weights > 0), like HF's ignore_index=-100."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_cross_entropy(logits, targets) * weights) / jnp.maximum(
        jnp.sum(weights), 1.0)
