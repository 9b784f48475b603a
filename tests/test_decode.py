"""Decoding strategies against references that share no code with them: a full (non-cached)
forward pass for log-probs (T5's, or a decoder-only model's over [start, inputs, targets]),
numpy top-k / nucleus sets, an exhaustive search over a tiny vocabulary, sampling
frequencies vs softmax, and transformers' beam search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flan_jax import decode as dec
from flan_jax.decode import beam_search, decode, greedy_decode, sample_decode
from flan_jax.model import create_model, get_config, model_from_params
from flan_jax.model.convert import load_hf_checkpoint
from flan_jax.model.decoder_only import DecoderOnly
from tests.model.hf_reference import make_hf_model, padded_batch, save_hf_model

VOCAB = 16
L = 8  # max_decode_len shared by most tests, so that they share compilations


@pytest.fixture(scope="module")
def tiny():
    # Fewer encoder than decoder layers on purpose; vocab 16 makes EOS (id 1) common.
    cfg = get_config("t5_1_1-tiny", vocab_size=VOCAB, num_encoder_layers=1,
                     num_decoder_layers=2)
    return cfg, create_model(cfg, seed=1)


@pytest.fixture(scope="module")
def tiny_lm():
    """A decoder-only model over the same vocabulary (EOS = 1 common here too)."""
    cfg = get_config("tiny", architecture="decoder_only", vocab_size=VOCAB, eos_id=1,
                     num_decoder_layers=2)
    return create_model(cfg, seed=3)


@pytest.fixture(scope="module")
def batch():
    """4 rows of 12 encoder tokens; rows 1 and 2 are right-padded."""
    x = np.random.default_rng(0).integers(2, VOCAB, (4, 12)).astype(np.int32)
    x[1, 7:] = 0
    x[2, 4:] = 0
    return x


@nnx.jit
def _forward(model, enc, dec_in):
    return model(enc, dec_in)


@nnx.jit
def _lm_forward(model, tokens, prefix_mask):
    return model(tokens, decoder_causal_attention=prefix_mask)


def full_log_probs(model, enc, seqs, prefix=False):
    """Non-cached teacher-forced forward: f64 log-probs [n, len, vocab] of each next token.
    A decoder-only model reads each row as it trained, [start, inputs, seqs[:-1]] (the
    inputs' padding dropped, the prompt [start, inputs] bidirectional if `prefix`)."""
    if isinstance(model, DecoderOnly):
        logits = _prompted_logits(model, np.asarray(enc), np.asarray(seqs), prefix)
    else:
        start = np.full((seqs.shape[0], 1), model.cfg.decoder_start_id, np.int32)
        dec_in = np.concatenate([start, seqs[:, :-1]], 1)
        logits = np.asarray(_forward(model, jnp.asarray(enc), jnp.asarray(dec_in)),
                            np.float64)
    return logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))


def _prompted_logits(model, enc, seqs, prefix):
    """f64 logits [n, len, vocab] predicting seqs [n, len] after each row's prompt."""
    cfg = model.cfg
    n, s = seqs.shape
    tokens = np.full((n, 1 + enc.shape[1] + s - 1), cfg.pad_id, np.int32)  # padding after
    mask = np.zeros_like(tokens)
    at = np.zeros((n, s), np.int64)  # where each of seqs' tokens is predicted
    for r in range(n):
        prompt = [cfg.decoder_start_id] + [int(t) for t in enc[r] if t != cfg.pad_id]
        row = prompt + seqs[r, :-1].tolist()
        tokens[r, :len(row)] = row
        mask[r, :len(prompt)] = 1
        at[r] = len(prompt) - 1 + np.arange(s)
    logits = np.asarray(_lm_forward(model, jnp.asarray(tokens),
                                    jnp.asarray(mask) if prefix else None), np.float64)
    return np.take_along_axis(logits, at[..., None], 1)


