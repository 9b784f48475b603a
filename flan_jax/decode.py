"""Autoregressive decoding with the KV cache: greedy, temperature / top-k / top-p sampling, beam.

Every strategy starts once per row (`T5`: encode, `init_cache`, step the start token; a
`DecoderOnly`: `prefill` the prompt [start, inputs]), then drives `decode_step` inside one
jitted `lax.while_loop`, compiled once per (shapes, max length, static options). `decode`
picks a strategy by name (for the CLI and gin).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.model.decoder_only import DecoderOnly
from flan_jax.model.t5 import T5, default_segment_ids

# A finite "impossible" log-prob (as in HF and t5x): sums with it stay ordered and never NaN.
NEG_INF = -1.0e9


class DecodeResult(NamedTuple):
    tokens: jax.Array  # int32 [b, max_decode_len]; pad after EOS
    lengths: jax.Array  # int32 [b]; generated tokens including EOS
    step_logits: jax.Array | None  # f32 [b, max_decode_len, vocab] when asked for


class BeamResult(NamedTuple):
    tokens: jax.Array  # int32 [b, num_return, max_decode_len]; best first; pad after EOS
    scores: jax.Array  # f32 [b, num_return]; sum of token log-probs / length**length_penalty
    lengths: jax.Array  # int32 [b, num_return]; generated tokens including EOS


def decode(model: T5 | DecoderOnly, encoder_input_tokens: jax.Array, *,
           method: str = "greedy", **kwargs: Any) -> DecodeResult | BeamResult:
    """Runs `greedy_decode`, `sample_decode` or `beam_search` by `method` name, with `kwargs`;
    returns that function's result (a `BeamResult` for "beam", else a `DecodeResult`)."""
    fns = {"greedy": greedy_decode, "sample": sample_decode, "beam": beam_search}
    if method not in fns:
        raise ValueError(f"decode method={method!r}: expected one of {sorted(fns)}")
    return fns[method](model, encoder_input_tokens, **kwargs)


def greedy_decode(model: T5 | DecoderOnly, encoder_input_tokens: jax.Array, *,
                  max_decode_len: int, encoder_segment_ids: jax.Array | None = None,
                  return_logits: bool = False, prefix: bool = False) -> DecodeResult:
    """Argmax decoding from the start token until EOS (or `max_decode_len`) for every row.

    A `DecoderOnly` model continues the prompt [start, inputs] as the decoder / prefix-LM
    features lay it out; `prefix`: the model was trained as a prefix LM (the prompt is then
    seen bidirectionally)."""
    graphdef, state, tokens, segments = _prepare(model, encoder_input_tokens,
                                                 encoder_segment_ids, max_decode_len)
    return _sample_loop(graphdef, state, tokens, segments, None, jnp.float32(1.0),
                        jnp.float32(1.0), max_decode_len=max_decode_len, top_k=0,
                        use_top_p=False, greedy=True, return_logits=return_logits,
                        prefix=prefix)


def sample_decode(model: T5 | DecoderOnly, encoder_input_tokens: jax.Array, *,
                  rng: jax.Array, max_decode_len: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0,
                  encoder_segment_ids: jax.Array | None = None,
                  return_logits: bool = False, prefix: bool = False) -> DecodeResult:
    """Ancestral sampling; the same `rng` key gives the same tokens.

    Each step divides the f32 logits by `temperature` (0 means greedy), keeps the `top_k`
    largest (0 keeps all), then keeps the nucleus: the fewest most likely tokens whose
    probability (after the first two filters) sums to at least `top_p` (1 keeps all). Tokens
    tied with the last one kept are kept too. Step i draws with `fold_in(rng, i)`.
    `temperature` and `top_p` are traced (changing them does not recompile); `top_k` and
    whether `top_p < 1` are static.
    """
    if temperature < 0:
        raise ValueError(f"sample_decode temperature={temperature} must be >= 0")
    top_k = operator.index(top_k)  # an int (numpy ints too), since it is static
    if top_k < 0:
        raise ValueError(f"sample_decode top_k={top_k} must be >= 0 (0 keeps every token)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample_decode top_p={top_p} must be in (0, 1]")
    graphdef, state, tokens, segments = _prepare(model, encoder_input_tokens,
                                                 encoder_segment_ids, max_decode_len)
    greedy = temperature == 0.0
    return _sample_loop(graphdef, state, tokens, segments, None if greedy else rng,
                        jnp.float32(1.0 if greedy else temperature), jnp.float32(top_p),
                        max_decode_len=max_decode_len,
                        top_k=0 if greedy or top_k >= model.cfg.vocab_size else top_k,
                        use_top_p=not greedy and top_p < 1.0, greedy=greedy,
                        return_logits=return_logits, prefix=prefix)


