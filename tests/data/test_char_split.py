"""Galactica tokenization: markers are single ids, sequence spans and digits one id per
character, decoding round-trips; the seqio (tf.data) path, the Python path and the Grain
twin agree; gin files and `tokenizer_for` pick it."""

import copy
import io
import pickle
from pathlib import Path

import gin
import pytest
import sentencepiece as spm

from flan_jax.data import galactica, tokenizer, vocab
from flan_jax.data.char_split import CharSplitter
from flan_jax.model.config import get_config

GIN = Path(__file__).resolve().parents[2] / "gin" / "vocab"
SEQUENCES = {galactica.SMILES: "CC(=O)Oc1ccccc1C(=O)O", galactica.AMINO: "MKTAYIAKQR",
             galactica.DNA: "ACGTTGCA"}


@pytest.fixture(scope="module")
def t5_like(tmp_path_factory) -> str:
    """A SentencePiece model like T5's: multi-character pieces, digits NOT split."""
    corpus = ["ACGTTGCA ACGT TGCA ACGTACGT", "MKTAYIAKQR MKTAY IAKQR", "CC(=O)O c1ccccc1 CCO",
              "in 2019 and 12345 or 1999 and 42", "the protein binds the molecule here",
              "The molecule binds. In x y, no spans: lead a1b22c warm"] * 40
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, model_type="bpe",
        vocab_size=120, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, split_digits=False, num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("t5_like") / "t5_like.model"
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.fixture(scope="module", params=["shipped", "t5_like"])
def vocabs(request, t5_like):
    """(galactica vocabulary, plain vocabulary of the same model and markers)."""
    path = None if request.param == "shipped" else t5_like
    gal = vocab.galactica_vocabulary(path)
    plain = vocab.sentencepiece_vocabulary(path or str(vocab.DEFAULT_SPM_MODEL),
                                           special_tokens=galactica.TOKENS)
    return gal, plain


def pieces(v, ids):
    return [v.tokenizer.id_to_piece(i) for i in ids]


def test_the_t5_like_model_merges_what_the_splitter_splits(t5_like):
    sp = spm.SentencePieceProcessor(model_file=t5_like)
    assert len(sp.encode("12345")) < 5 and len(sp.encode("ACGTTGCA")) < 8  # else no test


def test_markers_are_single_ids_after_the_pieces_and_before_the_sentinels():
    v = vocab.galactica_vocabulary()
    ids = [v.tokenizer.piece_to_id(t) for t in galactica.TOKENS]
    assert ids == list(range(vocab.PIECES, vocab.PIECES + len(galactica.TOKENS)))
    assert v.encode("<extra_id_0>") == [v.vocab_size - 1]
    assert v.vocab_size == 494 < get_config("t5_1_1-tiny").vocab_size  # fits the tiny preset
    for tok, i in zip(galactica.TOKENS, ids):
        assert v.encode(f"x{tok}y").count(i) == 1 and v.encode(tok)[-1] == i


@pytest.mark.parametrize("span", galactica.CHAR_SPANS, ids=lambda s: s[0])
def test_spans_are_one_id_per_character_and_round_trip(vocabs, span):
    gal, plain = vocabs
    start, end = span
    seq = SEQUENCES[span]
    for text in (f"x{start}{seq}{end}y", f"The molecule {start}{seq}{end} binds."):
        ids = gal.encode(text)
        a, b = ids.index(gal.tokenizer.piece_to_id(start)), ids.index(
            gal.tokenizer.piece_to_id(end))
        assert pieces(gal, ids[a + 1:b]) == list(seq)
        assert gal.decode(ids) == text == plain.decode(plain.encode(text))
        # outside the span nothing changes
        assert ids[:a] == plain.encode(text)[:a]