def seq_log_prob(model, enc, seqs, lengths, prefix=False):
    """Sum of log p(token) over the first `lengths` tokens of each row of seqs [n, len]."""
    lp = np.take_along_axis(full_log_probs(model, enc, seqs, prefix), seqs[..., None],
                            -1)[..., 0]
    return np.sum(np.where(np.arange(seqs.shape[1]) < lengths[:, None], lp, 0.0), -1)


def live(result):
    return np.arange(result.tokens.shape[1])[None, :] < np.asarray(result.lengths)[:, None]


def sampled_with_logits(model, batch, **kw):
    """Samples, and every step's log-probs recomputed by a full forward on the samples."""
    out = sample_decode(model, batch, rng=jax.random.key(3), max_decode_len=L, **kw)
    tokens, mask = np.asarray(out.tokens), live(out)
    assert mask.sum() > 12  # enough sampled steps for the checks to bite
    return tokens, full_log_probs(model, batch, tokens), mask


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- sampling ------------------------------------------------------------------------------


def test_temperature_zero_and_top_k_one_are_greedy(tiny, batch):
    _, model = tiny
    greedy = greedy_decode(model, batch, max_decode_len=L)
    key = jax.random.key(7)
    for kw in (dict(temperature=0.0), dict(temperature=1e-6), dict(top_k=1),
               dict(top_k=1, temperature=3.0)):
        got = sample_decode(model, batch, rng=key, max_decode_len=L, **kw)
        np.testing.assert_array_equal(got.tokens, greedy.tokens, err_msg=str(kw))
        np.testing.assert_array_equal(got.lengths, greedy.lengths, err_msg=str(kw))
    lengths = np.asarray(greedy.lengths)
    assert lengths.min() < L and lengths.max() == L  # EOS and max-length rows both occur


def test_same_key_same_tokens_other_key_other_tokens(tiny, batch):
    _, model = tiny
    a = sample_decode(model, batch, rng=jax.random.key(0), max_decode_len=L)
    b = sample_decode(model, batch, rng=jax.random.key(0), max_decode_len=L)
    c = sample_decode(model, batch, rng=jax.random.key(1), max_decode_len=L)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    for r in (a, c):  # pad after EOS, and lengths count up to and including it
        t, n = np.asarray(r.tokens), np.asarray(r.lengths)
        for row, length in zip(t, n):
            assert np.all(row[length:] == 0)
            assert length == L or row[length - 1] == 1
            assert not np.any(row[: length - 1] == 1)


def test_top_k_samples_are_within_the_top_k(tiny, batch):
    _, model = tiny
    tokens, logits, mask = sampled_with_logits(model, batch, top_k=3, temperature=2.0)
    picked = np.take_along_axis(logits, tokens[..., None], -1)
    rank = np.sum(logits > picked, -1)  # how many tokens beat the sampled one
    assert np.all(rank[mask] < 3)
    assert np.any(rank[mask] > 0)  # not secretly greedy


def test_top_p_samples_are_within_the_nucleus(tiny, batch):
    _, model = tiny
    top_p, temperature = 0.6, 1.5
    tokens, logits, mask = sampled_with_logits(model, batch, top_p=top_p,
                                               temperature=temperature)
    sizes = []
    for step_logits, token in zip(logits[mask], tokens[mask]):
        p = softmax(step_logits.astype(np.float64) / temperature)
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        nucleus = set(order[before < top_p].tolist())
        assert token in nucleus
        sizes.append(len(nucleus))
    assert 1 < np.mean(sizes) < VOCAB - 1  # the filter really filters, and not to greedy
    assert np.any(tokens[mask] != np.argmax(logits, -1)[mask])