def beam_search(model: T5 | DecoderOnly, encoder_input_tokens: jax.Array, *,
                beam_size: int = 4, max_decode_len: int, length_penalty: float = 0.6,
                encoder_segment_ids: jax.Array | None = None, num_return: int = 1,
                prefix: bool = False) -> BeamResult:
    """Beam search; returns the `num_return` best finished hypotheses per row, best first.

    A hypothesis finishes at EOS or when it reaches `max_decode_len` tokens; its score is
    Hugging Face's `sum(log p) / length**length_penalty` (length = generated tokens including
    EOS; t5x's ((5 + length) / 6)**alpha is not used). The step follows `transformers`'
    beam search: of the top 2*beam_size expansions, the best beam_size that did not finish
    stay alive, and those that finished *and rank among the top beam_size* join the
    finished pool (best beam_size kept). A row stops once its pool is full and no alive beam
    can beat its worst entry: the bound is the best alive score at the current length, or
    at `max_decode_len` when `length_penalty > 0` (HF's `early_stopping="never"`, exact).
    `length_penalty` is traced (changing it does not recompile).

    Each row starts once (T5 encodes it; a `DecoderOnly` model prefills [start, inputs], as
    `greedy_decode`, `prefix` as there); its cache is then copied to its beams and reordered
    with them every step.
    """
    if beam_size < 1:
        raise ValueError(f"beam_search beam_size={beam_size} must be >= 1")
    if not 1 <= num_return <= beam_size:
        raise ValueError(f"beam_search num_return={num_return} must be in [1, beam_size="
                         f"{beam_size}]")
    if model.cfg.vocab_size < 2:
        raise ValueError("beam_search needs a vocabulary of at least 2 tokens")
    graphdef, state, tokens, segments = _prepare(model, encoder_input_tokens,
                                                 encoder_segment_ids, max_decode_len)
    best = _beam_loop(graphdef, state, tokens, segments, jnp.float32(length_penalty),
                      max_decode_len=max_decode_len, beam_size=beam_size, prefix=prefix)
    return BeamResult(*(x[:, :num_return] for x in best))


def _prepare(model: T5 | DecoderOnly, tokens: jax.Array, segments: jax.Array | None,
             max_decode_len: int):
    if max_decode_len < 1:
        raise ValueError(f"max_decode_len={max_decode_len} must be >= 1")
    if segments is None:
        segments = default_segment_ids(tokens, model.cfg.pad_id)
    graphdef, state = nnx.split(model)
    return (graphdef, state, jnp.asarray(tokens, jnp.int32), jnp.asarray(segments, jnp.int32))


