"""The shipped vocabulary: reproducible from the project's script, T5 ids, special tokens, gin."""

import string
from pathlib import Path

import gin
import pytest
import sentencepiece as spm

from flan_jax.data import synthetic, train_vocab, vocab
from flan_jax.model.config import get_config

GIN = Path(__file__).resolve().parents[2] / "gin" / "vocab"


def test_the_shipped_model_is_what_make_vocab_builds():
    # The corpus is the rendered synthetic templates: after editing them, run `make vocab`.
    assert train_vocab.train() == vocab.DEFAULT_SPM_MODEL.read_bytes(), "run `make vocab`"


def test_t5_conventions_and_room_in_the_tiny_model():
    v = vocab.default_vocabulary()
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    assert v.vocab_size == vocab.PIECES + vocab.DEFAULT_EXTRA_IDS
    assert v.encode("<extra_id_0>") == [v.vocab_size - 1]  # sentinels count down, as in T5
    assert v.vocab_size < get_config("t5_1_1-tiny").vocab_size


def test_synthetic_text_and_printable_ascii_encode_without_unknowns():
    sp = spm.SentencePieceProcessor(model_file=str(vocab.DEFAULT_SPM_MODEL))
    texts = list(synthetic.sample_texts(20)) + [string.printable.strip()]
    for text in texts:
        assert 2 not in sp.encode(text), text
    # digits are single pieces, so numbers are spelled digit by digit
    assert sp.encode("1234", out_type=str)[-4:] == ["1", "2", "3", "4"]


def test_special_tokens_are_single_pieces_and_leave_other_ids_alone(tmp_path):
    base = vocab.default_vocabulary()
    v = vocab.default_vocabulary(special_tokens=("<user>", "<bot>"))
    assert v.vocab_size == base.vocab_size + 2
    text = "What is 12 plus 30?"
    assert v.encode(text) == base.encode(text)
    bot, user = (v.tokenizer.piece_to_id(t) for t in ("<bot>", "<user>"))
    assert {bot, user} == {vocab.PIECES, vocab.PIECES + 1}  # before the sentinels
    assert bot in v.encode("Say hi to the<bot>") and user in v.encode("<user> hello")
    assert v.decode(v.encode("<user> hi")) == "<user> hi"
    path = vocab.with_special_tokens(str(vocab.DEFAULT_SPM_MODEL), ["<x>"], cache_dir=tmp_path)
    assert path == vocab.with_special_tokens(str(vocab.DEFAULT_SPM_MODEL), ["<x>"],
                                             cache_dir=tmp_path)  # cached by content
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("tokens, match", [(["<a>", "<a>"], "repeat"),
                                            (["two words"], "without spaces"),
                                            (["ing"], "already a piece")])
def test_bad_special_tokens_are_named(tokens, match):
    with pytest.raises(vocab.VocabularyError, match=match):
        vocab.with_special_tokens(str(vocab.DEFAULT_SPM_MODEL), tokens)


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(vocab.VocabularyError, match="nope.model: no such"):
        vocab.sentencepiece_vocabulary(tmp_path / "nope.model")


def test_t5_vocabulary_by_path_through_gin():
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN / "t5.gin"))
        with pytest.raises(vocab.VocabularyError, match="sentencepiece_vocabulary.path"):
            gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        # any SentencePiece file stands in for the real T5 one, which can't be downloaded here
        gin.bind_parameter("sentencepiece_vocabulary.path", str(vocab.DEFAULT_SPM_MODEL))
        v = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        assert v.vocab_size == vocab.PIECES + 100
    finally:
        gin.clear_config()


def test_default_gin_file_gives_the_shipped_vocabulary():
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN / "default.gin"))
        v = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        assert v.vocab_size == vocab.default_vocabulary().vocab_size
    finally:
        gin.clear_config()


def test_train_vocab_cli_writes_a_model(tmp_path, capsys):
    out = tmp_path / "v.model"
    assert train_vocab.main(["--out", str(out), "--pieces", "200",
                             "--samples-per-family", "30", "--special", "<sep>"]) == 0
    sp = spm.SentencePieceProcessor(model_file=str(out))
    assert sp.get_piece_size() == 200 and sp.piece_to_id("<sep>") > 2
    assert "200 pieces" in capsys.readouterr().out


def test_write_model_file_copies_only_a_vocabulary_other_than_the_shipped_one(tmp_path):
    from flan_jax.data.vocab import (default_vocabulary, galactica_vocabulary,
                                     has_galactica_markers, vocabulary_of_file,
                                     write_model_file)

    assert write_model_file(default_vocabulary(), tmp_path) is None
    assert not (tmp_path / "spiece.model").exists()
    out = write_model_file(galactica_vocabulary(), tmp_path)
    assert out == tmp_path / "spiece.model" and has_galactica_markers(str(out))
    text = "GC of [START_DNA]ACGGT[END_DNA] is 60"
    assert vocabulary_of_file(str(out)).encode(text) == galactica_vocabulary().encode(text)