def _chi2_threshold(df: int, z: float = 3.7) -> float:
    """Upper chi-square quantile (z = 3.7: p ~ 1e-4) by Wilson-Hilferty; no scipy needed."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def _chi2(counts, probs):
    """Pearson chi-square over bins with >= 5 expected draws (the rest merged); (stat, df)."""
    assert np.all(counts[probs == 0] == 0)  # nothing drawn where the probability is zero
    n = counts.sum()
    big = probs * n >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(probs[big], probs[~big].sum()) * n
    keep = exp > 0
    return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum() - 1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 0, 1.0), (1.3, 6, 0.9)])
def test_first_token_frequencies_match_the_filtered_softmax(tiny, batch, temperature, top_k,
                                                             top_p):
    _, model = tiny
    copies = 3000
    enc = np.repeat(batch[:2], copies, axis=0)  # two inputs, 3000 draws each
    out = sample_decode(model, enc, rng=jax.random.key(11), max_decode_len=1,
                        temperature=temperature, top_k=top_k, top_p=top_p)
    first = np.asarray(out.tokens)[:, 0].reshape(2, copies)
    logits = full_log_probs(model, batch[:2], np.zeros((2, 1), np.int32))[:, 0] / temperature
    for row in range(2):
        p = softmax(logits[row])
        if top_k:  # numpy reference for the filters: keep top-k, renormalise, keep nucleus
            p = np.where(p >= np.sort(p)[-top_k], p, 0.0)
            p /= p.sum()
        if top_p < 1:
            order = np.argsort(-p)
            drop = order[(np.cumsum(p[order]) - p[order]) >= top_p]
            p[drop] = 0.0
            p /= p.sum()
        counts = np.bincount(first[row], minlength=VOCAB).astype(np.float64)
        stat, df = _chi2(counts, p)
        assert stat < _chi2_threshold(df), (row, stat, df)
        # The test has power: the softmax at temperature 1 (unfiltered) is rejected.
        wrong, wdf = _chi2(counts, softmax(logits[row] * temperature))
        assert wrong > _chi2_threshold(wdf), (row, wrong, wdf)


# --- beam search ---------------------------------------------------------------------------


def test_beam_of_one_is_greedy(tiny, batch):
    _, model = tiny
    greedy = greedy_decode(model, batch, max_decode_len=L)
    # alpha = 0: with alpha > 0 the exact stopping rule rightly searches on past greedy's EOS.
    beam = beam_search(model, batch, beam_size=1, max_decode_len=L, length_penalty=0.0)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
    want = seq_log_prob(model, batch, np.asarray(greedy.tokens), np.asarray(greedy.lengths))
    np.testing.assert_allclose(beam.scores[:, 0], want, atol=1e-4)


def _exhaustive(model, enc, max_len):
    """Per row of enc: every finished sequence (EOS-terminated, or max_len long) ->
    (log-prob, length), from one full forward over every EOS-free prefix."""
    eos, V = model.cfg.eos_id, model.cfg.vocab_size
    prefixes = np.array([p for p in itertools.product(range(V), repeat=max_len - 1)
                         if eos not in p], np.int32)
    seqs = np.concatenate([prefixes, np.zeros((len(prefixes), 1), np.int32)], 1)
    n = len(prefixes)
    lp = full_log_probs(model, np.repeat(enc, n, 0), np.tile(seqs, (len(enc), 1)))
    rows = []
    for row in range(len(enc)):
        out = {}
        for p, steps in zip(prefixes, lp[row * n:(row + 1) * n]):
            prefix_lp = np.cumsum([0.0] + [steps[j, t] for j, t in enumerate(p)])
            for m in range(max_len - 1):  # p[:m] + EOS
                out[tuple(p[:m]) + (eos,)] = (prefix_lp[m] + steps[m, eos], m + 1)
            for t in range(V):  # p + any token, cut by max_len
                out[tuple(p) + (t,)] = (prefix_lp[-1] + steps[-1, t], max_len)
        rows.append(out)
    return rows


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_large_beam_finds_the_exhaustive_best(tiny, batch, alpha):
    _, model = tiny
    max_len, n_best = 3, 4
    # 256 beams keep every prefix alive (15**2 = 225 EOS-free prefixes of length 2), and the
    # 240 expansions of step 2 all rank within the top 256: the search is exhaustive.
    got = beam_search(model, batch[:2], beam_size=256, max_decode_len=max_len,
                      length_penalty=alpha, num_return=n_best)
    _assert_exhaustive_best(got, model, batch[:2], max_len, alpha, n_best)


def _assert_exhaustive_best(got, model, enc, max_len, alpha, n_best):
    """Each row's `n_best` hypotheses, lengths and scores are an exhaustive search's."""
    for row, cands in enumerate(_exhaustive(model, enc, max_len)):
        ranked = sorted(cands.items(), key=lambda kv: -kv[1][0] / kv[1][1] ** alpha)[:n_best]
        want = np.zeros((n_best, max_len), np.int32)
        for i, (seq, _) in enumerate(ranked):
            want[i, : len(seq)] = seq
        np.testing.assert_array_equal(got.tokens[row], want)
        np.testing.assert_array_equal(got.lengths[row], [cands[s][1] for s, _ in ranked])
        np.testing.assert_allclose(got.scores[row],
                                   [lp / n**alpha for _, (lp, n) in ranked], atol=1e-4)


def test_batched_rows_equal_each_row_alone_and_scores_equal_full_forward(tiny, batch):
    _, model = tiny
    alpha, k = 0.6, 4
    both = beam_search(model, batch, beam_size=k, max_decode_len=L, length_penalty=alpha,
                       num_return=k)
    tokens, scores, lengths = (np.asarray(a) for a in both)
    # Each row alone, with 4 more padding columns than in the batch (one compilation).
    wider = np.pad(batch, ((0, 0), (0, 4)))
    for row in range(batch.shape[0]):
        alone = beam_search(model, wider[row:row + 1], beam_size=k, max_decode_len=L,
                            length_penalty=alpha, num_return=k)
        np.testing.assert_array_equal(alone.tokens[0], tokens[row])
        np.testing.assert_array_equal(alone.lengths[0], lengths[row])
        np.testing.assert_allclose(alone.scores[0], scores[row], atol=1e-5)
    # Scores are the full forward's log-probs over the kept tokens, length-penalised.
    _assert_scores_are_the_full_forwards(model, batch, tokens, scores, lengths, alpha, k)


@pytest.fixture(scope="module")
def hf_eos_pair(tmp_path_factory):
    """A T5 1.1 HF model whose vocab of 12 makes EOS frequent, and its flan-jax twin."""
    hf = make_hf_model("t5_1_1", seed=1, vocab_size=12)
    path = save_hf_model(hf, tmp_path_factory.mktemp("eos") / "hf")
    cfg, params = load_hf_checkpoint(path)
    return hf, model_from_params(cfg, params)


@pytest.mark.parametrize("alpha", [0.6, 1.0, 0.0, -0.5])
def test_beam_search_matches_hf_generate_with_eos_and_early_stop(hf_eos_pair, alpha):
    hf, model = hf_eos_pair
    x, xm = padded_batch(np.random.default_rng(1), 12, batch=3, max_len=20)
    k, n_ret, max_new = 4, 2, 10
    with torch.no_grad():
        # early_stopping="never" is HF's exact stopping rule, the one beam_search implements.
        ref = hf.generate(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                          max_new_tokens=max_new, num_beams=k, num_return_sequences=n_ret,
                          length_penalty=alpha, early_stopping="never", do_sample=False,
                          use_cache=False, output_scores=True, return_dict_in_generate=True)
    ref_seq = ref.sequences.numpy()[:, 1:].reshape(3, n_ret, -1)  # drop the start token
    got = beam_search(model, jnp.asarray(x), beam_size=k, max_decode_len=max_new,
                      length_penalty=alpha, num_return=n_ret)
    tokens, lengths = np.asarray(got.tokens), np.asarray(got.lengths)
    # HF fills after EOS with EOS (its pad id 0 is falsy there); compare up to each length.
    for row, ret in np.ndindex(3, n_ret):
        n = lengths[row, ret]
        np.testing.assert_array_equal(tokens[row, ret, :n], ref_seq[row, ret, :n])
        assert np.all(ref_seq[row, ret, n:] == 1) and np.all(tokens[row, ret, n:] == 0)
    np.testing.assert_allclose(got.scores, ref.sequences_scores.numpy().reshape(3, n_ret),
                               atol=1e-5)
    assert lengths.min() < max_new  # EOS-finished hypotheses take part
    # HF crops to the longest hypothesis it returns; rows stopping early leave it short.
    assert ref_seq.shape[-1] == lengths.max()


# --- jit and the front door ----------------------------------------------------------------


def test_second_call_with_the_same_shapes_does_not_recompile(tiny, batch):
    _, model = tiny
    other = np.where(batch > 0, (batch + 3) % VOCAB, 0).astype(np.int32)
    sample_decode(model, batch, rng=jax.random.key(0), max_decode_len=L, top_p=0.9)
    beam_search(model, batch, beam_size=4, max_decode_len=L, num_return=2)
    sizes = dec._sample_loop._cache_size(), dec._beam_loop._cache_size()
    # New inputs, key, temperature, top_p, length penalty and num_return are not static.
    sample_decode(model, other, rng=jax.random.key(5), max_decode_len=L, temperature=0.5,
                  top_p=0.7)
    beam_search(model, other, beam_size=4, max_decode_len=L, num_return=3,
                length_penalty=1.5)
    assert (dec._sample_loop._cache_size(), dec._beam_loop._cache_size()) == sizes


def test_decode_picks_a_method_by_name(tiny, batch):
    _, model = tiny
    key = jax.random.key(0)
    np.testing.assert_array_equal(
        decode(model, batch, max_decode_len=L).tokens,
        greedy_decode(model, batch, max_decode_len=L).tokens)
    np.testing.assert_array_equal(
        decode(model, batch, method="sample", rng=key, max_decode_len=L).tokens,
        sample_decode(model, batch, rng=key, max_decode_len=L).tokens)
    np.testing.assert_array_equal(
        decode(model, batch, method="beam", max_decode_len=L, num_return=2).tokens,
        beam_search(model, batch, max_decode_len=L, num_return=2).tokens)
    with pytest.raises(ValueError, match="'nucleus'"):
        decode(model, batch, method="nucleus", max_decode_len=L)


@pytest.mark.parametrize("fn,kw,match", [
    (sample_decode, dict(top_p=0.0), "top_p"),
    (sample_decode, dict(temperature=-1.0), "temperature"),
    (sample_decode, dict(top_k=-2), "top_k"),
    (beam_search, dict(beam_size=2, num_return=3), "num_return"),
    (beam_search, dict(beam_size=0), "beam_size"),
    (greedy_decode, dict(max_decode_len=0), "max_decode_len"),
])
def test_bad_options_fail_with_their_name(tiny, batch, fn, kw, match):
    _, model = tiny
    kw = {"max_decode_len": L, **kw}
    if fn is sample_decode:
        kw["rng"] = jax.random.key(0)
    with pytest.raises(ValueError, match=match):
        fn(model, batch, **kw)


@pytest.mark.parametrize("prefix", [False, True])
def test_decoder_only_greedy_continues_the_prompt_as_the_full_forward_does(prefix):
    """Rows of different input lengths: each generated token is the argmax of the full
    forward over [start, inputs, generated so far] (the prompt bidirectional for a prefix
    LM), and nothing after EOS."""
    cfg = get_config("tiny", architecture="decoder_only", vocab_size=40, eos_id=1)
    model = create_model(cfg, seed=3)
    inputs = np.zeros((2, 6), np.int32)
    inputs[0, :5] = [5, 9, 12, 7, 1]
    inputs[1, :3] = [8, 3, 1]
    result = greedy_decode(model, jnp.asarray(inputs), max_decode_len=6, prefix=prefix)
    # One jitted full forward over right-padded rows (causal: padding after a position
    # changes none of its logits); eager calls of every length took a minute.
    forward = nnx.jit(lambda m, seq, mask: m(seq, decoder_causal_attention=mask))
    width = 1 + inputs.shape[1] + 6
    for row in range(2):
        prompt = [0] + [t for t in inputs[row] if t]
        generated = [int(t) for t in np.asarray(result.tokens[row])]
        n = int(result.lengths[row])
        seqs = np.zeros((6, width), np.int32)  # (one shape for every row: one compile)
        mask = np.zeros((6, width), np.int32)
        for i in range(n):
            seqs[i, :len(prompt) + i] = prompt + generated[:i]
            mask[i, :len(prompt)] = 1 if prefix else 0
        logits = forward(model, jnp.asarray(seqs), jnp.asarray(mask) if prefix else None)
        for i in range(n):
            assert int(jnp.argmax(logits[i, len(prompt) + i - 1])) == generated[i], (row, i)
        assert all(t == 0 for t in generated[n:])


# --- beam search over decoder-only models --------------------------------------------------


@pytest.mark.parametrize("prefix", [False, True])
def test_decoder_only_beam_of_one_is_greedy(tiny_lm, batch, prefix):
    """Padded prompts of different lengths; the scores are the full forward's log-probs."""
    greedy = greedy_decode(tiny_lm, batch, max_decode_len=L, prefix=prefix)
    beam = beam_search(tiny_lm, batch, beam_size=1, max_decode_len=L, length_penalty=0.0,
                       prefix=prefix)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
    tokens, lengths = np.asarray(greedy.tokens), np.asarray(greedy.lengths)
    want = seq_log_prob(tiny_lm, batch, tokens, lengths, prefix)
    np.testing.assert_allclose(beam.scores[:, 0], want, atol=1e-4)
    assert lengths.min() < L  # EOS-finished rows take part


