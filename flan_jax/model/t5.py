"""The T5 encoder-decoder (T5 1.0, 1.1, Flan-T5) in Flax NNX.

Inputs use seqio's `EncDecFeatureConverter` names. Packed rows pass `*_segment_ids`
(0 = padding) and `*_positions` (restarting at 0 per example); without them, segments come
from padding and positions count from 0. `init_cache` + `decode_step` run the decoder one
token at a time and reproduce the full forward. With `T5Config.prompt_length` P > 0 the encoder
runs over a soft prompt and the tokens (`prompt.prepend`): the encoded states are P + le long,
while every `encoder_segment_ids` argument stays the input tokens' [b, le].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.attention import (Attention, AttentionInputs, prepare_attention,
                                      resolve_backend)
from flan_jax.model.config import T5Config
from flan_jax.model.layers import MLP, Embed, RelativePositionBias, RMSNorm, dropout, param
from flan_jax.model.prompt import extend_segment_ids, prepend, prompt_param

Cache = dict[str, Any]


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.self_attn_norm = RMSNorm(cfg, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.rate = cfg.dropout_rate

    def __call__(self, x: jax.Array, inputs: AttentionInputs,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.self_attn_norm(x)
        x = x + dropout(self.self_attn(h, h, inputs, rngs), self.rate, rngs)
        h = self.mlp_norm(x)
        return x + dropout(self.mlp(h, rngs), self.rate, rngs)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.self_attn_norm = RMSNorm(cfg, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.cross_attn_norm = RMSNorm(cfg, rngs=rngs)
        self.cross_attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.rate = cfg.dropout_rate

    def _rest(self, x: jax.Array, cross_k: jax.Array, cross_v: jax.Array,
              cross_inputs: AttentionInputs, rngs: nnx.Rngs | None) -> jax.Array:
        h = self.cross_attn_norm(x)
        x = x + dropout(self.cross_attn.attend(h, cross_k, cross_v, cross_inputs, rngs),
                        self.rate, rngs)
        h = self.mlp_norm(x)
        return x + dropout(self.mlp(h, rngs), self.rate, rngs)

    def __call__(self, x: jax.Array, encoded: jax.Array, self_inputs: AttentionInputs,
                 cross_inputs: AttentionInputs, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.self_attn_norm(x)
        x = x + dropout(self.self_attn(h, h, self_inputs, rngs), self.rate, rngs)
        cross_k, cross_v = self.cross_attn.project_kv(encoded, rngs)
        return self._rest(x, cross_k, cross_v, cross_inputs, rngs)

    def step(self, x: jax.Array, layer_cache: Cache, index: jax.Array,
             self_inputs: AttentionInputs,
             cross_inputs: AttentionInputs) -> tuple[jax.Array, Cache]:
        """One decoding position: x [b, 1, embed]; writes this position's k/v at `index`."""
        h = self.self_attn_norm(x)
        k_new, v_new = self.self_attn.project_kv(h)  # [b, 1, h, d]
        k = jax.lax.dynamic_update_slice_in_dim(layer_cache["self_k"], k_new.astype(
            layer_cache["self_k"].dtype), index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(layer_cache["self_v"], v_new.astype(
            layer_cache["self_v"].dtype), index, axis=1)
        x = x + self.self_attn.attend(h, k, v, self_inputs)
        x = self._rest(x, layer_cache["cross_k"], layer_cache["cross_v"], cross_inputs, None)
        return x, {**layer_cache, "self_k": k, "self_v": v}


class Encoder(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relpos = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs)
                                for _ in range(cfg.num_encoder_layers)])
        self.final_norm = RMSNorm(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        inputs = prepare_attention(
            q_segment_ids=segment_ids, kv_segment_ids=segment_ids, q_positions=positions,
            kv_positions=positions, causal=False, relpos=self.relpos,
            backend=stack_backend(self.cfg, rngs))
        x = dropout(x, self.cfg.dropout_rate, rngs)
        run = remat(lambda layer, x, rngs: layer(x, inputs, rngs), self.cfg.remat)
        for layer in self.layers:
            x = run(layer, x, rngs)
        return dropout(self.final_norm(x), self.cfg.dropout_rate, rngs)


class Decoder(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relpos = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs)
                                for _ in range(cfg.num_decoder_layers)])
        self.final_norm = RMSNorm(cfg, rngs=rngs)

    def _inputs(self, segment_ids: jax.Array, positions: jax.Array, kv_segment_ids: jax.Array,
                kv_positions: jax.Array, encoder_segment_ids: jax.Array, backend: str,
                ) -> tuple[AttentionInputs, AttentionInputs]:
        self_inputs = prepare_attention(
            q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_positions=positions,
            kv_positions=kv_positions, causal=True, relpos=self.relpos, backend=backend)
        cross_inputs = prepare_attention(
            q_segment_ids=segment_ids, kv_segment_ids=encoder_segment_ids,
            q_positions=positions, kv_positions=jnp.zeros_like(encoder_segment_ids),
            causal=False, relpos=None, backend=backend)
        return self_inputs, cross_inputs

    def __call__(self, x: jax.Array, encoded: jax.Array, segment_ids: jax.Array,
                 positions: jax.Array, encoder_segment_ids: jax.Array,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        self_inputs, cross_inputs = self._inputs(segment_ids, positions, segment_ids, positions,
                                                 encoder_segment_ids, stack_backend(self.cfg, rngs))
        x = dropout(x, self.cfg.dropout_rate, rngs)
        run = remat(lambda layer, x, encoded, rngs: layer(x, encoded, self_inputs, cross_inputs,
                                                          rngs), self.cfg.remat)
        for layer in self.layers:
            x = run(layer, x, encoded, rngs)
        return dropout(self.final_norm(x), self.cfg.dropout_rate, rngs)

    def step(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        b, max_len = cache["layers"][0]["self_k"].shape[:2]
        index = cache["index"]
        positions = jnp.full((b, 1), index, jnp.int32)
        kv_positions = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (b, max_len))
        # One query per step: always the xla backend (flash kernels tile long queries).
        self_inputs, cross_inputs = self._inputs(
            jnp.ones((b, 1), jnp.int32), positions, jnp.ones((b, max_len), jnp.int32),
            kv_positions, cache["encoder_segment_ids"], "xla")
        new_layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            x, layer_cache = layer.step(x, layer_cache, index, self_inputs, cross_inputs)
            new_layers.append(layer_cache)
        x = self.final_norm(x)
        return x, {**cache, "index": index + 1, "layers": tuple(new_layers)}


def stack_backend(cfg: T5Config, rngs: nnx.Rngs | None) -> str:
    """The attention backend of one forward pass: 'auto' avoids kernels without dropout
    when this pass applies attention dropout."""
    return resolve_backend(cfg.attention_backend,
                           attention_dropout=rngs is not None and cfg.dropout_rate > 0)


def remat(fn, policy: str):
    """`fn(layer, ...)` rematerialized per T5Config.remat (the attention inputs, shared by
    all layers, are closed over and computed once, outside the checkpoint)."""
    if policy == "none":
        return fn
    saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots"
                else jax.checkpoint_policies.nothing_saveable)
    return nnx.remat(fn, policy=saveable)


