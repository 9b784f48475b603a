"""mixtures.default: registered on import, held-out families kept out of training."""

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
