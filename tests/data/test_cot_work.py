"""The `cot_work` format (Galactica's `<work>` working memory): targets, answer extraction,
opt-in per task, the same text on the seqio and Grain paths, its postprocessor and share."""

import pytest
import seqio

from flan_jax.data import formats as F
from flan_jax.data import mixing
from flan_jax.data.flan import (CotFields, FlanTask, RenderedSource, register_flan_task,
                                render_every_template)
from flan_jax.data.sources import indexed_source
from flan_jax.data.templates import Template

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 256, "targets": 128}
COT = F.cot_target("{rationale}", "{answer}")
ROWS = [{"question": f"What is {i} plus {i}?", "rationale": f"{i} and {i} make {2 * i}.",
         "answer": str(2 * i)} for i in range(12)]


def _spec(name="test_work", **kw):
    import tensorflow as tf

    sig = {k: tf.TensorSpec((), tf.string) for k in ROWS[0]}
    source = indexed_source({"train": ROWS, "validation": ROWS[:4]}, sig)
    return FlanTask(name=name, source=source, templates=[Template("{question}", "{answer}")],
                    cot_templates=[Template("{question} Think step by step.", COT),
                                   Template("Explain: {question}", COT)],
                    cot=CotFields(), few_shot=None, **kw)


def test_work_target_and_its_answer():
    target = F.work_target("3 m is 300 cm. 300 plus 5 is 305.", "305 cm")
    assert target == "3 m is 300 cm. 300 plus 5 is 305. </work> 305 cm"
    assert F.work_inputs("What is 3 m plus 5 cm, in cm?\n") == (
        "What is 3 m plus 5 cm, in cm? <work>")
    assert F.extract_work_answer(target) == "305 cm"
    assert F.extract_work_answer(b"<work> a </work> b </work>  42 \n") == "42"  # the last one
    assert F.extract_work_answer("  just 7 ") == "just 7"  # no </work>: the text, stripped
    assert F.extract_work_answer("<work> unfinished") == "<work> unfinished"


def test_cot_work_is_off_by_default_and_needs_cot_templates():
    assert F.COT_WORK not in _spec().formats()
    assert _spec(cot_work=True).formats()[-1] == F.COT_WORK
    with pytest.raises(ValueError, match="cot_work=True"):
        FlanTask(name="bad", source=_spec().source, templates=[Template("{question}", "{a}")],
                 few_shot=None, cot_work=True)


def test_cot_work_renders_the_cot_inputs_with_a_work_target():
    spec = _spec(cot_work=True)
    rows = render_every_template(spec, ROWS[:3], formats=[F.COT_ZS, F.COT_WORK])
    cot = {(r["template_id"], r["inputs"]): r["targets"] for r in rows
           if r["format"] == F.COT_ZS}
    work = [r for r in rows if r["format"] == F.COT_WORK]
    assert len(work) == 6
    for r in work:
        # The same question as cot_zs, told apart by the open <work> block.
        assert r["inputs"].endswith(" <work>")
        assert (r["template_id"], r["inputs"][:-len(" <work>")]) in cot
        ex = next(e for e in ROWS if e["question"] in r["inputs"])
        assert r["targets"] == f"{ex['rationale']} </work> {ex['answer']}"
        assert F.extract_work_answer(r["targets"]) == ex["answer"]
        assert F.extract_cot_answer(cot[(r["template_id"], r["inputs"][:-len(" <work>")])]
                                    ) == ex["answer"]


def test_seqio_and_grain_paths_give_the_same_work_text_and_score_the_answer():
    names = register_flan_task(_spec("test_work_reg", cot_work=True), VOCAB, replace=True)
    try:
        assert "test_work_reg:cot_work" in names
        task = seqio.get_mixture_or_task("test_work_reg:cot_work")
        ds = task.get_dataset(LENGTHS, split="validation", shuffle=False, use_cached=False)
        seq = [(r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
               for r in ds.as_numpy_iterator()]
        assert isinstance(task.source, RenderedSource)
        rows = task.source.random_access("validation")
        assert seq == [(rows[i]["inputs"], rows[i]["targets"]) for i in range(len(rows))]
        assert all(i.endswith(" <work>") and " </work> " in t and "<work> " not in t
                   for i, t in seq)
        # Targets and predictions both go through the postprocessor, then exact match.
        target = task.postprocess_fn(seq[0][1], example={}, is_target=True)
        assert target == ROWS[0]["answer"]
        good = task.postprocess_fn("wrong steps </work> " + target)
        bad = task.postprocess_fn(target + " </work> 99")
        assert task.metric_fns[0]([target, target], [good, bad]) == {"accuracy": 50.0}
        cot = seqio.get_mixture_or_task("test_work_reg:cot_zs").postprocess_fn
        assert cot("x. So the answer is 4.") == "4"  # cot_zs keeps its own postprocessor
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)


def test_format_shares_give_cot_work_a_cot_slot_and_leave_others_alone():
    without = {F.ZS_NOOPT, F.COT_ZS, F.FS_NOOPT, F.COT_FS, F.INV}
    old = mixing.format_shares(without)
    assert old == {F.ZS_NOOPT: 0.25, F.COT_ZS: 0.25, F.FS_NOOPT: 0.25, F.COT_FS: 0.25,
                   F.INV: 0.3}
    new = mixing.format_shares(without | {F.COT_WORK})
    assert new[F.COT_WORK] == new[F.COT_ZS] == new[F.ZS_NOOPT] == pytest.approx(0.5 / 3)
    assert new[F.FS_NOOPT] == new[F.COT_FS] == 0.25 and new[F.INV] == 0.3
    assert mixing.split_task_name("x:cot_work") == ("x", F.COT_WORK)


def test_cot_work_weight_sets_its_share_in_the_mixture():
    formats = {F.ZS_NOOPT, F.COT_ZS, F.COT_WORK, F.FS_NOOPT}
    base = mixing.format_shares(formats)
    twice = mixing.format_shares(formats, mixing.FormatMix(cot_work_weight=2.0))
    none = mixing.format_shares(formats, mixing.FormatMix(cot_work_weight=0.0))
    assert twice[F.COT_WORK] == pytest.approx(2 * twice[F.COT_ZS]) == pytest.approx(
        2 * base[F.COT_WORK])
    assert none[F.COT_WORK] == 0.0
    assert {f: v for f, v in twice.items() if f != F.COT_WORK} == {
        f: v for f, v in base.items() if f != F.COT_WORK}
    with pytest.raises(ValueError, match="FormatMix.cot_work_weight must be >= 0"):
        mixing.FormatMix(cot_work_weight=-1.0)
