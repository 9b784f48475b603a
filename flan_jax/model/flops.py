"""Analytic matmul FLOPs of a T5 step, for tokens/s -> MFU in benchmarks and training logs.

Counts 2 FLOPs per multiply-add of every matmul (projections, attention scores and values,
MLP, logits); norms, softmax and embedding gathers are ignored, as MFU conventionally does.
A backward pass costs twice the forward (once without weight gradients: LoRA's frozen base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flan_jax.model.config import T5Config

if TYPE_CHECKING:
    from flan_jax.model.lora import LoraConfig


def forward_flops(cfg: T5Config, batch: int, inputs_len: int, targets_len: int) -> float:
    """A decoder-only model runs one sequence of inputs_len + targets_len tokens; a
    semi-causal one runs its encoder and connector over that whole sequence too (spans are
    masked, not gathered: what the step computes)."""
    e, f, i = cfg.d_model, cfg.d_ff, cfg.inner_dim
    b, le, ld = batch, inputs_len, targets_len
    mlp = (3 if cfg.gated else 2) * e * f  # multiply-adds per token
    attn_scores = 2 * i  # q.k and p.v per (query, key) pair, summed over heads
    if cfg.architecture in ("decoder_only", "semi_causal"):
        n = le + ld
        layer = b * n * (4 * e * i + mlp) + b * n * n * attn_scores
        total = cfg.num_decoder_layers * layer + b * n * e * cfg.vocab_size
        if cfg.architecture == "semi_causal":
            connector = (b * n * e * e if cfg.connector == "linear"
                         else b * n * 4 * e * i + b * n * n * attn_scores)
            total += cfg.num_encoder_layers * layer + connector
        return 2.0 * total
    encoder = cfg.num_encoder_layers * (
        b * le * (4 * e * i + mlp) + b * le * le * attn_scores)
    decoder = cfg.num_decoder_layers * (
        b * ld * (4 * e * i + 2 * e * i + mlp)  # self q,k,v,o; cross q,o; MLP
        + b * le * 2 * e * i  # cross k, v from the encoder states
        + b * ld * ld * attn_scores + b * ld * le * attn_scores)
    logits = b * ld * e * cfg.vocab_size
    return 2.0 * (encoder + decoder + logits)


def train_flops(cfg: T5Config, batch: int, inputs_len: int, targets_len: int,
                lora: LoraConfig | None = None, *, frozen_base: bool = False) -> float:
    """Forward + backward. A frozen base (a LoRA or prompt-tuning run: `frozen_base`, implied
    by an enabled `lora`) gets no weight gradients, so it costs its forward plus the
    activation gradients (one forward again), and LoRA's adapters their own forward and
    backward: counting it as a full finetune would overstate its MFU ~1.5x."""
    forward = forward_flops(cfg, batch, inputs_len, targets_len)
    if lora is not None and lora.enabled:
        return 2.0 * forward + 3.0 * adapter_flops(cfg, lora, batch, inputs_len, targets_len)
    return 2.0 * forward if frozen_base else 3.0 * forward


def adapter_flops(cfg: T5Config, lora: LoraConfig, batch: int, inputs_len: int,
                  targets_len: int) -> float:
    """The forward FLOPs of `lora`'s adapters alone: (x @ A) @ B for every token through
    each adapted projection (a T5 decoder's cross-attention k and v see the inputs)."""
    import math

    from flan_jax.model.lora import abstract_lora_model, adapter_dicts, split_params
    b, le, ld = batch, inputs_len, targets_len
    total = 0.0
    for path, adapters in adapter_dicts(split_params(abstract_lora_model(cfg, lora))[1]):
        for name, ab in adapters.items():
            a_shape, b_shape = ab["lora_a"].shape, ab["lora_b"].shape
            if cfg.architecture != "encoder_decoder":
                tokens = b * (le + ld)
            elif path[0] == "encoder" or (path[-1] == "cross_attn" and name in ("k", "v")):
                tokens = b * le
            else:
                tokens = b * ld
            total += tokens * lora.rank * (math.prod(a_shape[:-1]) + math.prod(b_shape[1:]))
    return 2.0 * total