def test_dna_glued_to_text_and_to_its_markers(vocabs):
    gal, _ = vocabs
    text = "x[START_DNA]ACGT[END_DNA]y"
    got = pieces(gal, gal.encode(text))
    a = got.index("[START_DNA]")
    assert "".join(got[:a]) == "▁x" and got[a:] == [
        "[START_DNA]", "A", "C", "G", "T", "[END_DNA]", "y"]
    assert gal.decode(gal.encode(text)) == text


def test_digits_are_split_everywhere_but_sentinels_stay_whole(t5_like):
    gal = vocab.galactica_vocabulary(t5_like)
    plain = vocab.sentencepiece_vocabulary(t5_like, special_tokens=galactica.TOKENS)
    for text in ("12345", "in 2019 and 1999", "a1b22c"):
        ids = gal.encode(text)
        digits = [p for p in pieces(gal, ids) if any(c.isdigit() for c in p)]
        assert digits == [c for c in text if c.isdigit()]
        assert gal.decode(ids) == text
    assert len(gal.encode("12345")) == 5 + (pieces(gal, gal.encode("12345"))[0] == "▁")
    assert len(plain.encode("12345")) < len(gal.encode("12345"))
    assert gal.encode("<extra_id_12>") == [gal.vocab_size - 13]


def test_unclosed_span_splits_to_the_end_and_stray_end_markers_do_nothing(t5_like):
    gal = vocab.galactica_vocabulary(t5_like)
    plain = vocab.sentencepiece_vocabulary(t5_like, special_tokens=galactica.TOKENS)
    ids = gal.encode("the [START_DNA]ACGTACGT")
    assert pieces(gal, ids)[-8:] == list("ACGTACGT")
    assert gal.decode(ids) == "the [START_DNA]ACGTACGT"
    text = "ACGT[END_DNA] ACGTACGT the protein"  # no span open: SentencePiece's own pieces
    assert gal.encode(text) == plain.encode(text)
    # a span closes only at its own end marker; other markers inside stay single ids
    ids = gal.encode("[START_DNA]AC[END_AMINO]GT[END_DNA]ACGTACGT")
    assert pieces(gal, ids)[1:8] == ["[START_DNA]", "A", "C", "[END_AMINO]", "G", "T",
                                     "[END_DNA]"]
    after = plain.encode("[END_DNA]ACGTACGT")  # after the span: SentencePiece's pieces again
    assert ids[8:] == after[after.index(ids[7]) + 1:] and len(ids[8:]) < 8


def test_decoding_matches_plain_sentencepiece_on_text_it_normalises(t5_like):
    gal = vocab.galactica_vocabulary(t5_like)
    plain = vocab.sentencepiece_vocabulary(t5_like, special_tokens=galactica.TOKENS)
    text = "  lead [START_DNA] AC  GT [END_DNA]  2019  "  # extra spaces are normalised away
    assert gal.decode(gal.encode(text)) == plain.decode(plain.encode(text))


def test_a_character_without_a_piece_keeps_its_piece_whole(t5_like):
    gal = vocab.galactica_vocabulary(t5_like)
    plain = vocab.sentencepiece_vocabulary(t5_like, special_tokens=galactica.TOKENS)
    text = "[START_DNA]ACGTTGCA[END_DNA]"
    merged = max(pieces(plain, plain.encode(text))[2:-1], key=len)  # (inside the markers)
    assert len(merged) > 1 and merged.startswith("ACGT")
    splitter = CharSplitter(gal.sp_model)
    splitter.encode("")  # (loads the model)
    del splitter._normal[merged[-1]]  # as if its last character had no piece of its own
    ids = splitter.encode(text)
    assert plain.tokenizer.piece_to_id(merged) in ids
    assert gal.decode(ids) == text and len(ids) < len(gal.encode(text))


def test_a_model_without_the_markers_is_refused():
    v = vocab.CharSplitVocabulary(str(vocab.DEFAULT_SPM_MODEL), extra_ids=100)
    with pytest.raises(ValueError, match=r"\[START_REF\].*not user-defined pieces"):
        v.encode("hello")


