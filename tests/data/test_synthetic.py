"""The synthetic families: enough of them, every template renders, answers are right,
splits are deterministic and (where the family's space allows) disjoint."""

import collections
import itertools
import re

import pytest

from flan_jax.data import formats as F
from flan_jax.data import synthetic
from flan_jax.data.flan import render_every_template
from flan_jax.data.synthetic_families import FAMILIES, WEEKDAYS
from flan_jax.data.vocab import default_vocabulary

SMALL = {"train": 40, "validation": 10, "test": 10}
BY_NAME = {f.name: f for f in FAMILIES}


def _draw(name, n=200, split="train", seed=0):
    return list(itertools.islice(synthetic.examples(BY_NAME[name], split, seed=seed), n))


def test_catalogue_shape():
    assert len(FAMILIES) >= 12
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    for fam in FAMILIES:
        assert len(fam.templates) >= 5, fam.name
        assert not fam.cot_templates or len(fam.cot_templates) >= 5, fam.name
        assert len({(t.inputs, t.targets) for t in fam.templates}) == len(fam.templates)
    assert sum(f.held_out for f in FAMILIES) >= 3
    assert sum(bool(f.inversion_templates) for f in FAMILIES) >= 5
    assert sum(bool(f.cot_templates) for f in FAMILIES) >= 5
    assert sum(any(t.has_options for t in f.templates) for f in FAMILIES) >= 5


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_template_of_every_format_renders(name):
    spec = synthetic.spec(BY_NAME[name], sizes=SMALL)
    raw = list(synthetic.examples(BY_NAME[name], "train", sizes=SMALL))[:6]
    vocab = default_vocabulary()
    rendered = render_every_template(spec, raw, count_tokens=lambda s: len(vocab.encode(s)))
    n_templates = sum(len(spec.format_templates(f)) for f in spec.formats())
    assert len(rendered) == 6 * n_templates
    seen = collections.Counter((r["format"], r["template_id"]) for r in rendered)
    assert len(seen) == n_templates
    for r in rendered:
        assert r["inputs"].strip() and r["targets"].strip()
        assert "{" not in r["inputs"] and "{" not in r["targets"], r  # no unfilled slot
        if r["format"] in F.FEW_SHOT_FORMATS:
            assert r["inputs"].count("\n\n\n") >= 1  # at least one exemplar fits
        if r["format"] in (F.COT_ZS, F.COT_FS):
            assert F.extract_cot_answer(r["targets"]) == r["targets"].rsplit("is ", 1)[1][:-1]


def test_arithmetic_answers_and_rationales_are_right():
    for ex in _draw("arithmetic"):
        a, sym, b = ex["expression"].split()
        want = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[sym]
        assert ex["answer"] == str(want)
        assert ex["rationale"].rstrip(".").endswith(str(want))
        assert F.extract_cot_answer(F.cot_target(ex["rationale"], ex["answer"])) == ex["answer"]


def test_other_families_answer_correctly():
    for ex in _draw("sorting"):
        nums = [int(x) for x in ex["numbers"].split(", ")]
        rev = ex["order"].startswith("largest")
        assert ex["answer"] == ", ".join(map(str, sorted(nums, reverse=rev)))
    for ex in _draw("comparison"):
        a, b = int(ex["a"]), int(ex["b"])
        assert int(ex["answer"]) == (max(a, b) if ex["relation"] == "larger" else min(a, b))
        assert ex["answer"] in ex["options"]
    for ex in _draw("counting"):
        assert ex["items"].split(", ").count(ex["target"]) == int(ex["answer"])
    for ex in _draw("reversal"):
        assert ex["answer"].split() == ex["text"].split()[::-1]
    for ex in _draw("parity"):
        assert ex["answer"] == ("even" if int(ex["number"]) % 2 == 0 else "odd")
    for ex in _draw("weekday"):
        k = int(re.search(r"\d+", ex["when"]).group()) if any(c.isdigit() for c in ex["when"]) \
            else 1
        sign = -1 if ("ago" in ex["when"] or ex["when"] == "yesterday") else 1
        assert ex["answer"] == WEEKDAYS[(WEEKDAYS.index(ex["today"]) + sign * k) % 7]
    for ex in _draw("sequence"):
        terms = [int(x) for x in ex["sequence"].split(", ")]
        assert int(ex["answer"]) == terms[-1] + terms[1] - terms[0]
    for name in ("true_false", "category", "antonym", "sentiment"):
        for ex in _draw(name):
            assert ex["answer"] in ex["options"], (name, ex)


def test_true_false_is_balanced_and_sums_are_checked():
    exs = _draw("true_false", 1000)
    share = sum(ex["answer"] == "true" for ex in exs) / len(exs)
    assert 0.4 < share < 0.6
    for ex in exs:
        m = re.fullmatch(r"(\d+) plus (\d+) equals (\d+)\.", ex["statement"])
        if m:
            a, b, c = map(int, m.groups())
            assert (a + b == c) == (ex["answer"] == "true")


def test_deterministic_by_seed_and_split():
    assert _draw("word_problem", 50) == _draw("word_problem", 50)
    assert _draw("word_problem", 50) != _draw("word_problem", 50, seed=1)
    assert _draw("word_problem", 50) != _draw("word_problem", 50, split="validation")


def test_evaluation_splits_avoid_train_examples_where_possible():
    fam = BY_NAME["arithmetic"]
    train = {F.example_key(ex) for ex in synthetic.examples(fam, "train")}
    for split in ("validation", "test"):
        held = [F.example_key(ex) for ex in synthetic.examples(fam, split)]
        assert len(held) == synthetic.SPLIT_SIZES[split]
        assert not train & set(held)


def test_source_counts_and_streams_through_tf_data():
    src = synthetic.source(BY_NAME["parity"], sizes=SMALL)
    assert src.num_input_examples("validation") == 10
    rows = list(src.get_dataset("validation").as_numpy_iterator())
    assert len(rows) == 10
    assert [r["number"].decode() for r in rows] == \
        [ex["number"] for ex in synthetic.examples(BY_NAME["parity"], "validation", sizes=SMALL)]
    with pytest.raises(KeyError, match="no split 'dev'"):
        next(synthetic.examples(BY_NAME["parity"], "dev"))


def test_options_required_family_has_no_noopt_formats():
    spec = synthetic.spec(BY_NAME["category"])
    assert F.ZS_NOOPT not in spec.formats() and F.FS_NOOPT not in spec.formats()
    assert F.ZS_OPT in spec.formats()


def test_unknown_family_is_named():
    with pytest.raises(KeyError, match="no synthetic family 'nope'"):
        synthetic.family("nope")
