"""Optimizers and learning-rate schedules, gin-configurable, with T5's defaults.

Adafactor as t5x runs it (factored second moments, decay 0.8, update clipping 1.0, updates
scaled by parameter RMS, no momentum) or AdamW; optional global-norm gradient clipping in
front. Schedules: t5x's rsqrt decay, constant (Flan-T5 finetuning used 1e-3) and cosine,
each with an optional linear warmup.
"""

from __future__ import annotations

import gin
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")


@gin.configurable
def learning_rate_schedule(name: str = "constant", *, learning_rate: float = 1e-3,
                           warmup_steps: int = 0, total_steps: int | None = None,
                           final_fraction: float = 0.0) -> optax.Schedule:
    """`rsqrt`: learning_rate / sqrt(max(step, warmup_steps)), t5x's pretraining schedule
    (use learning_rate=1.0 for its 0.01 plateau at 10k warmup). `cosine` decays to
    final_fraction * learning_rate at total_steps. Warmup is linear from 0."""
    if name not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule.name={name!r}: choose one of {SCHEDULES}")
    if name == "rsqrt":
        # t5x holds the plateau through warmup, so no linear ramp unless asked for.
        return lambda step: learning_rate * jnp.reciprocal(
            jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), max(warmup_steps, 1))))
    if name == "constant":
        main = optax.constant_schedule(learning_rate)
    else:
        if not total_steps:
            raise ValueError("learning_rate_schedule.total_steps is needed by 'cosine'")
        main = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1),
                                           alpha=final_fraction)
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


@gin.configurable
def make_optimizer(name: str = "adafactor", *, schedule: optax.Schedule | None = None,
                   clip_grad_norm: float | None = None, weight_decay: float = 0.0,
                   adafactor_decay_rate: float = 0.8, adafactor_clipping_threshold: float = 1.0,
                   adafactor_momentum: float | None = None, adamw_b1: float = 0.9,
                   adamw_b2: float = 0.999, adamw_eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer.name={name!r}: choose one of {OPTIMIZERS}")
    schedule = schedule if schedule is not None else learning_rate_schedule()
    if name == "adafactor":
        opt = optax.adafactor(schedule, decay_rate=adafactor_decay_rate,
                              clipping_threshold=adafactor_clipping_threshold,
                              momentum=adafactor_momentum, multiply_by_parameter_scale=True,
                              weight_decay_rate=weight_decay or None)
    else:
        opt = optax.adamw(schedule, b1=adamw_b1, b2=adamw_b2, eps=adamw_eps,
                          weight_decay=weight_decay)
    if clip_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(clip_grad_norm), opt)
    return opt
