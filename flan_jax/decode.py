"""Autoregressive decoding with the KV cache, compiled once per (shapes, max length).

Greedy decoding lives here now; temperature / top-k / top-p sampling and beam search join it
with the training issue. Every strategy drives `T5.init_cache` + `T5.decode_step`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.t5 import T5, default_segment_ids


class DecodeResult(NamedTuple):
    tokens: jax.Array  # int32 [b, max_decode_len]; pad after EOS
    lengths: jax.Array  # int32 [b]; generated tokens including EOS
    step_logits: jax.Array | None  # f32 [b, max_decode_len, vocab] when asked for


def greedy_decode(model: T5, encoder_input_tokens: jax.Array, *, max_decode_len: int,
                  encoder_segment_ids: jax.Array | None = None,
                  return_logits: bool = False) -> DecodeResult:
    """Argmax decoding from the start token until EOS (or `max_decode_len`) for every row."""
    if encoder_segment_ids is None:
        encoder_segment_ids = default_segment_ids(encoder_input_tokens, model.cfg.pad_id)
    graphdef, state = nnx.split(model)
    return _greedy(graphdef, state, jnp.asarray(encoder_input_tokens, jnp.int32),
                   jnp.asarray(encoder_segment_ids, jnp.int32), max_decode_len, return_logits)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _greedy(graphdef, state, enc_tokens: jax.Array, enc_segments: jax.Array,
            max_decode_len: int, return_logits: bool) -> DecodeResult:
    model: T5 = nnx.merge(graphdef, state)
    cfg = model.cfg
    b = enc_tokens.shape[0]
    encoded = model.encode(enc_tokens, enc_segments)
    cache = model.init_cache(encoded, enc_segments, max_decode_len)
    tokens = jnp.full((b, max_decode_len), cfg.pad_id, jnp.int32)
    logits_buf = jnp.zeros((b, max_decode_len if return_logits else 0, cfg.vocab_size),
                           jnp.float32)
    prev = jnp.full((b,), cfg.decoder_start_id, jnp.int32)
    done = jnp.zeros((b,), bool)
    lengths = jnp.zeros((b,), jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < max_decode_len) & ~jnp.all(done)

    def body(carry):
        i, prev, cache, done, tokens, lengths, logits_buf = carry
        logits, cache = model.decode_step(cache, prev)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, cfg.pad_id, nxt)
        tokens = tokens.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        if return_logits:
            logits_buf = logits_buf.at[:, i].set(logits)
        done = done | (nxt == cfg.eos_id)
        return i + 1, nxt, cache, done, tokens, lengths, logits_buf

    carry = (jnp.zeros((), jnp.int32), prev, cache, done, tokens, lengths, logits_buf)
    _, _, _, _, tokens, lengths, logits_buf = jax.lax.while_loop(cond, body, carry)
    return DecodeResult(tokens, lengths, logits_buf if return_logits else None)
