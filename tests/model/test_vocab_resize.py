"""Extending a model's vocabulary with tokens before the sentinels: rows kept, new rows the
mean, sentinels moved, padding to 128 only when needed, and the model computing the same
logits on the remapped ids."""

import numpy as np
import pytest

from flan_jax.model import create_model, get_config, model_from_params, params_of
from flan_jax.model.io import load_pretrained, save_pretrained
from flan_jax.model.vocab_resize import extend_vocab

P, S = 100, 20  # pieces, sentinels (in 128 rows: 8 spare)


def tiny(variant="flan_t5", **overrides):
    cfg = get_config(f"{variant}-tiny", **{"vocab_size": 128, **overrides})
    return cfg, params_of(create_model(cfg, seed=3))


def old_to_new(k):
    """Where each used old id goes: pieces stay, sentinels move up by k."""
    return np.concatenate([np.arange(P), np.arange(P, P + S) + k])


@pytest.mark.parametrize("k, rows", [(5, 128), (8, 128), (9, 256)])
def test_rows_kept_new_rows_mean_sentinels_moved_untied_head_too(k, rows):
    cfg, params = tiny()
    assert not cfg.tie_embeddings and "logits_dense" in params
    new, new_cfg = extend_vocab(params, cfg, P, k, S)
    assert new_cfg.vocab_size == rows and new_cfg.replace(vocab_size=128) == cfg
    emb, old_emb = new["token_embedder"]["embedding"], np.asarray(
        params["token_embedder"]["embedding"])
    head, old_head = new["logits_dense"], np.asarray(params["logits_dense"])
    assert emb.shape == (rows, cfg.d_model) and head.shape == (cfg.d_model, rows)
    for table, old in ((emb, old_emb), (head.T, old_head.T)):  # both as [vocab, embed]
        np.testing.assert_array_equal(table[:P], old[:P])
        mean = old[:P].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(table[P:P + k], np.tile(mean, (k, 1)), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(table[P + k:P + k + S], old[P:P + S])
        spare = old[P + S:]  # the old padding rows follow, then more mean rows if it grew
        n = min(len(spare), rows - P - k - S)
        np.testing.assert_array_equal(table[P + k + S:P + k + S + n], spare[:n])
        np.testing.assert_allclose(table[P + k + S + n:],
                                   np.tile(mean, (rows - P - k - S - n, 1)), rtol=1e-5,
                                   atol=1e-6)
    # everything without a vocab axis is untouched
    np.testing.assert_array_equal(new["encoder"]["final_norm"]["scale"],
                                  params["encoder"]["final_norm"]["scale"])


def test_tied_model_has_only_the_embedding_remapped():
    cfg, params = tiny("t5_1_0")
    assert cfg.tie_embeddings and "logits_dense" not in params
    new, new_cfg = extend_vocab(params, cfg, P, ["[A]", "[B]"], S)
    assert "logits_dense" not in new and new_cfg.vocab_size == 128
    assert new["token_embedder"]["embedding"].shape == (128, cfg.d_model)


def test_the_extended_model_gives_the_same_logits_on_remapped_ids():
    cfg, params = tiny()
    k = 9  # grows to 256 rows
    new, new_cfg = extend_vocab(params, cfg, P, k, S)
    rng = np.random.default_rng(0)
    old_ids = rng.integers(3, P + S, size=(2, 7))  # pieces and sentinels
    dec_old = rng.integers(3, P + S, size=(2, 5))
    where = old_to_new(k)
    before = np.asarray(model_from_params(cfg, params)(old_ids, dec_old))
    after = np.asarray(model_from_params(new_cfg, new)(where[old_ids], where[dec_old]))
    np.testing.assert_allclose(after[..., where], before[..., :P + S], rtol=2e-4, atol=2e-4)
    # a new token's logit is the average piece logit (the head's new column is their mean)
    np.testing.assert_allclose(after[..., P], before[..., :P].mean(-1), rtol=2e-4, atol=2e-4)


def test_bad_counts_are_refused():
    cfg, params = tiny()
    with pytest.raises(ValueError, match="do not fit the model's vocab_size=128"):
        extend_vocab(params, cfg, 120, 2, 20)


def test_convert_add_tokens_writes_a_model_dir_to_finetune(tmp_path):
    """`flan-jax convert SRC DST --add_tokens galactica` over a model whose dir has the
    shipped spiece.model (384 pieces + 100 sentinels in 512 rows): the rows are remapped,
    DST's spiece.model holds the markers, and `infer.load` gives Galactica's vocabulary
    with the sentinels where the remapped rows are."""
    import shutil

    from flan_jax import cli
    from flan_jax.data import galactica
    from flan_jax.data.vocab import DEFAULT_SPM_MODEL, CharSplitVocabulary
    from flan_jax.train import infer

    cfg, params = tiny(vocab_size=512)
    save_pretrained(tmp_path / "base", cfg, params)
    shutil.copy(DEFAULT_SPM_MODEL, tmp_path / "base" / "spiece.model")
    assert cli.main(["convert", str(tmp_path / "base"), str(tmp_path / "ext"), "--to",
                     "flan-jax", "--add_tokens", "galactica"]) == 0
    got_cfg, got = load_pretrained(tmp_path / "ext")
    assert got_cfg.vocab_size == 512  # 384 + 10 + 100 = 494 still fits
    old = np.asarray(params["token_embedder"]["embedding"])
    new = np.asarray(got["token_embedder"]["embedding"])
    np.testing.assert_array_equal(new[:384], old[:384])
    np.testing.assert_array_equal(new[394:494], old[384:484])  # the sentinels, moved up
    _, vocab = infer.load(tmp_path / "ext")
    assert isinstance(vocab, CharSplitVocabulary)
    ids = [vocab.encode(f"x{t}") for t in galactica.TOKENS]  # (after '▁x': one id each)
    assert [i[-1] for i in ids] == [384 + i for i in range(10)] and len({len(i) for i in ids}) == 1
    assert vocab.vocab_size == 494 and vocab.decode([493]) == "<extra_id_0>"
    assert vocab.decode([394]) == "<extra_id_99>"  # the rows moved to 394..493
    from flan_jax.data.vocab import galactica_vocabulary  # (over either model: same ids)
    text = "Reverse [START_DNA]ACGT[END_DNA] <work> 12 </work> 3"
    assert (galactica_vocabulary(str(tmp_path / "ext" / "spiece.model")).encode(text)
            == galactica_vocabulary().encode(text) == vocab.encode(text))


def test_convert_add_tokens_refuses_what_it_cannot_place(tmp_path):
    from flan_jax.errors import ConfigError
    from flan_jax.model.convert_dir import convert_dir

    cfg, params = tiny()
    save_pretrained(tmp_path / "base", cfg, params)
    with pytest.raises(ConfigError, match="has no spiece.model to count its pieces; give "
                                          "--vocab_pieces"):
        convert_dir(str(tmp_path / "base"), str(tmp_path / "a"), to="flan-jax",
                    add_tokens="galactica")
    with pytest.raises(ConfigError, match=r"--add_tokens writes a flan-jax model dir"):
        convert_dir(str(tmp_path / "base"), str(tmp_path / "b"), to="hf",
                    add_tokens="galactica", vocab_pieces=P)
    with pytest.raises(ConfigError, match="comma-separated tokens without spaces"):
        convert_dir(str(tmp_path / "base"), str(tmp_path / "c"), add_tokens="a b,c")
    convert_dir(str(tmp_path / "base"), str(tmp_path / "d"), to="flan-jax",
                add_tokens="<x>,<y>", vocab_pieces=P, sentinels=S)
    got_cfg, got = load_pretrained(tmp_path / "d")
    np.testing.assert_array_equal(got["token_embedder"]["embedding"][P + 2:P + 2 + S],
                                  np.asarray(params["token_embedder"]["embedding"])[P:P + S])
    assert not (tmp_path / "d" / "spiece.model").exists()
