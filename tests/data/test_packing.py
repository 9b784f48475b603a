"""packing.py's feature converters against seqio's own: decoder-only and prefix-LM features,
alone and through both readers; their lengths, resume and the settings that guard it."""

import numpy as np
import pytest

import mixtures.default  # noqa: F401  (registers the default mixture)
import seqio
from flan_jax.data.reader.packing import CONVERTERS, first_fit, pack, pad
from flan_jax.data.reader.pipeline import StreamSettings
from flan_jax.errors import ReaderError
from flan_jax.train.data import DataConfig, make_reader, position, reader_position

LENGTHS = {"inputs": 96, "targets": 32}
DECODER_ONLY = ("decoder", "prefix_lm", "semi_causal")
TASK = "synth_weekday:zs_opt"


def cfg(**kw) -> DataConfig:
    base = dict(batch_size=8, task_feature_lengths=LENGTHS, workers=0, chunk_examples=16,
                module_imports=(), mixture_or_task_name=TASK, shuffle=False)
    return DataConfig(**{**base, **kw})


def take(reader, n):
    try:
        batches = [next(reader) for _ in range(n)]
    finally:
        reader.close()
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def seqio_convert(name, pack_, examples, lengths):
    """seqio's converter for `name` on hand-made token lists (all of seqio's features)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.array(a, np.int32), "targets": np.array(b, np.int32)}
                 for a, b in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
    conv = getattr(seqio, CONVERTERS[name].seqio_class)(pack=pack_)
    rows = list(conv(ds, lengths).as_numpy_iterator())
    return with_encoded_span(name, {k: np.stack([r[k] for r in rows]) for k in rows[0]})


def with_encoded_span(name, features):
    """For "semi_causal" (no seqio converter of its own): seqio's prefix-LM features plus the
    span the encoder reads, the inputs in decoder_input_tokens: decoder_causal_attention less
    each segment's first position (the BOS)."""
    if name != "semi_causal":
        return features
    span = features["decoder_causal_attention"].copy()
    if "decoder_positions" in features:
        span[features["decoder_positions"] == 0] = 0
    else:
        span[:, 0] = 0
    return {**features, "decoder_encoded_span": span}


def by_tokens(unpacked):
    """Unpacked rows keyed by their decoder tokens: {tokens: {feature: row[:length]}}."""
    out = {}
    for r, tokens in enumerate(unpacked["decoder_target_tokens"]):
        n = int(np.flatnonzero(tokens)[-1]) + 1
        out[tuple(tokens[:n].tolist())] = {k: v[r, :n].tolist() for k, v in unpacked.items()}
    return out


def check_packed(packed, unpacked):
    """Each packed row: segments 1..k back to back, then padding (all zero); positions from
    0 per segment; every segment's features exactly those of its example's unpacked row
    (loss weights, decoder_causal_attention and the shifted inputs included)."""
    want = by_tokens(unpacked)
    seen = []
    for r, seg in enumerate(packed["decoder_segment_ids"]):
        used = int((seg > 0).sum())
        assert seg[0] == 1 and np.all(np.diff(seg[:used]) >= 0), r  # back to back, from 1
        assert set(seg[:used].tolist()) == set(range(1, seg.max() + 1)), r
        for k, v in packed.items():
            assert not v[r, used:].any(), (r, k)  # padding is 0 in every feature
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert packed["decoder_positions"][r, where].tolist() == list(range(len(where)))
            key = tuple(packed["decoder_target_tokens"][r, where].tolist())
            assert key in want, (r, s)
            for k, v in want[key].items():
                assert packed[k][r, where].tolist() == v, (r, s, k)
            seen.append(key)
    return seen


# -- packing.py alone, on hand-made token lists ------------------------------------------