def _filter_logits(logits: jax.Array, top_k: int, top_p: jax.Array | None) -> jax.Array:
    """f32 logits [n, vocab] with all but the top-k / nucleus set to -inf (see sample_decode)."""
    desc = None
    if top_k:
        desc = jax.lax.top_k(logits, top_k)[0]  # [n, top_k], descending
        logits = jnp.where(logits < desc[:, -1:], -jnp.inf, logits)
    if top_p is not None:
        if desc is None:
            desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # the first token always stays
        cutoff = jnp.min(jnp.where(mass_before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _begin(model: T5 | DecoderOnly, enc_tokens: jax.Array, enc_segments: jax.Array,
           max_decode_len: int, prefix: bool) -> tuple[jax.Array, Any]:
    """(logits f32 [b, vocab] of the first generated token, cache): T5 encodes and steps the
    start token; a decoder-only model prefills [start, inputs] (its inputs right-padded)."""
    cfg = model.cfg
    b, li = enc_tokens.shape
    start = jnp.full((b, 1), cfg.decoder_start_id, jnp.int32)
    if isinstance(model, DecoderOnly):
        lengths = 1 + jnp.sum(enc_segments > 0, axis=1).astype(jnp.int32)
        logits, cache = model.prefill(jnp.concatenate([start, enc_tokens], axis=1),
                                      li + 1 + max_decode_len, prompt_lengths=lengths,
                                      prefix=prefix)
        return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0], cache
    encoded = model.encode(enc_tokens, enc_segments)
    return model.decode_step(model.init_cache(encoded, enc_segments, max_decode_len),
                             start[:, 0])


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "max_decode_len", "top_k", "use_top_p", "greedy", "return_logits", "prefix"))
def _sample_loop(graphdef, state, enc_tokens: jax.Array, enc_segments: jax.Array,
                 rng: jax.Array | None, temperature: jax.Array, top_p: jax.Array, *,
                 max_decode_len: int, top_k: int, use_top_p: bool, greedy: bool,
                 return_logits: bool, prefix: bool = False) -> DecodeResult:
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    b = enc_tokens.shape[0]
    logits, cache = _begin(model, enc_tokens, enc_segments, max_decode_len, prefix)
    tokens = jnp.full((b, max_decode_len), cfg.pad_id, jnp.int32)
    logits_buf = jnp.zeros((b, max_decode_len if return_logits else 0, cfg.vocab_size),
                           jnp.float32)
    done = jnp.zeros((b,), bool)
    lengths = jnp.zeros((b,), jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < max_decode_len) & ~jnp.all(done)

    def body(carry):
        i, logits, cache, done, tokens, lengths, logits_buf = carry
        if greedy:
            nxt = jnp.argmax(logits, axis=-1)
        else:
            filtered = _filter_logits(logits / temperature, top_k, top_p if use_top_p else None)
            nxt = jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)
        nxt = jnp.where(done, cfg.pad_id, nxt.astype(jnp.int32))
        tokens = tokens.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        if return_logits:
            logits_buf = logits_buf.at[:, i].set(logits)
        done = done | (nxt == cfg.eos_id)
        # The next position's logits (after the last token: one step unused, written at
        # the clamped last cache slot).
        logits, cache = model.decode_step(cache, nxt)
        return i + 1, logits, cache, done, tokens, lengths, logits_buf

    carry = (jnp.zeros((), jnp.int32), logits, cache, done, tokens, lengths, logits_buf)
    _, _, _, _, tokens, lengths, logits_buf = jax.lax.while_loop(cond, body, carry)
    return DecodeResult(tokens, lengths, logits_buf if return_logits else None)


