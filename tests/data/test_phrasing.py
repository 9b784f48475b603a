"""flan_jax.data.phrasing: the varied phrasing keeps the facts and widens the vocabulary."""

import re

import pytest

from flan_jax.data import formats as F
from flan_jax.data import phrasing as P
from flan_jax.data import synthetic
from flan_jax.data.render import render_every_template


@pytest.mark.parametrize("fam", synthetic.FAMILIES, ids=lambda f: f.name)
def test_row_i_holds_the_same_facts_in_both_phrasings(fam):
    varied = P.varied(fam)
    for split in ("train", "validation"):
        simple_rows = synthetic.SyntheticRows(fam, split)
        varied_rows = synthetic.SyntheticRows(varied, split)
        for i in range(0, 200, 7):
            s, v = simple_rows[i], varied_rows[i]
            assert s.keys() == v.keys()
            for field in s:
                if field not in fam.prose:
                    assert v[field] == s[field], (fam.name, split, i, field)


def test_prose_is_reworded_consistently_within_an_example():
    fam = P.varied(synthetic.family("word_problem"))
    rows = synthetic.SyntheticRows(fam, "train")
    changed = 0
    for i in range(50):
        ex, simple = rows[i], synthetic.SyntheticRows(synthetic.family("word_problem"),
                                                       "train")[i]
        changed += ex["story"] != simple["story"]
        thing = next(t for t in re.findall(r"[a-z]+", simple["question"])
                     if t in P.SYNONYMS and t in simple["story"])
        # the story's things and the question's are the same word after rewording
        story_words = set(re.findall(r"[a-z]+", ex["story"]))
        question_words = set(re.findall(r"[a-z]+", ex["question"]))
        assert story_words & question_words & set(P.SYNONYMS[thing]), (ex, thing)
    assert changed == 50
    assert rows[3] == rows[3]  # a pure function of the row


def test_reword_keeps_slots_braces_and_case():
    pick = P.chooser("seed")
    out = P.reword("Count the {number} {{number}}. NUMBER: Numbers", pick)
    assert "{number}" in out  # a slot stays; escaped braces are literal text, reworded
    assert re.search(r"\{\{(\w+)\}\}", out).group(1) in P.SYNONYMS["number"]
    head, *_ = out.split(" ")
    assert head[0].isupper() and head.lower() in P.SYNONYMS["count"]
    assert out.split()[-1][0].isupper() and out.split()[-1].lower() in P.SYNONYMS["numbers"]
    assert out.split()[-2].isupper()


def test_targets_patterns_stay_and_cot_answers_still_parse():
    fam = synthetic.family("arithmetic")
    varied = P.varied(fam)
    assert {t.targets for t in varied.cot_templates} == {t.targets for t in fam.cot_templates}
    spec = synthetic.spec(varied, sizes={"train": 8})
    rendered = render_every_template(spec, synthetic.examples(varied, "train",
                                                              sizes={"train": 8}),
                                     formats=[F.COT_ZS])
    answers = [r["targets"] for r in rendered]
    raw = list(synthetic.examples(varied, "train", sizes={"train": 8}))
    assert {F.extract_cot_answer(a) for a in answers} == {ex["answer"] for ex in raw}


@pytest.mark.parametrize("fam", synthetic.FAMILIES, ids=lambda f: f.name)
def test_every_varied_template_renders(fam):
    varied = P.varied(fam)
    assert len(varied.templates) > len(fam.templates)
    spec = synthetic.spec(varied, sizes={"train": 4})
    assert spec.name == f"synth_varied_{fam.name}"
    out = render_every_template(spec, synthetic.examples(varied, "train", sizes={"train": 4}))
    assert out and all(r["inputs"] and r["targets"] for r in out)


def test_the_varied_corpus_has_a_larger_vocabulary():
    def words(phrasing):
        vocab = set()
        for fam in synthetic.FAMILIES:
            fam = P.phrased(fam, phrasing)
            spec = synthetic.spec(fam, sizes={"train": 30})
            for r in render_every_template(spec, synthetic.examples(fam, "train",
                                                                    sizes={"train": 30})):
                vocab |= set(re.findall(r"[a-z]+", (r["inputs"] + r["targets"]).lower()))
        return vocab

    simple, varied = words(P.SIMPLE), words(P.VARIED)
    assert len(varied) >= 1.25 * len(simple), (len(simple), len(varied))


def test_bad_phrasing_and_double_variation_are_refused():
    with pytest.raises(ValueError, match="unknown phrasing 'fancy'"):
        P.phrased(synthetic.FAMILIES[0], "fancy")
    with pytest.raises(ValueError, match="already in the varied phrasing"):
        P.varied(P.varied(synthetic.FAMILIES[0]))