# seqio's own example (PrefixLMFeatureConverter's docstring), lengths 7 + 8.
DOC = [([7, 8, 5, 1], [3, 9, 1]), ([8, 4, 9, 3, 1], [4, 1])]
DOC_PACKED = {
    "decoder_target_tokens": [7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0],
    "decoder_input_tokens": [0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0],
    "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0],
    "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0],
    "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0],
    "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]}


def test_seqios_documented_prefix_lm_example_comes_out_as_documented():
    got = pack(DOC, 7, 8, "prefix_lm")
    assert {k: v.tolist() for k, v in got.items()} == {k: [v] for k, v in DOC_PACKED.items()}
    decoder = pack(DOC, 7, 8, "decoder")
    assert set(decoder) == set(DOC_PACKED) - {"decoder_causal_attention"}
    assert all(decoder[k].tolist() == [DOC_PACKED[k]] for k in decoder)
    unpacked = pad([([9, 4, 6, 1], [3, 9, 1])], 10, 4, "prefix_lm")  # its example 2
    assert unpacked["decoder_input_tokens"].tolist() == [[0, 9, 4, 6, 1, 3, 9, 1] + [0] * 6]
    assert unpacked["decoder_causal_attention"].tolist() == [[1] * 5 + [0] * 9]
    assert unpacked["decoder_loss_weights"].tolist() == [[0] * 4 + [1] * 3 + [0] * 7]


# Three examples seqio packs into two rows (the third doesn't fit the first row): first-fit
# and seqio's in-order packing agree, so every feature must match exactly.
THREE = [([5, 6, 7, 1], [8, 9, 1]), ([3, 1], [4, 4, 4, 1]), ([2, 2, 2, 2, 2, 1], [7, 1])]


@pytest.mark.parametrize("name", list(CONVERTERS))
@pytest.mark.parametrize("packed", [True, False])
def test_every_feature_is_exactly_seqios(name, packed):
    theirs = seqio_convert(name, packed, THREE, {"inputs": 8, "targets": 8})
    mine = (pack if packed else pad)(THREE, 8, 8, name)
    conv = CONVERTERS[name]
    assert tuple(mine) == conv.features(packed)
    # "decoder" is seqio's DecoderFeatureConverter less the prefix-LM attention mask.
    dropped = {"decoder_causal_attention"} if name in ("decoder", "semi_causal") else set()
    assert set(theirs) - set(mine) == dropped and set(mine) <= set(theirs)
    for k in mine:
        assert mine[k].dtype == np.int32 and mine[k].tolist() == theirs[k].tolist(), k
    assert len(mine["decoder_target_tokens"]) == (2 if packed else 3)


@pytest.mark.parametrize("name", list(CONVERTERS))
@pytest.mark.parametrize("packed", [True, False])
def test_feature_lengths_are_seqios(name, packed):
    conv = CONVERTERS[name]
    seqio_conv = getattr(seqio, conv.seqio_class)(pack=packed)
    theirs = dict(seqio_conv.get_model_feature_lengths(LENGTHS))
    if name == "semi_causal":  # (the span has the prefix-LM mask's length)
        theirs["decoder_encoded_span"] = theirs["decoder_causal_attention"]
    theirs = {k: v for k, v in theirs.items() if k in conv.features(packed)}
    assert conv.lengths(96, 32, packed) == theirs
    assert cfg(feature_converter=name, pack=packed).model_feature_lengths() == theirs


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_first_fit_packing_keeps_each_example_as_seqio_converts_it(name):
    """Random examples packed first-fit (which seqio's in-order packing doesn't do): every
    segment is its example's seqio row, and each example lands exactly once."""
    rng = np.random.default_rng(0)
    examples = [(list(rng.integers(2, 50, rng.integers(1, 8))) + [1],
                 list(rng.integers(2, 50, rng.integers(0, 4))) + [1]) for _ in range(40)]
    lengths = {"inputs": 12, "targets": 6}
    packed = pack(examples, 12, 6, name)
    assert len(packed["decoder_target_tokens"]) < 25  # several per row
    theirs = seqio_convert(name, False, examples, lengths)
    seen = check_packed(packed, {k: theirs[k] for k in CONVERTERS[name].features(False)})
    assert sorted(seen) == sorted(tuple([*i, *t]) for i, t in examples)
    # loss on the targets only, by an independent count
    assert packed["decoder_loss_weights"].sum() == sum(len(t) for _, t in examples)
    if name == "prefix_lm":
        assert packed["decoder_causal_attention"].sum() == sum(len(i) + 1 for i, _ in examples)
    if name == "semi_causal":
        assert packed["decoder_encoded_span"].sum() == sum(len(i) for i, _ in examples)


def test_first_fit_goes_back_to_the_first_row_with_room():
    rows = first_fit(np.asarray([[6], [5], [2], [3]]), [8])
    assert rows == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="example 1 is longer"):
        first_fit(np.asarray([[6, 1], [2, 9]]), [8, 8])


# -- through the readers -----------------------------------------------------------------

