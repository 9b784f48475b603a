"""Optimizers and learning-rate schedules, gin-configurable, with T5's defaults.

Adafactor as t5x runs it (factored second moments, decay 0.8, update clipping 1.0, updates
scaled by parameter RMS, no momentum, each param seen in t5x's 2-D layout) or AdamW; optional
global-norm gradient clipping in front. Schedules: t5x's rsqrt decay, constant (Flan-T5
finetuning used 1e-3) and cosine, each with an optional linear warmup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")
# t5x's DenseGeneral stores attention kernels with heads and head_dim as one `joined_kv` dim
# ([embed, joined_kv] for q / k / v, [joined_kv, embed] for o); ours keep them apart.
JOINED = ("heads", "kv")

log = logging.getLogger(__name__)
_warned_no_axes = False


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
                   adafactor_momentum: float | None = None,
                   adafactor_factor_like_t5x: bool = True,
                   adafactor_multiply_by_parameter_scale: bool = True, param_axes: Any = None,
                   adamw_b1: float = 0.9, adamw_b2: float = 0.999, adamw_eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """`param_axes`: the params' logical axes (`flan_jax.model.param_axes`). With them and
    `adafactor_factor_like_t5x`, Adafactor sees every param in t5x's 2-D layout (see
    `factor_like_t5x`), so attention kernels get factored second moments as in t5x; without
    them (or with the switch off) it sees the stored shapes, and [embed, heads, kv] kernels
    with head_dim < 128 keep a full second moment. `adafactor_multiply_by_parameter_scale`:
    each update scaled by its param's RMS (t5x's default); prompt tuning turns it off, as
    Lester et al. did, so the learning rate is the step size itself."""
    global _warned_no_axes
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer.name={name!r}: choose one of {OPTIMIZERS}")
    schedule = schedule if schedule is not None else learning_rate_schedule()
    if name == "adafactor":
        opt = optax.adafactor(schedule, decay_rate=adafactor_decay_rate,
                              clipping_threshold=adafactor_clipping_threshold,
                              momentum=adafactor_momentum,
                              multiply_by_parameter_scale=adafactor_multiply_by_parameter_scale,
                              weight_decay_rate=weight_decay or None)
        if adafactor_factor_like_t5x and param_axes is not None:
            opt = factor_like_t5x(opt, param_axes)
        elif adafactor_factor_like_t5x and not _warned_no_axes:
            _warned_no_axes = True
            log.warning("make_optimizer: no param_axes given, so Adafactor factors params in "
                        "their stored shapes, not t5x's (attention kernels keep a full second "
                        "moment); pass param_axes=flan_jax.model.param_axes(model)")
    else:
        opt = optax.adamw(schedule, b1=adamw_b1, b2=adamw_b2, eps=adamw_eps,
                          weight_decay=weight_decay)
    if clip_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(clip_grad_norm), opt)
    return opt


def t5x_shape(shape: Sequence[int], axes: Sequence[str | None]) -> tuple[int, ...]:
    """The shape t5x stores a param in: each adjacent (heads, kv) pair of dims merged into one.

    [embed, heads, kv] -> [embed, heads * kv]; [heads, kv, embed] -> [heads * kv, embed];
    everything else (embeddings, MLP, norms, relative-position tables) is already t5x's.
    """
    if len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    out, i = [], 0
    while i < len(shape):
        if tuple(axes[i:i + 2]) == JOINED:
            out.append(shape[i] * shape[i + 1])
            i += 2
        else:
            out.append(shape[i])
            i += 1
    return tuple(out)


def factor_like_t5x(inner: optax.GradientTransformation, param_axes: Any
                    ) -> optax.GradientTransformationExtraArgs:
    """`inner` applied to every param, gradient and update in its `t5x_shape`, the updates
    reshaped back: optax's Adafactor then factors [embed, heads, kv] kernels over
    (embed, heads * kv) as t5x's does, where on the 3-D shape it would keep a full second
    moment whenever head_dim < 128. The optimizer state is `inner`'s, in t5x's shapes.

    `param_axes`: a tree of logical-axis tuples shaped like the params. Adafactor's RMS
    clipping and parameter scaling are per-param RMS, so only the factoring sees the shape.
    """
    inner = optax.with_extra_args_support(inner)

    def views(tree: Any) -> Any:
        if jax.tree.structure(tree) != jax.tree.structure(param_axes, is_leaf=_is_axes):
            raise ValueError("factor_like_t5x: param_axes do not have the params' tree "
                             "structure")
        return jax.tree.map(lambda x, axes: jnp.reshape(x, t5x_shape(x.shape, axes)),
                            tree, param_axes)

    def init(params: Any) -> optax.OptState:
        return inner.init(views(params))

    def update(updates: Any, state: optax.OptState, params: Any = None, **extra: Any
               ) -> tuple[Any, optax.OptState]:
        new, state = inner.update(views(updates), state,
                                  None if params is None else views(params), **extra)
        return jax.tree.map(lambda u, g: jnp.reshape(u, g.shape), new, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def _is_axes(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and all(a is None or isinstance(a, str) for a in x)