def test_tf_data_path_python_path_and_grain_twin_agree(vocabs):
    import tensorflow as tf

    gal, plain = vocabs
    texts = ["x[START_DNA]ACGT[END_DNA]y", "In 2019 [START_SMILES]CC(=O)O[END_SMILES] and "
             "[START_AMINO]MKTAYIAKQR[END_AMINO].", "no spans here 12345", ""]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(gal.encode_tf)
    assert ds.element_spec == tf.TensorSpec([None], tf.int32)
    via_tf = [list(x.numpy()) for x in ds]
    twin = tokenizer.tokenizer_for(gal)
    twin = pickle.loads(pickle.dumps(twin))  # (as a Grain worker receives it)
    assert via_tf == [list(gal.encode(t)) for t in texts] == [twin.encode(t) for t in texts]
    import seqio  # seqio's own tokenize preprocessor calls encode_tf on each scalar

    tokenized = seqio.preprocessors.tokenize(
        tf.data.Dataset.from_tensor_slices({"inputs": texts}),
        output_features={"inputs": seqio.Feature(gal)}, copy_pretokenized=False)
    assert [list(x["inputs"].numpy()) for x in tokenized] == via_tf
    batched = gal.encode_tf(tf.constant(texts))
    assert batched.to_list() == via_tf
    assert via_tf[0] != [] and gal.decode_tf(tf.constant(via_tf[1])).numpy().decode() == texts[1]


def test_tokenizer_for_dispatches_on_the_subclass_first(vocabs):
    gal, plain = vocabs
    twin, plain_twin = tokenizer.tokenizer_for(gal), tokenizer.tokenizer_for(plain)
    assert type(twin) is tokenizer.CharSplitTokenizer
    assert type(plain_twin) is tokenizer.SentencePieceTokenizer
    assert tokenizer.tokenizer_for(gal) is twin  # shared per model
    assert twin.eos_id == gal.eos_id == 1


def test_equality_copy_and_pickle_like_seqio_vocabularies(t5_like):
    gal = vocab.galactica_vocabulary(t5_like)
    same_file = vocab.sentencepiece_vocabulary(t5_like, special_tokens=galactica.TOKENS)
    assert gal.sentencepiece_model_file == same_file.sentencepiece_model_file
    assert gal != same_file and same_file != gal  # other ids: not one vocabulary
    assert gal == vocab.galactica_vocabulary(t5_like)
    gal.encode("warm 1")  # a loaded splitter is not part of the state
    for other in (copy.deepcopy(gal), pickle.loads(pickle.dumps(gal))):
        assert other == gal and other.encode("[START_DNA]ACGT 2019") == gal.encode(
            "[START_DNA]ACGT 2019")


def test_gin_files_give_the_galactica_vocabularies(t5_like):
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN / "galactica.gin"))
        v = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        assert isinstance(v, vocab.CharSplitVocabulary) and v.vocab_size == 494
        gin.clear_config()
        gin.parse_config_file(str(GIN / "t5_galactica.gin"))
        with pytest.raises(vocab.VocabularyError, match="galactica_vocabulary.path"):
            gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        gin.bind_parameter("galactica_vocabulary.path", t5_like)
        v = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
        assert v == vocab.galactica_vocabulary(t5_like)
    finally:
        gin.clear_config()


def test_the_twin_unpickles_and_encodes_without_tensorflow_or_seqio():
    import subprocess
    import sys

    v = vocab.galactica_vocabulary()
    text = "x[START_DNA]ACGT[END_DNA] 42"
    code = ("import pickle, sys; t = pickle.loads(sys.stdin.buffer.read()); "
            "print(t.encode(sys.argv[1]), 'tensorflow' in sys.modules or 'seqio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, text], check=True, capture_output=True,
                         input=pickle.dumps(tokenizer.tokenizer_for(v))).stdout.decode()
    assert out.strip() == f"{list(v.encode(text))} False"