def _seqio_rows(name, n, pack_=False):
    ds = seqio.get_dataset(TASK, task_feature_lengths=LENGTHS, dataset_split="train",
                           shuffle=False, use_cached=False,
                           feature_converter=getattr(seqio, CONVERTERS[name].seqio_class)(
                               pack=pack_))
    rows = list(ds.take(n).as_numpy_iterator())
    names = CONVERTERS[name].features(pack_)
    every = with_encoded_span(name, {k: np.stack([r[k] for r in rows]) for k in rows[0]})
    return {k: every[k] for k in names}


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_both_readers_give_seqios_decoder_only_features(name):
    """Unshuffled, pack=False: row i is example i, equal to seqio's converter's row i from
    the Grain reader and the seqio reader alike; packed, each Grain segment is its
    example's seqio row, and so is each of the seqio reader's own packed segments."""
    theirs = _seqio_rows(name, 96)
    grain = take(make_reader(cfg(feature_converter=name, pack=False)), 3)
    via_seqio = take(make_reader(cfg(feature_converter=name, pack=False, reader="seqio")), 3)
    assert tuple(grain) == CONVERTERS[name].features(False)
    assert ("decoder_causal_attention" in grain) == (name == "prefix_lm")
    assert grain["decoder_target_tokens"].shape == (24, 128)  # inputs + targets
    for k in grain:
        assert grain[k].tolist() == theirs[k][:24].tolist(), k
        assert via_seqio[k].tolist() == theirs[k][:24].tolist(), k

    packed = take(make_reader(cfg(feature_converter=name)), 3)
    assert tuple(packed) == CONVERTERS[name].features(True)
    seen = check_packed(packed, theirs)
    assert len(seen) >= 2 * 24  # several examples per row
    assert len(set(seen)) > 40  # (rows of many different examples)
    seqio_packed = take(make_reader(cfg(feature_converter=name, reader="seqio")), 2)
    assert set(seqio_packed) == set(packed)
    check_packed(seqio_packed, theirs)


def test_a_decoder_only_stream_resumes_exactly():
    c = cfg(feature_converter="prefix_lm", shuffle=True, chunk_examples=8)
    straight = take(make_reader(c), 7)
    first = make_reader(c)
    for _ in range(3):
        next(first)
    saved = reader_position(first, c)
    first.close()
    assert saved["feature_converter"] == "prefix_lm"
    resumed = take(make_reader(c, saved=saved), 4)
    for k in straight:
        assert np.array_equal(straight[k][3 * 8:], resumed[k]), k


def test_a_resume_with_another_feature_converter_is_refused_naming_it():
    c = cfg()
    r = make_reader(c)
    next(r)
    saved = reader_position(r, c)
    r.close()
    with pytest.raises(ReaderError, match="DataConfig.feature_converter='enc_dec', this run "
                                          "has 'prefix_lm'"):
        make_reader(cfg(feature_converter="prefix_lm"), saved=saved)
    # A state saved before the setting existed was read enc-dec.
    old = {k: v for k, v in saved.items() if k != "feature_converter"}
    with pytest.raises(ReaderError, match="DataConfig.feature_converter='enc_dec'"):
        make_reader(cfg(feature_converter="decoder"), saved=old)
    make_reader(c, saved=old).close()
    # The seqio reader's position: refused before its pipeline is built.
    seqio_saved = {"reader": "seqio", **position(5, cfg(feature_converter="decoder"))}
    with pytest.raises(ReaderError, match="feature_converter='decoder'.*'prefix_lm'"):
        make_reader(cfg(reader="seqio", feature_converter="prefix_lm"), saved=seqio_saved)


def test_an_unknown_feature_converter_is_named_with_the_choices():
    choices = r"\('enc_dec', 'decoder', 'prefix_lm', 'semi_causal'\)"
    with pytest.raises(ReaderError, match=rf"DataConfig.feature_converter='gpt': choose one "
                                          rf"of {choices}"):
        DataConfig(feature_converter="gpt")
    with pytest.raises(ReaderError, match="DataConfig.feature_converter='lm'"):
        StreamSettings(mixture="m", split="train", seed=0, shuffle=True, batch_size=8,
                       inputs_length=8, targets_length=8, pack=True, shards=1, chunk=8,
                       feature_converter="lm")
    with pytest.raises(ReaderError, match="feature_converter='x'"):
        pack(THREE, 8, 8, "x")
