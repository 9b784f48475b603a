"""register_flan_task: every format renders through real seqio pipelines, deterministically."""

import collections
import json

import pytest
import seqio

from flan_jax.data import formats as F
from flan_jax.data.flan import CotFields, FewShotConfig, FlanTask, register_flan_task
from flan_jax.data.sources import jsonl_source
from flan_jax.data.templates import Template

VOCAB = seqio.ByteVocabulary()
SCHEMA = {"question": str, "options": list[str], "answer": str, "rationale": str}
LENGTHS = {"inputs": 1024, "targets": 256}

TEMPLATES = [
    Template("{question}\n\n{options_}", "{answer}"),
    Template("Answer the question: {question}\n{options_}", "{answer}"),
    Template("Q: {question}\nPick one.\n{options_}\nA:", "{answer}"),
]
COT = [
    Template("{question} Think step by step.", F.cot_target("{rationale}", "{answer}")),
    Template("Solve, showing your work: {question}", F.cot_target("{rationale}", "{answer}")),
]
INVERSE = [Template("Write a question whose answer is {answer}.", "{question}")]


def _row(i, tag=""):
    a, b = i % 7, i % 5
    return {"question": f"What is {a} plus {b}{tag}?", "options": [str(a + b), str(a + b + 1)],
            "answer": str(a + b), "rationale": f"{a} plus {b} makes {a + b}."}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("jsonl")
    for split, rows, tag in (("train", range(40), ""), ("validation", range(100, 110), " (v)")):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(_row(i, tag)) + "\n"
                                                  for i in rows))
    source = jsonl_source({"train": d / "train.jsonl", "validation": d / "validation.jsonl"},
                          SCHEMA)
    spec = FlanTask(name="test_add", source=source, templates=TEMPLATES, cot=CotFields(),
                    cot_templates=COT, inversion_templates=INVERSE,
                    few_shot=FewShotConfig(max_shots=3, budget_tokens=400, pool_size=16))
    names = register_flan_task(spec, VOCAB, replace=True)
    yield spec, names
    for name in names:
        seqio.TaskRegistry.remove(name)


def _examples(name, split="train"):
    ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False,
                                                     use_cached=False)
    return list(ds.as_numpy_iterator())


def test_every_format_is_registered_and_renders(spec):
    spec, names = spec
    assert names == [F.task_name("test_add", f) for f in F.FORMATS if f != F.COT_WORK]
    for name in names:
        for split in ("train", "validation"):
            rows = _examples(name, split)
            assert len(rows) == (40 if split == "train" else 10)
            fmt = name.split(":")[1]
            for r in rows:
                assert r["task"] == b"test_add" and r["format"] == fmt.encode()
                assert len(r["inputs"]) > 0 and r["inputs"][-1] == 1  # EOS
                assert r["inputs_pretokenized"] and r["targets_pretokenized"]


def test_formats_look_as_documented(spec):
    spec, _ = spec
    rows = {fmt: _examples(F.task_name("test_add", fmt))[0] for fmt in spec.formats()}
    text = {fmt: (r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
            for fmt, r in rows.items()}
    assert "OPTIONS:\n- " in text["zs_opt"][0] and "OPTIONS" not in text["zs_noopt"][0]
    assert text["fs_opt"][0].count("What is") >= 2  # exemplars, then the query
    assert text["cot_zs"][1].endswith(". So the answer is " + text["zs_opt"][1] + ".")
    assert F.extract_cot_answer(text["cot_zs"][1]) == text["zs_opt"][1]
    assert text["inv"][0].startswith("Write a question") and text["inv"][1].startswith("What is")


def test_template_choice_is_deterministic_and_uses_every_template(spec):
    spec, _ = spec
    ids = [r["template_id"] for r in _examples("test_add:zs_opt")]
    assert ids == [r["template_id"] for r in _examples("test_add:zs_opt")]
    assert collections.Counter(ids).keys() == {0, 1, 2}


@pytest.mark.parametrize("fmt", [F.FS_OPT, F.FS_NOOPT, F.COT_FS])
def test_an_example_is_never_its_own_exemplar(spec, fmt):
    spec, _ = spec
    pattern = spec.few_shot.pattern
    for r in _examples(F.task_name("test_add", fmt)):
        inputs, targets = r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode()
        exemplars, query = inputs.rsplit(pattern.example_separator, 1)
        assert exemplars  # at least one shot fits the budget
        # The query's own (inputs, target) pair is never among its exemplars.
        assert pattern.exemplar(query, targets) not in exemplars


def test_eval_split_draws_exemplars_from_train_only(spec):
    spec, _ = spec
    for r in _examples("test_add:fs_noopt", "validation"):
        exemplars, query = r["inputs_pretokenized"].decode().rsplit(
            spec.few_shot.pattern.example_separator, 1)
        assert "(v)?" in query  # the query is a validation example...
        assert "(v)?" not in exemplars and "What is" in exemplars  # ...its shots are train ones


def test_few_shot_respects_the_token_budget(spec):
    spec, _ = spec
    for r in _examples("test_add:fs_opt"):
        assert len(VOCAB.encode(r["inputs_pretokenized"].decode())) <= 400


def test_registration_errors_name_the_problem(spec):
    spec, _ = spec
    with pytest.raises(ValueError, match="'test_add:zs_opt' is already registered"):
        register_flan_task(spec, VOCAB, formats=["zs_opt"])
    with pytest.raises(ValueError, match=r"can't register formats \['cot_zs'\]"):
        register_flan_task(FlanTask(name="plain", source=spec.source, templates=TEMPLATES),
                           VOCAB, formats=["cot_zs"])
    with pytest.raises(ValueError, match="split 'training', which the source lacks"):
        FlanTask(name="x", source=spec.source, templates=TEMPLATES, train_split="training")
    with pytest.raises(ValueError, match="cot_templates need cot="):
        FlanTask(name="x", source=spec.source, templates=TEMPLATES, cot_templates=COT)


def test_missing_field_names_task_and_template(spec):
    spec, _ = spec
    broken = FlanTask(name="broken", source=spec.source, few_shot=None,
                      templates=[Template("{question} {hint}", "{answer}")])
    (name,) = register_flan_task(broken, VOCAB, replace=True)
    try:
        with pytest.raises(Exception, match=r"task 'broken', template zs_noopt/0: field 'hint'"):
            _examples(name)
    finally:
        seqio.TaskRegistry.remove(name)
