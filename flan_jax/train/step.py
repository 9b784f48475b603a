"""The train step: a pure `(state, batch) -> (state, metrics)` for `jax.jit`.

The loss is summed over target tokens inside each microbatch and normalized once for the
whole batch, so gradient accumulation over k microbatches gives the same update as one big
batch. Dropout keys derive from (seed, step), so a resumed run draws the same masks.
A parameter-efficient run (LoRA, prompt tuning) keeps the base params out of the state: they
come in as `frozen`, are never differentiated and have no optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flan_jax.model.losses import token_losses
from flan_jax.model.params import Params

Batch = Mapping[str, jax.Array]
NORMALIZATIONS = ("tokens", "constant")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar
    params: Params  # the trained params: all of them, or an adapters-only run's adapters
    opt_state: optax.OptState

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainState":
        return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"])


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """`normalization`: "tokens" divides by the real target tokens of the batch (HF-like);
    "constant" divides by `normalizing_factor` (t5x's loss_normalizing_factor, e.g.
    batch * targets_length), which keeps short-target examples from weighing more."""

    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    normalization: str = "tokens"
    normalizing_factor: float | None = None

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"LossConfig.normalization={self.normalization!r}: choose one of "
                             f"{NORMALIZATIONS}")
        if self.normalization == "constant" and not self.normalizing_factor:
            raise ValueError("LossConfig.normalizing_factor is needed with "
                             "normalization='constant'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"LossConfig.label_smoothing={self.label_smoothing} not in [0, 1)")


def forward(model, batch: Batch, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch of the feature converter's features: an encoder-decoder's
    (EncDecFeatureConverter) or a decoder-only model's (decoder / prefix-LM converters,
    `decoder_causal_attention` marking the prefix; a semi-causal model's
    `decoder_encoded_span`). Optional features a batch lacks take the model's defaults."""
    if "encoder_input_tokens" not in batch:
        return model(batch["decoder_input_tokens"], rngs=rngs,
                     **{k: batch[k] for k in _DECODER_ONLY_OPTIONAL if k in batch})
    return model(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                 encoder_segment_ids=batch.get("encoder_segment_ids"),
                 decoder_segment_ids=batch.get("decoder_segment_ids"),
                 encoder_positions=batch.get("encoder_positions"),
                 decoder_positions=batch.get("decoder_positions"), rngs=rngs)


_DECODER_ONLY_OPTIONAL = ("decoder_segment_ids", "decoder_positions",
                          "decoder_causal_attention", "decoder_encoded_span")


def _sums(params: Params, frozen: Params | None, graphdef: nnx.GraphDef, batch: Batch,
          cfg: LossConfig, dropout_key: jax.Array | None
          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, frozen,
                                                                         params)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
    logits = forward(model, batch, rngs)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    loss, z = token_losses(logits, targets, z_loss=cfg.z_loss,
                           label_smoothing=cfg.label_smoothing)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    sums = {"loss": jnp.sum(loss * weights), "z_loss": jnp.sum(z * weights),
            "correct": jnp.sum(correct * weights), "tokens": jnp.sum(weights)}
    return sums["loss"], sums


def _split(batch: Batch, k: int) -> Batch:
    def reshape(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows can't be split into {k} microbatches")
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])
    return {name: reshape(x) for name, x in batch.items()}


def train_step(state: TrainState, batch: Batch, frozen: Params | None = None, *,
               graphdef: nnx.GraphDef,
               optimizer: optax.GradientTransformation, loss_cfg: LossConfig,
               schedule: optax.Schedule | None = None, microbatches: int = 1,
               dropout_seed: int | None = None, skip_nonfinite: bool = False
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from `batch` (accumulated over `microbatches` if > 1).

    Pass it to `jax.jit` with the static keyword arguments bound (functools.partial).
    `frozen`: params the model needs but that are not trained (a LoRA or prompt-tuning run's
    base; the graphdef is then the adapted model's): the gradient, the update and `param_norm` cover
    `state.params` alone.
    `dropout_seed=None` disables dropout (the model's dropout_rate is then unused).
    `skip_nonfinite`: a step whose loss or gradients are not finite leaves params and
    optimizer state as they were (metrics["skipped"] = 1); otherwise the caller stops.
    """
    key = None
    if dropout_seed is not None:
        key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
    grad_fn = jax.grad(_sums, has_aux=True)
    if microbatches == 1:
        grads, sums = grad_fn(state.params, frozen, graphdef, batch, loss_cfg, key)
    else:
        def body(carry, xs):
            acc_grads, acc_sums = carry
            i, micro = xs
            k = None if key is None else jax.random.fold_in(key, i)
            g, s = grad_fn(state.params, frozen, graphdef, micro, loss_cfg, k)
            return (jax.tree.map(jnp.add, acc_grads, g),
                    jax.tree.map(jnp.add, acc_sums, s)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss", "z_loss", "correct",
                                                             "tokens")}
        (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums),
                                        (jnp.arange(microbatches), _split(batch, microbatches)))
    denom = (jnp.maximum(sums["tokens"], 1.0) if loss_cfg.normalization == "tokens"
             else jnp.float32(loss_cfg.normalizing_factor))
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, params, state.params)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics = {
        "loss": sums["loss"] / denom,
        "z_loss": sums["z_loss"] / denom,
        "accuracy": sums["correct"] / jnp.maximum(sums["tokens"], 1.0),
        "target_tokens": sums["tokens"],
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "skipped": 1.0 - finite.astype(jnp.float32),
    }
    if schedule is not None:
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return TrainState(state.step + 1, params, opt_state), metrics


def init_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
