"""METALM's semi-causal model: a bidirectional encoder docked onto a causal decoder-only LM.

Hao et al. 2022 ("Language Models are General-Purpose Interfaces"): spans of the decoder's
input stream are encoded by a non-causal encoder; a connector maps the encoder's outputs to
the decoder's embedding space, where they take the place of those spans' token embeddings.
The decoder stays causal and has no cross-attention; the loss covers the causal tokens only
(the feature writer gives encoded positions no loss weight).

Features: the decoder-only layout plus `decoder_encoded_span` (1 on the positions of
`decoder_input_tokens` to encode; `reader.packing`'s "semi_causal" converter marks each
example's inputs). Every maximal run of 1s within a packed segment is one span, encoded on
its own (bidirectionally within itself, T5's bidirectional relative position bias).

Connectors (`T5Config.connector`):
- "linear": a [embed, embed] projection of each encoded token, so a span keeps its width.
- "pooled": `connector_tokens` learned queries attend over their span's encoder outputs
  (one attention layer); the k results take the span's last k positions, and the span's
  earlier positions are hidden from every query of the decoder (their keys are masked), so
  the decoder sees k vectors per span whatever its width. A span shorter than k takes the
  last `width` queries. The layout (and positions) stay those of the linear connector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.attention import Attention, prepare_attention
from flan_jax.model.config import T5Config
from flan_jax.model.decoder_only import DecoderOnly, prompt_live, segments_and_positions
from flan_jax.model.layers import RelativePositionBias, RMSNorm, dropout, param
from flan_jax.model.t5 import Cache, EncoderLayer, default_positions, remat, stack_backend


def span_layout(encoded_span: jax.Array, segment_ids: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """(span ids int [b, l]: 1, 2, ... per run of encoded positions within a segment, 0
    elsewhere; rank from the span's end int [b, l]: 0 at a span's last position)."""
    span = (encoded_span > 0) & (segment_ids > 0)
    b, l = span.shape
    false = jnp.zeros((b, 1), bool)
    same_as_prev = jnp.concatenate([false, span[:, :-1] & (segment_ids[:, :-1]
                                                            == segment_ids[:, 1:])], axis=1)
    same_as_next = jnp.concatenate([span[:, 1:] & (segment_ids[:, 1:] == segment_ids[:, :-1]),
                                    false], axis=1)
    start, end = span & ~same_as_prev, span & ~same_as_next
    span_ids = jnp.cumsum(start, axis=1, dtype=jnp.int32) * span
    index = jnp.arange(l, dtype=jnp.int32)
    next_end = jax.lax.cummin(jnp.where(end, index, l), axis=1, reverse=True)
    return span_ids, jnp.where(span, next_end - index, 0)


class SemiCausal(DecoderOnly):
    """`DecoderOnly`'s causal stack (the same parameters, under the same names) plus
    `encoder_layers` (`cfg.num_encoder_layers` T5 encoder layers, their own bidirectional
    relative bias and final norm) and the connector. The token embedding is shared."""

    ARCHITECTURE = "semi_causal"

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.encoder_relpos = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
        self.encoder_layers = nnx.List([EncoderLayer(cfg, rngs=rngs)
                                        for _ in range(cfg.num_encoder_layers)])
        self.encoder_norm = RMSNorm(cfg, rngs=rngs)
        pd, e = cfg.jnp_param_dtype, cfg.d_model
        if cfg.connector == "linear":
            self.connector = param(rngs, nnx.initializers.normal(e**-0.5), (e, e), pd,
                                   ("embed", "mlp"))
        else:
            self.connector_queries = param(rngs, nnx.initializers.normal(1.0),
                                           (cfg.connector_tokens, e), pd,
                                           ("connector_tokens", "embed"))
            self.connector_pool = Attention(cfg, rngs=rngs)

    def __call__(self, decoder_input_tokens: jax.Array, *,
                 decoder_segment_ids: jax.Array | None = None,
                 decoder_positions: jax.Array | None = None,
                 decoder_encoded_span: jax.Array | None = None,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """int [b, l] -> f32 logits [b, l, vocab]; without `decoder_encoded_span`, the causal
        decoder alone. Defaults as `DecoderOnly.__call__`."""
        decoder_segment_ids, decoder_positions = segments_and_positions(
            decoder_input_tokens, decoder_segment_ids, decoder_positions)
        if decoder_encoded_span is None:
            decoder_encoded_span = jnp.zeros_like(decoder_input_tokens)
        x, visible = self.embed_with_spans(decoder_input_tokens, decoder_encoded_span,
                                           decoder_segment_ids, decoder_positions, rngs)
        return self.run_stack(x, decoder_segment_ids, decoder_positions,
                              kv_segment_ids=decoder_segment_ids * visible, rngs=rngs)

    def embed_with_spans(self, tokens: jax.Array, encoded_span: jax.Array,
                         segment_ids: jax.Array, positions: jax.Array,
                         rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """(decoder inputs [b, l, embed]: token embeddings, the connector's outputs on
        encoded spans; int [b, l] 1 where a key is visible to the decoder, 0 where the
        pooled connector hides it)."""
        cfg = self.cfg
        embedded = self.token_embedder(tokens)
        span_ids, rank = span_layout(encoded_span, segment_ids)
        inputs = prepare_attention(
            q_segment_ids=span_ids, kv_segment_ids=span_ids, q_positions=positions,
            kv_positions=positions, causal=False, relpos=self.encoder_relpos,
            backend=stack_backend(cfg, rngs))
        h = dropout(embedded, cfg.dropout_rate, rngs)
        run = remat(lambda layer, h, rngs: layer(h, inputs, rngs), cfg.remat)
        for layer in self.encoder_layers:
            h = run(layer, h, rngs)
        h = self.encoder_norm(h)
        dt = cfg.jnp_dtype
        visible = jnp.ones_like(span_ids)
        if cfg.connector == "linear":
            out = jnp.einsum("ble,ef->blf", h, self.connector[...].astype(dt))
        else:
            k = cfg.connector_tokens
            # The span's last k positions hold queries k-1, k-2, ... counting back from its end.
            which = jnp.clip(k - 1 - rank, 0, k - 1)
            queries = self.connector_queries[...].astype(dt)[which]  # [b, l, embed]
            pool_inputs = prepare_attention(
                q_segment_ids=span_ids, kv_segment_ids=span_ids, q_positions=positions,
                kv_positions=positions, causal=False, relpos=None,
                backend=stack_backend(cfg, rngs))
            out = queries + self.connector_pool(queries, h, pool_inputs, rngs)
            visible = jnp.where((span_ids > 0) & (rank >= k), 0, 1).astype(span_ids.dtype)
        x = jnp.where((span_ids > 0)[..., None], out.astype(embedded.dtype), embedded)
        return x, visible

    def prefill(self, prompt_tokens: jax.Array, max_len: int, *,
                prompt_lengths: jax.Array | None = None,
                prefix: bool = False) -> tuple[jax.Array, Cache]:
        """As `DecoderOnly.prefill`, the prompt [start, inputs] with its inputs encoded (every
        live token after the first, as the "semi_causal" features mark them); `prefix` has
        no meaning here (the decoder is causal; the encoder sees the span whole)."""
        del prefix
        live = prompt_live(prompt_tokens, max_len, prompt_lengths)
        b, lp = live.shape
        index = jnp.arange(lp)[None, :]
        x, visible = self.embed_with_spans(
            prompt_tokens, (live & (index >= 1)).astype(jnp.int32), live.astype(jnp.int32),
            default_positions(prompt_tokens))
        x, cache = self._extend(self.init_cache(b, max_len), prompt_tokens, live, False,
                                embeddings=x, key_live=visible > 0)
        return self.logits(x), cache
