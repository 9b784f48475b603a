"""mixtures.default: registered on import, held-out families kept out of training."""

import pytest
import seqio

import mixtures.default as D
from flan_jax.data import formats as F
from flan_jax.data import synthetic
from flan_jax.data.mixing import split_task_name

LENGTHS = {"inputs": 256, "targets": 64}


def _bases(mixture):
    return {split_task_name(t.name)[0] for t in seqio.get_mixture_or_task(mixture).tasks}


def test_mixtures_are_registered_with_the_right_families():
    held = {synthetic.TASK_PREFIX + f.name for f in synthetic.FAMILIES if f.held_out}
    train = {synthetic.TASK_PREFIX + f.name for f in synthetic.FAMILIES if not f.held_out}
    assert _bases(D.TRAIN_MIXTURE) == train
    assert _bases(D.HELD_OUT_MIXTURE) == held
    fmts = {split_task_name(t.name)[1]
            for t in seqio.get_mixture_or_task(D.HELD_OUT_MIXTURE).tasks}
    assert fmts == {F.ZS_OPT, F.ZS_NOOPT}


def test_every_family_gets_the_same_budget():
    mix = seqio.get_mixture_or_task(D.TRAIN_MIXTURE)
    per_base = {}
    for t in mix.tasks:
        base, fmt = split_task_name(t.name)
        if fmt != F.INV:
            per_base[base] = per_base.get(base, 0.0) + mix.get_rate(t)
    assert set(per_base.values()) == {float(min(D.CAP, synthetic.SPLIT_SIZES["train"]))}


def test_importing_again_does_not_reregister():
    import importlib
    before = seqio.get_mixture_or_task(D.TRAIN_MIXTURE)
    importlib.reload(D)
    assert seqio.get_mixture_or_task(D.TRAIN_MIXTURE) is before


def test_the_training_mixture_yields_tokenized_examples():
    ds = seqio.get_mixture_or_task(D.HELD_OUT_MIXTURE).get_dataset(
        LENGTHS, split="validation", shuffle=False, use_cached=False)
    vocab = seqio.get_mixture_or_task(D.HELD_OUT_MIXTURE).output_features["inputs"].vocabulary
    examples = list(ds.take(20).as_numpy_iterator())
    assert len(examples) == 20
    for ex in examples:
        assert 0 < len(ex["inputs"]) <= LENGTHS["inputs"] and ex["targets"][-1] == 1  # EOS
        assert 2 not in ex["inputs"].tolist()  # no unknown pieces
        assert vocab.decode(ex["targets"].tolist()).strip()


def _formats(mixture):
    return {split_task_name(t.name)[1] for t in seqio.get_mixture_or_task(mixture).tasks}


def test_study_eval_groups_hold_their_formats():
    assert _formats(D.mixture_name(suffix="held_in_zs")) == {F.ZS_OPT, F.ZS_NOOPT}
    assert _formats(D.mixture_name(suffix="held_in_fs")) == {F.FS_OPT, F.FS_NOOPT}
    assert _formats(D.mixture_name(suffix="cot")) == {F.COT_ZS}
    assert _bases(D.mixture_name(suffix="held_in_fs")) == _bases(D.TRAIN_MIXTURE)


def test_ablation_mixtures_leave_out_what_they_say():
    train = _formats(D.TRAIN_MIXTURE)
    assert not _formats(D.mixture_name(suffix="zs_only")) & set(F.FEW_SHOT_FORMATS)
    assert not _formats(D.mixture_name(suffix="fs_only")) & {F.ZS_OPT, F.ZS_NOOPT, F.COT_ZS}
    assert _formats(D.mixture_name(suffix="no_inversion")) == train - {F.INV}
    assert _formats(D.mixture_name(suffix="no_cot")) == train - {F.COT_ZS, F.COT_FS}
    for suffix in D.ABLATIONS:
        assert _bases(D.mixture_name(suffix=suffix)) == _bases(D.TRAIN_MIXTURE)


def test_the_cap_ablation_differs_only_in_the_cap():
    sizes = D.skewed_sizes()
    assert min(sizes.values()) == D.SKEW_SMALLEST
    assert max(sizes.values()) == D.SKEW_SMALLEST * D.SKEW_RATIO

    def budgets(mixture):
        mix = seqio.get_mixture_or_task(mixture)
        out = {}
        for t in mix.tasks:
            base, fmt = split_task_name(t.name)
            if fmt != F.INV:
                out[base.removeprefix("synth_skewed_")] = out.get(
                    base.removeprefix("synth_skewed_"), 0.0) + mix.get_rate(t)
        return out

    capped, uncapped = budgets(D.mixture_name(suffix="skewed")), budgets(
        D.mixture_name(suffix="skewed_uncapped"))
    assert uncapped == pytest.approx({f: float(n) for f, n in sizes.items()})
    assert capped == pytest.approx({f: float(min(n, D.CAP)) for f, n in sizes.items()})
    task = seqio.get_mixture_or_task("synth_skewed_letters:zs_noopt")
    assert task.source.num_input_examples("train") == 50_000


def test_the_varied_phrasing_has_every_mixture():
    for suffix in ("", "held_in", "held_out", *D.EVAL_GROUPS, *D.ABLATIONS, "skewed"):
        simple, varied = D.mixture_name(suffix=suffix), D.mixture_name("varied", suffix)
        assert {b.replace("synth_", "synth_varied_", 1) for b in _bases(simple)} == _bases(
            varied) or suffix == "skewed"
        assert _formats(simple) == _formats(varied)
