"""A decoder-only T5-style language model (causal or prefix LM) in Flax NNX.

One self-attention stack of T5's layers (`t5.EncoderLayer`: RMS norm, attention with a
relative position bias, MLP) fed seqio's `DecoderFeatureConverter` / `PrefixLMFeatureConverter`
features; `prefill` + `decode_step` run it with a KV cache and reproduce the full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.attention import AttentionInputs, prepare_attention, resolve_backend
from flan_jax.model.config import T5Config
from flan_jax.model.layers import Embed, RelativePositionBias, RMSNorm, dropout, param
from flan_jax.model.t5 import T5, Cache, EncoderLayer, default_positions, remat


class DecoderOnly(nnx.Module):
    """`cfg.num_decoder_layers` self-attention + MLP layers over a shared token embedding.

    Masks: a token sees only tokens of its own packed segment (segment id > 0), causally
    (key position <= query position). Where `decoder_causal_attention` is given (seqio's
    PrefixLMFeatureConverter: 1 over each segment's prefix), prefix tokens also see every
    prefix token of their segment, later ones included; every other token stays causal.
    seqio's 1s cover `decoder_input_tokens`' BOS and all "inputs" tokens, i.e. one position
    past the inputs in `decoder_target_tokens` (the position that reads the inputs' last token
    and predicts the first target): no target token is ever visible to the prefix.

    Relative position bias: one table for the whole stack with causal buckets, for prefix LMs
    too, as t5x's decoder-only model (`t5x/examples/decoder_only`: bidirectional=False)
    does: every key after the query (only prefix keys can be) shares bucket 0 with the
    query's own position. The table thus has the same meaning whatever mask a batch brings,
    and a causal checkpoint can be trained as a prefix LM and back.

    Logits as `T5.logits`: tied (scaled by d_model**-0.5 if `scale_decoder_outputs`) or a
    separate `logits_dense`, in f32.
    """

    ARCHITECTURE = "decoder_only"  # the T5Config.architecture this class builds

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        if cfg.architecture != self.ARCHITECTURE:
            raise ValueError(f"{type(self).__name__} needs T5Config.architecture="
                             f"{self.ARCHITECTURE!r}, not {cfg.architecture!r} "
                             "(params.create_model picks the class)")
        self.cfg = cfg
        self.token_embedder = Embed(cfg, rngs=rngs)
        self.relpos = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs)
                                for _ in range(cfg.num_decoder_layers)])
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.logits_dense = param(rngs, nnx.initializers.normal(cfg.d_model**-0.5),
                                      (cfg.d_model, cfg.vocab_size), cfg.jnp_param_dtype,
                                      ("embed", "vocab"))

    # The same head as T5's (it reads only cfg, token_embedder and logits_dense).
    logits = T5.logits

    def __call__(self, decoder_input_tokens: jax.Array, *,
                 decoder_segment_ids: jax.Array | None = None,
                 decoder_positions: jax.Array | None = None,
                 decoder_causal_attention: jax.Array | None = None,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """int [b, l] -> f32 logits [b, l, vocab]. `rngs` enables dropout.

        Without segment ids every position is live (the first input token is BOS = pad id, so
        padding can't be told from tokens; trailing padding is causally after every real
        token, so it changes none of their logits). Positions default to 0..l-1.
        """
        decoder_segment_ids, decoder_positions = segments_and_positions(
            decoder_input_tokens, decoder_segment_ids, decoder_positions)
        prefix = None if decoder_causal_attention is None else decoder_causal_attention > 0
        return self.run_stack(self.token_embedder(decoder_input_tokens), decoder_segment_ids,
                              decoder_positions, prefix=prefix, rngs=rngs)

    def run_stack(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                  prefix: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
                  rngs: nnx.Rngs | None = None) -> jax.Array:
        """Embedded inputs x [b, l, embed] through the layers -> f32 logits [b, l, vocab].

        `kv_segment_ids` (default `segment_ids`): the keys' segment ids, where a subclass
        hides some positions from every query (0) while still computing their own queries.
        """
        cfg = self.cfg
        inputs = prepare_attention(
            q_segment_ids=segment_ids,
            kv_segment_ids=segment_ids if kv_segment_ids is None else kv_segment_ids,
            q_positions=positions, kv_positions=positions, causal=True,
            relpos=self.relpos, q_prefix=prefix, kv_prefix=prefix,
            backend=resolve_backend(cfg.attention_backend, prefix_mask=prefix is not None,
                                    attention_dropout=rngs is not None and cfg.dropout_rate > 0))
        x = dropout(x, cfg.dropout_rate, rngs)
        run = remat(lambda layer, x, rngs: layer(x, inputs, rngs), cfg.remat)
        for layer in self.layers:
            x = run(layer, x, rngs)
        return self.logits(dropout(self.final_norm(x), cfg.dropout_rate, rngs))

    # --- incremental decoding ----------------------------------------------------------------

    def init_cache(self, batch: int, max_len: int) -> Cache:
        """An empty cache of `max_len` slots: per-layer k/v [b, max_len, heads, head_dim] (compute
        dtype), each slot's segment id (0 = empty or padding) and position, the next slot
        `index` and each row's next position."""
        cfg = self.cfg
        zeros = jnp.zeros((batch, max_len, cfg.num_heads, cfg.head_dim), cfg.jnp_dtype)
        return {"index": jnp.zeros((), jnp.int32),
                "next_position": jnp.zeros((batch,), jnp.int32),
                "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
                "positions": jnp.zeros((batch, max_len), jnp.int32),
                "layers": tuple({"k": zeros, "v": zeros} for _ in self.layers)}

    def prefill(self, prompt_tokens: jax.Array, max_len: int, *,
                prompt_lengths: jax.Array | None = None,
                prefix: bool = False) -> tuple[jax.Array, Cache]:
        """Runs a prompt int [b, lp] in one pass -> (f32 logits [b, lp, vocab], cache).

        `prompt_lengths` int [b]: live tokens per row, padding after (default: all lp).
        `prefix`: the prompt is a prefix-LM prefix (what decoder_causal_attention marks:
        BOS and the inputs), bidirectional over its live tokens; otherwise causal. Row i's
        next token is predicted by logits[i, prompt_lengths[i] - 1]; `decode_step` feeds it.
        """
        live = prompt_live(prompt_tokens, max_len, prompt_lengths)
        x, cache = self._extend(self.init_cache(live.shape[0], max_len), prompt_tokens, live,
                                prefix)
        return self.logits(x), cache

    def decode_step(self, cache: Cache, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """tokens int [b] into the next slot -> (f32 logits [b, vocab], new cache); causal.

        Slots beyond max_len are not checked under jit: size the cache for prompt + steps.
        """
        x, cache = self._extend(cache, tokens[:, None], jnp.ones(tokens.shape + (1,), bool),
                                prefix=False)
        return self.logits(x)[:, 0], cache

    def _extend(self, cache: Cache, tokens: jax.Array, live: jax.Array, prefix: bool, *,
                embeddings: jax.Array | None = None,
                key_live: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        """Writes n tokens [b, n] (live: bool [b, n]) into slots index..index+n and runs them
        against the cache -> (final states [b, n, embed], cache). Always xla: decoding queries
        are few, and the cache's empty slots are masked by segment id 0.

        `embeddings` [b, n, embed] stand in for the tokens' embeddings; `key_live` (default
        `live`) marks which of the live slots later queries may see (a subclass's hidden
        positions still take a position and compute their own query).
        """
        index = cache["index"]
        n = tokens.shape[1]
        segment_ids = live.astype(jnp.int32)  # [b, n]
        key_segment_ids = segment_ids if key_live is None else (live & key_live).astype(jnp.int32)
        positions = cache["next_position"][:, None] + jnp.arange(n, dtype=jnp.int32)
        kv_segment_ids = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"],
                                                             key_segment_ids, index, axis=1)
        kv_positions = jax.lax.dynamic_update_slice_in_dim(cache["positions"], positions,
                                                           index, axis=1)
        q_prefix = kv_prefix = None
        if prefix:  # only this chunk's live tokens are the prefix
            q_prefix = live
            kv_prefix = jax.lax.dynamic_update_slice_in_dim(
                jnp.zeros(kv_segment_ids.shape, bool), live, index, axis=1)
        inputs = prepare_attention(
            q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_positions=positions,
            kv_positions=kv_positions, causal=True, relpos=self.relpos, backend="xla",
            q_prefix=q_prefix, kv_prefix=kv_prefix)
        x = self.token_embedder(tokens) if embeddings is None else embeddings
        new_layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            x, layer_cache = _cached_layer(layer, x, layer_cache, index, inputs)
            new_layers.append(layer_cache)
        return self.final_norm(x), {
            "index": index + n,
            "next_position": cache["next_position"] + live.sum(axis=1, dtype=jnp.int32),
            "segment_ids": kv_segment_ids, "positions": kv_positions,
            "layers": tuple(new_layers)}


def segments_and_positions(tokens: jax.Array, segment_ids: jax.Array | None,
                           positions: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """A decoder-only batch's segment ids (default: every position live) and positions
    (default: 0..l-1); see `DecoderOnly.__call__`."""
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens, dtype=jnp.int32)
    if positions is None:
        positions = default_positions(tokens)
    return segment_ids, positions


def prompt_live(prompt_tokens: jax.Array, max_len: int,
                prompt_lengths: jax.Array | None) -> jax.Array:
    """bool [b, lp]: a prompt's live tokens (`prompt_lengths` per row, default all), after
    checking that it fits a cache of `max_len` slots."""
    b, lp = prompt_tokens.shape
    if lp > max_len:
        raise ValueError(f"prefill: prompt length {lp} > max_len {max_len}")
    if prompt_lengths is None:
        return jnp.ones((b, lp), bool)
    return jnp.arange(lp)[None, :] < prompt_lengths[:, None]


def _cached_layer(layer: EncoderLayer, x: jax.Array, layer_cache: Cache, index: jax.Array,
                  inputs: AttentionInputs) -> tuple[jax.Array, Cache]:
    """`EncoderLayer.__call__` without dropout, its k/v [b, n, h, d] written at `index` and
    its queries run against the whole cache."""
    h = layer.self_attn_norm(x)
    k_new, v_new = layer.self_attn.project_kv(h)
    k = jax.lax.dynamic_update_slice_in_dim(
        layer_cache["k"], k_new.astype(layer_cache["k"].dtype), index, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(
        layer_cache["v"], v_new.astype(layer_cache["v"].dtype), index, axis=1)
    x = x + layer.self_attn.attend(h, k, v, inputs)
    x = x + layer.mlp(layer.mlp_norm(x))
    return x, {"k": k, "v": v}
