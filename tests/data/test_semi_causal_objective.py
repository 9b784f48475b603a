"""The plain-text semi-causal objective: seeded cuts, the same for a row whoever reads it;
a registered task read by the Grain reader with the semi_causal features."""

import json

import numpy as np
import pytest

from flan_jax.data.semi_causal import SemiCausalRows, cut_words, register_semi_causal_task
from flan_jax.data.sources import jsonl_source, python_source
from flan_jax.errors import SourceError

TEXTS = [" ".join(f"w{i}_{j}" for j in range(n)) for i, n in enumerate([12, 3, 40, 1, 7, 20])]


def test_cut_words_keeps_every_word_once_and_one_on_each_side():
    assert cut_words("a b  c d", 0.5) == ("a b", "c d")
    assert cut_words("a b c", 0.0) == ("a", "b c")  # at least one word encoded
    assert cut_words("a b c", 1.0) == ("a b", "c")  # and one left to predict
    assert cut_words(" lonely ", 0.5) == ("", "lonely")


def test_rows_are_seeded_per_row_and_within_the_span():
    raw = [{"text": t} for t in TEXTS]
    a = SemiCausalRows(raw, seed=3, span=(0.25, 0.75))
    again = SemiCausalRows(raw, seed=3, span=(0.25, 0.75))
    other = SemiCausalRows(raw, seed=4, span=(0.25, 0.75))
    assert [a[i] for i in range(len(a))] == [again[i] for i in reversed(range(len(a)))][::-1]
    assert any(a[i] != other[i] for i in range(len(a)))
    for i, text in enumerate(TEXTS):
        row = a[i]
        assert f"{row['inputs']} {row['targets']}".strip() == text
        words = len(text.split())
        if words >= 4:
            frac = len(row["inputs"].split()) / words
            assert 0.25 - 1 / words <= frac <= 0.75 + 1 / words


def test_bad_settings_and_rows_are_named():
    with pytest.raises(ValueError, match="span=\\(0.8, 0.2\\)"):
        SemiCausalRows([], span=(0.8, 0.2))
    rows = SemiCausalRows([{"body": "x y"}], where="task 't', split 'train'")
    with pytest.raises(SourceError, match="task 't', split 'train': row 0 has no field 'text'"):
        rows[0]
    stream = python_source(lambda split, shuffle, seed: iter([]), {}, ["train"])
    with pytest.raises(SourceError, match="has no random access"):
        register_semi_causal_task("semi_causal_stream", stream)


def test_a_registered_text_task_trains_through_the_grain_reader(tmp_path):
    from flan_jax.train.data import DataConfig, make_reader

    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 4))
    name = register_semi_causal_task("semi_causal_text_test",
                                     jsonl_source({"train": path}, {"text": str}),
                                     seed=1, replace=True)
    cfg = DataConfig(mixture_or_task_name=name, batch_size=4, workers=0, shuffle=False,
                     module_imports=(), chunk_examples=8,
                     task_feature_lengths={"inputs": 32, "targets": 32},
                     feature_converter="semi_causal")
    reader = make_reader(cfg)
    try:
        batch = next(reader)
    finally:
        reader.close()
    span = np.asarray(batch["decoder_encoded_span"]) > 0
    weights = np.asarray(batch["decoder_loss_weights"]) > 0
    assert span.any() and weights.any()
    # loss only on positions after each span (its last position predicts the first target)
    ends = span & ~np.concatenate([span[:, 1:], np.zeros_like(span[:, :1])], axis=1)
    assert not (weights & span & ~ends).any()