def default_segment_ids(tokens: jax.Array, pad_id: int) -> jax.Array:
    return (tokens != pad_id).astype(jnp.int32)


def default_positions(tokens: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class T5(nnx.Module):
    """Encoder-decoder with a shared token embedding; logits in f32."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.token_embedder = Embed(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.logits_dense = param(rngs, nnx.initializers.normal(cfg.d_model**-0.5),
                                      (cfg.d_model, cfg.vocab_size), cfg.jnp_param_dtype,
                                      ("embed", "vocab"))
        # Last, so the other params draw what they draw without a prompt.
        self.prompt = (prompt_param(cfg, self.token_embedder.embedding, rngs)
                       if cfg.prompt_length else None)  # [prompt_length, embed]

    def encode(self, encoder_input_tokens: jax.Array,
               encoder_segment_ids: jax.Array | None = None,
               encoder_positions: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """int [b, le] -> encoder states [b, prompt_length + le, embed] (compute dtype)."""
        if encoder_segment_ids is None:
            encoder_segment_ids = default_segment_ids(encoder_input_tokens, self.cfg.pad_id)
        if encoder_positions is None:
            encoder_positions = default_positions(encoder_input_tokens)
        x = self.token_embedder(encoder_input_tokens)
        if self.prompt is not None:
            x, encoder_segment_ids, encoder_positions = prepend(
                self.prompt[...], x, encoder_segment_ids, encoder_positions)
        return self.encoder(x, encoder_segment_ids, encoder_positions, rngs)

    def _encoded_segment_ids(self, encoded: jax.Array, encoder_segment_ids: jax.Array
                             ) -> jax.Array:
        """The input tokens' segment ids [b, le] -> those of `encoded` [b, P + le, embed]."""
        if self.prompt is not None:
            encoder_segment_ids = extend_segment_ids(encoder_segment_ids,
                                                     self.cfg.prompt_length)
        if encoder_segment_ids.shape[1] != encoded.shape[1]:
            raise ValueError(
                f"encoder_segment_ids cover {encoder_segment_ids.shape[1]} positions (with a "
                f"prompt_length={self.cfg.prompt_length} prompt), the encoded states "
                f"{encoded.shape[1]}: pass the input tokens' segment ids")
        return encoder_segment_ids

    def logits(self, y: jax.Array) -> jax.Array:
        """Final decoder states [b, l, embed] -> f32 logits [b, l, vocab]."""
        if self.cfg.scale_decoder_outputs:
            y = y * (self.cfg.d_model**-0.5)
        if self.cfg.tie_embeddings:
            out = self.token_embedder.attend(y)
        else:
            out = y @ self.logits_dense[...].astype(y.dtype)
        return out.astype(jnp.float32)

    def decode(self, encoded: jax.Array, encoder_segment_ids: jax.Array,
               decoder_input_tokens: jax.Array,
               decoder_segment_ids: jax.Array | None = None,
               decoder_positions: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """Teacher-forced decoder -> f32 logits [b, ld, vocab]. `encoder_segment_ids`: the
        input tokens' [b, le] (`encode`'s states may be longer: the prompt's).

        Without segment ids every decoder position is live: the first input token is the
        start token, which equals the pad id in T5, so padding can't be inferred from tokens.
        """
        if decoder_segment_ids is None:
            decoder_segment_ids = jnp.ones_like(decoder_input_tokens, dtype=jnp.int32)
        if decoder_positions is None:
            decoder_positions = default_positions(decoder_input_tokens)
        y = self.token_embedder(decoder_input_tokens)
        y = self.decoder(y, encoded, decoder_segment_ids, decoder_positions,
                         self._encoded_segment_ids(encoded, encoder_segment_ids), rngs)
        return self.logits(y)

    def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None,
                 decoder_segment_ids: jax.Array | None = None,
                 encoder_positions: jax.Array | None = None,
                 decoder_positions: jax.Array | None = None,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """Full teacher-forced forward -> f32 logits [b, ld, vocab]. `rngs` enables dropout."""
        if encoder_segment_ids is None:
            encoder_segment_ids = default_segment_ids(encoder_input_tokens, self.cfg.pad_id)
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, rngs)
        return self.decode(encoded, encoder_segment_ids, decoder_input_tokens,
                           decoder_segment_ids, decoder_positions, rngs)

    def init_cache(self, encoded: jax.Array, encoder_segment_ids: jax.Array,
                   max_decode_len: int) -> Cache:
        """Decoding state: per-layer cross k/v from `encoded`, empty self k/v, index 0
        (`encoder_segment_ids`: the input tokens', as in `decode`)."""
        cfg = self.cfg
        b = encoded.shape[0]
        zeros = jnp.zeros((b, max_decode_len, cfg.num_heads, cfg.head_dim), cfg.jnp_dtype)
        layers = []
        for layer in self.decoder.layers:
            cross_k, cross_v = layer.cross_attn.project_kv(encoded)
            layers.append({"self_k": zeros, "self_v": zeros,
                           "cross_k": cross_k, "cross_v": cross_v})
        return {"index": jnp.zeros((), jnp.int32),
                "encoder_segment_ids": self._encoded_segment_ids(
                    encoded, encoder_segment_ids).astype(jnp.int32),
                "layers": tuple(layers)}

    def decode_step(self, cache: Cache, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """tokens int [b] at position cache['index'] -> (f32 logits [b, vocab], new cache)."""
        y = self.token_embedder(tokens[:, None])
        y, cache = self.decoder.step(y, cache)
        return self.logits(y)[:, 0], cache