def _assert_scores_are_the_full_forwards(model, batch, tokens, scores, lengths, alpha, k):
    """Each of the k hypotheses per row: its score is the full forward's log-prob of its
    tokens / length**alpha, best first, padding after its end, EOS ending the finished."""
    flat_t, flat_n = tokens.reshape(-1, L), lengths.reshape(-1)
    lp = seq_log_prob(model, np.repeat(batch, k, 0), flat_t, flat_n)
    np.testing.assert_allclose(scores.reshape(-1), lp / flat_n**alpha, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    assert np.all(flat_t[np.arange(L)[None] >= flat_n[:, None]] == 0)  # pad after the end
    ended = flat_n < L
    assert ended.any() and np.all(flat_t[ended, flat_n[ended] - 1] == 1)


def test_decoder_only_beam_scores_are_the_full_forwards_length_penalised(tiny_lm, batch):
    alpha, k = 0.6, 4
    got = beam_search(tiny_lm, batch, beam_size=k, max_decode_len=L, length_penalty=alpha,
                      num_return=k)
    tokens, scores, lengths = (np.asarray(a) for a in got)
    _assert_scores_are_the_full_forwards(tiny_lm, batch, tokens, scores, lengths, alpha, k)


def test_decoder_only_large_beam_finds_the_exhaustive_best(tiny_lm, batch):
    """As the T5 test above: 256 beams over 3 steps search exhaustively, so a smaller
    beam's best can't beat theirs (beam search is not monotone in its width in general: a
    wider beam can prune what a narrower one keeps). The prefix-LM prompt only changes the
    logits, which test_decoder_only_beam_of_one_is_greedy checks."""
    alpha, max_len, n_best = 0.6, 3, 4
    enc = batch[:2]  # a full and a padded prompt
    got = beam_search(tiny_lm, enc, beam_size=256, max_decode_len=max_len,
                      length_penalty=alpha, num_return=n_best)
    small = beam_search(tiny_lm, enc, beam_size=2, max_decode_len=max_len,
                        length_penalty=alpha, num_return=2)
    _assert_exhaustive_best(got, tiny_lm, enc, max_len, alpha, n_best)
    for row in range(len(enc)):
        assert np.all(np.diff(np.asarray(small.scores[row])) <= 0)
        assert small.scores[row, 0] <= got.scores[row, 0] + 1e-6