class _Beams(NamedTuple):
    """Loop state; k = beam_size, L = max_decode_len; beams of a row adjacent in the cache."""
    i: jax.Array  # int32 []: tokens generated so far
    logits: jax.Array  # f32 [b * k, vocab]: each alive beam's next-token logits
    cache: dict  # the model's decoding cache over b * k rows
    alive_seq: jax.Array  # int32 [b, k, L]
    alive_logp: jax.Array  # f32 [b, k]; descending
    fin_seq: jax.Array  # int32 [b, k, L]
    fin_score: jax.Array  # f32 [b, k]; length-penalised; descending
    fin_len: jax.Array  # int32 [b, k]
    fin_flag: jax.Array  # bool [b, k]; False = an empty slot
    done: jax.Array  # bool [b]; no alive beam can enter the finished pool any more


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [b, n, ...] gathered along axis 1 by idx [b, m] -> [b, m, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_leaves(model: T5 | DecoderOnly, cache: Any, b: int) -> tuple[Any, Any]:
    """Two pytrees of bools shaped like a `b`-row cache: (per_row: the arrays with a leading
    batch axis, copied to each beam; moves: those a beam must take from its parent). A
    decoder-only cache's prompt and generated k/v share one buffer, so every per-row array
    moves; a T5 cache's only differ between a row's beams in the self-attention k/v (its
    cross-attention k/v, the largest, stay put). `index` is a scalar shared by all rows."""
    def per_row(x: jax.Array) -> bool:
        return x.ndim >= 1 and x.shape[0] == b

    def moves(path, x: jax.Array) -> bool:
        return per_row(x) and (isinstance(model, DecoderOnly)
                               or getattr(path[-1], "key", None) in ("self_k", "self_v"))

    return jax.tree.map(per_row, cache), jax.tree_util.tree_map_with_path(moves, cache)


@functools.partial(jax.jit, static_argnums=0,
                   static_argnames=("max_decode_len", "beam_size", "prefix"))
def _beam_loop(graphdef, state, enc_tokens: jax.Array, enc_segments: jax.Array,
               length_penalty: jax.Array, *, max_decode_len: int, beam_size: int,
               prefix: bool = False) -> BeamResult:
    """The whole finished pool: BeamResult with num_return = beam_size."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    b, k, L, V = enc_tokens.shape[0], beam_size, max_decode_len, cfg.vocab_size
    logits, cache = _begin(model, enc_tokens, enc_segments, L, prefix)  # [b, V], b rows
    per_row, moves = _beam_leaves(model, cache, b)
    # Every beam of a row gets its own copy of the row's cache: [b, ...] -> [b * k, ...].
    cache = jax.tree.map(lambda x, r: jnp.repeat(x, k, axis=0) if r else x, cache, per_row)
    first = jnp.arange(k) == 0  # only beam 0 is live at the start: no k copies of one token
    init = _Beams(
        i=jnp.zeros((), jnp.int32), logits=jnp.repeat(logits, k, axis=0), cache=cache,
        alive_seq=jnp.full((b, k, L), cfg.pad_id, jnp.int32),
        alive_logp=jnp.broadcast_to(jnp.where(first, 0.0, NEG_INF), (b, k)),
        fin_seq=jnp.full((b, k, L), cfg.pad_id, jnp.int32),
        fin_score=jnp.full((b, k), NEG_INF), fin_len=jnp.zeros((b, k), jnp.int32),
        fin_flag=jnp.zeros((b, k), bool), done=jnp.zeros((b,), bool))

    def cond(s: _Beams):
        return (s.i < L) & ~jnp.all(s.done)

    def body(s: _Beams) -> _Beams:
        i = s.i
        logp = jax.nn.log_softmax(s.logits).reshape(b, k, V)
        total = (s.alive_logp[:, :, None] + logp).reshape(b, k * V)
        # The best 2k expansions: enough to keep k alive even if k of them just finished.
        top_logp, top_idx = jax.lax.top_k(total, 2 * k)  # [b, 2k]
        parent, token = top_idx // V, (top_idx % V).astype(jnp.int32)
        top_seq = _take(s.alive_seq, parent).at[:, :, i].set(token)  # [b, 2k, L]
        ends = (token == cfg.eos_id) | (i + 1 == L)

        # Alive: the best k expansions that did not finish.
        alive_logp, pick = jax.lax.top_k(jnp.where(ends, top_logp + NEG_INF, top_logp), k)
        alive_seq = _take(top_seq, pick)
        rows = jnp.arange(b)[:, None] * k
        reorder = (rows + _take(parent, pick)).reshape(b * k)  # new beam <- its parent's cache
        cache = jax.tree.map(lambda x, m: x[reorder] if m else x, s.cache, moves)
        # Each alive beam's new token into its cache -> its next logits (after the last
        # token: one step unused, written at the clamped last cache slot).
        logits, cache = model.decode_step(cache, alive_seq[:, :, i].reshape(b * k))

        # Finished: expansions that ended, ranked in the top k, while the row is still open.
        length = (i + 1).astype(jnp.float32)
        joins = ends & (jnp.arange(2 * k) < k)[None, :] & ~s.done[:, None]
        new_score = jnp.where(joins, top_logp / length**length_penalty, 2 * NEG_INF)
        score, keep = jax.lax.top_k(jnp.concatenate([s.fin_score, new_score], axis=1), k)
        fin_seq = _take(jnp.concatenate([s.fin_seq, top_seq], axis=1), keep)
        fin_len = _take(jnp.concatenate(
            [s.fin_len, jnp.broadcast_to(i + 1, (b, 2 * k))], axis=1), keep)
        fin_flag = _take(jnp.concatenate([s.fin_flag, joins], axis=1), keep)

        # Stop a row once the best alive beam, at its most favourable length, can't beat
        # the worst of a full pool. Log-probs only fall, so no continuation can beat the bound.
        best_len = jnp.where(length_penalty > 0, jnp.float32(L), length)
        best_alive = alive_logp[:, 0] / best_len**length_penalty
        worst = jnp.where(jnp.all(fin_flag, axis=1), score[:, -1], NEG_INF)
        done = s.done | (best_alive <= worst)
        return _Beams(i + 1, logits, cache, alive_seq, alive_logp, fin_seq, score, fin_len,
                      fin_flag, done)

    s = jax.lax.while_loop(cond, body, init)
    return BeamResult(s.fin_seq, s.fin_score, s.fin_len)
