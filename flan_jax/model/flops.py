"""Analytic matmul FLOPs of a T5 step, for tokens/s -> MFU in benchmarks and training logs.

Counts 2 FLOPs per multiply-add of every matmul (projections, attention scores and values,
MLP, logits); norms, softmax and embedding gathers are ignored, as MFU conventionally does.
A backward pass costs twice the forward.
"""

from __future__ import annotations

from flan_jax.model.config import T5Config


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


def train_flops(cfg: T5Config, batch: int, inputs_len: int, targets_len: int) -> float:
    """Forward + backward."""
    return 3.0 * forward_flops(cfg, batch, inputs_len, targets_len)
