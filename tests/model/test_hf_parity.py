"""flan-jax T5 against transformers' PyTorch T5 on the same random weights (f32)."""

import jax.numpy as jnp
import numpy as np
import torch

from flan_jax.decode import beam_search, greedy_decode
from flan_jax.model.losses import mean_cross_entropy
from tests.model.hf_reference import padded_batch

TOL = 1e-4


def rel_err(got, want, where=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if where is not None:
        where = np.broadcast_to(where, want.shape)
        got, want = got[where], want[where]
    return np.max(np.abs(got - want)) / np.max(np.abs(want))


def _hf_forward(hf, x, xm, labels):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                  labels=torch.tensor(labels))


def test_config_variant_is_read_from_checkpoint(hf_pair):
    variant, _, _, cfg, _ = hf_pair
    if variant == "t5_1_0":
        assert (cfg.feed_forward, cfg.tie_embeddings, cfg.scale_decoder_outputs) == (
            "relu", True, True)
    else:
        assert (cfg.feed_forward, cfg.tie_embeddings, cfg.scale_decoder_outputs) == (
            "gated-gelu", False, False)


def test_encoder_logits_and_loss_match_hf_on_padded_batch(hf_pair):
    _, hf, _, cfg, model = hf_pair
    rng = np.random.default_rng(0)
    # Lengths past 8 / 16 exercise the logarithmic relative-position buckets.
    x, xm = padded_batch(rng, cfg.vocab_size, batch=4, max_len=45)
    y, ym = padded_batch(rng, cfg.vocab_size, batch=4, max_len=23)
    labels = np.where(ym == 1, y, -100)
    out = _hf_forward(hf, x, xm, labels)
    # T5's teacher forcing: the start token (0), then the targets shifted right by one.
    decoder_inputs = np.concatenate([np.zeros_like(y[:, :1]), y[:, :-1] * ym[:, :-1]], axis=1)

    encoded = model.encode(jnp.asarray(x))
    # Padded positions are never read by anything downstream; compare the real ones.
    assert rel_err(encoded, out.encoder_last_hidden_state.numpy(), xm[..., None] == 1) <= TOL

    logits = model(jnp.asarray(x), jnp.asarray(decoder_inputs))
    assert logits.dtype == jnp.float32
    assert rel_err(logits, out.logits.numpy(), ym[..., None] == 1) <= TOL

    loss = mean_cross_entropy(logits, jnp.asarray(y), jnp.asarray(ym))
    assert abs(float(loss) - float(out.loss)) / float(out.loss) <= TOL


def test_greedy_decode_matches_hf_generate(hf_pair):
    _, hf, _, cfg, model = hf_pair
    rng = np.random.default_rng(1)
    x, xm = padded_batch(rng, cfg.vocab_size, batch=5, max_len=30)
    max_new = 12
    with torch.no_grad():
        # use_cache=False: transformers 5 sizes its cache by num_layers, which breaks on our
        # 2-encoder / 3-decoder-layer model; greedy tokens don't depend on it.
        ref = hf.generate(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                          max_new_tokens=max_new, do_sample=False, num_beams=1,
                          use_cache=False).numpy()
    ref = ref[:, 1:]  # drop the decoder start token
    got = greedy_decode(model, jnp.asarray(x), max_decode_len=max_new)
    tokens = np.asarray(got.tokens)[:, : ref.shape[1]]
    np.testing.assert_array_equal(tokens, ref)
    assert np.all(np.asarray(got.tokens)[:, ref.shape[1]:] == cfg.pad_id)


def test_kv_cache_steps_reproduce_full_forward(hf_pair):
    _, _, _, cfg, model = hf_pair
    rng = np.random.default_rng(2)
    x, _ = padded_batch(rng, cfg.vocab_size, batch=3, max_len=26)
    n = 10
    got = greedy_decode(model, jnp.asarray(x), max_decode_len=n, return_logits=True)
    tokens = np.asarray(got.tokens)
    steps = int(np.max(np.asarray(got.lengths)))
    # Teacher-force the full decoder on [start, generated tokens...] and compare every step.
    dec_in = np.concatenate([np.full((3, 1), cfg.decoder_start_id), tokens[:, :-1]], axis=1)
    full = np.asarray(model(jnp.asarray(x), jnp.asarray(dec_in)))
    live = (np.arange(n)[None, :] < np.asarray(got.lengths)[:, None])[..., None]
    assert steps > 1
    assert rel_err(got.step_logits, full, live) <= 1e-5


def test_beam_search_matches_hf_generate(hf_pair):
    _, hf, _, cfg, model = hf_pair
    rng = np.random.default_rng(3)
    x, xm = padded_batch(rng, cfg.vocab_size, batch=3, max_len=30)
    beams, n_ret, max_new, alpha = 4, 2, 8, 0.6
    with torch.no_grad():
        # early_stopping="never" is HF's exact stopping rule, the one beam_search implements
        # (HF's default, False, stops on a heuristic). use_cache=False as for greedy above.
        ref = hf.generate(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                          max_new_tokens=max_new, num_beams=beams, num_return_sequences=n_ret,
                          length_penalty=alpha, early_stopping="never", do_sample=False,
                          use_cache=False, output_scores=True, return_dict_in_generate=True)
    ref_seq = ref.sequences.numpy()[:, 1:].reshape(3, n_ret, -1)  # drop the start token
    got = beam_search(model, jnp.asarray(x), beam_size=beams, max_decode_len=max_new,
                      length_penalty=alpha, num_return=n_ret)
    tokens, lengths = np.asarray(got.tokens), np.asarray(got.lengths)
    for row, ret in np.ndindex(3, n_ret):  # HF fills past EOS with EOS, we with pad
        n = lengths[row, ret]
        np.testing.assert_array_equal(tokens[row, ret, :n], ref_seq[row, ret, :n])
    np.testing.assert_allclose(got.scores, ref.sequences_scores.numpy().reshape(3, n_ret),
                               atol=1e-5)
