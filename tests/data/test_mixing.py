"""Mixing rates by hand count, the FLAN 2022 recipe, and shares measured over 10k draws."""

import collections

import pytest
import seqio
import tensorflow as tf

from flan_jax.data import mixing as M

VOCAB = seqio.ByteVocabulary()


def test_format_shares():
    all_fmts = {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "inv"}
    assert M.format_shares(all_fmts) == {"zs_opt": 0.25, "zs_noopt": 0.25, "fs_opt": 0.25,
                                         "fs_noopt": 0.25, "inv": 0.3}
    assert M.format_shares({"zs_noopt", "fs_noopt"}) == {"zs_noopt": 0.5, "fs_noopt": 0.5}
    assert M.format_shares({"zs_noopt"}) == {"zs_noopt": 1.0}
    mix = M.FormatMix(zero_shot=0.8, with_options=0.25, inversion_weight=0.0)
    shares = M.format_shares({"zs_opt", "zs_noopt", "fs_noopt", "cot_zs", "cot_fs", "inv"}, mix)
    assert shares == pytest.approx({"zs_opt": 0.1, "zs_noopt": 0.3, "cot_zs": 0.4,
                                    "fs_noopt": 0.1, "cot_fs": 0.1, "inv": 0.0})
    with pytest.raises(ValueError, match="zero_shot=1.5"):
        M.FormatMix(zero_shot=1.5)


def test_examples_proportional_rates_with_a_cap():
    names = ["big:zs_noopt", "big:fs_noopt", "small:zs_noopt", "small:fs_noopt", "small:inv"]
    rates = M.task_rates(names, cap=1000, sizes={"big": 50_000, "small": 200})
    assert rates == {"big:zs_noopt": 500, "big:fs_noopt": 500, "small:zs_noopt": 100,
                     "small:fs_noopt": 100, "small:inv": 60}
    with pytest.raises(ValueError, match="'oops' is not a flan-jax task name"):
        M.task_rates(["oops"], cap=10, sizes={})


def test_flan_2022_recipe_weights_and_caps():
    assert {k: (v.weight, v.cap) for k, v in M.FLAN_2022.items()} == {
        "flan2021": (0.4, 30_000), "t0": (0.32, 20_000), "niv2": (0.2, 5_000),
        "cot": (0.05, 100_000), "dialog": (0.03, 200_000)}
    sizes = {"a": 100_000, "b": 10_000, "n1": 9_000, "n2": 1_000, "c": 50}
    rates = M.recipe_rates({"flan2021": ["a:zs_noopt", "b:zs_noopt"],
                            "niv2": ["n1:zs_noopt", "n2:zs_noopt"], "cot": ["c:cot_zs"]},
                           sizes=sizes)
    # flan2021: caps make a:b = 30k:10k; niv2: 5k:1k; each submixture sums to its weight.
    assert rates["a:zs_noopt"] == pytest.approx(0.4 * 0.75)
    assert rates["b:zs_noopt"] == pytest.approx(0.4 * 0.25)
    assert rates["n1:zs_noopt"] == pytest.approx(0.2 * 5 / 6)
    assert rates["c:cot_zs"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"submixture\(s\) \['flan'\] not in the recipe"):
        M.recipe_rates({"flan": ["a:zs_noopt"]}, sizes=sizes)


@pytest.fixture()
def tiny_tasks():
    names = []
    for base, n in (("alpha", 3000), ("beta", 1000), ("gamma", 50)):
        for fmt in ("zs_noopt", "fs_noopt"):
            name = f"{base}:{fmt}"

            def dataset_fn(split, shuffle_files, seed=None, _name=name):
                return tf.data.Dataset.from_tensors(
                    {"inputs": "x", "targets": _name}).repeat(1)

            seqio.TaskRegistry.add(
                name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"],
                                                      num_input_examples={"train": n}),
                output_features={k: seqio.Feature(VOCAB, add_eos=False)
                                 for k in ("inputs", "targets")},
                preprocessors=[seqio.preprocessors.tokenize])
            names.append(name)
    yield names
    for name in names:
        seqio.TaskRegistry.remove(name)
    if "test_mix" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove("test_mix")


def test_sampled_shares_match_rates_over_10k_draws(tiny_tasks):
    rates = M.task_rates(tiny_tasks, cap=2000)  # sizes asked from the sources
    assert rates["alpha:zs_noopt"] == 1000 and rates["gamma:fs_noopt"] == 25
    M.register_mixture("test_mix", rates)
    with pytest.raises(ValueError, match="'test_mix' is already registered"):
        M.register_mixture("test_mix", rates)
    ds = seqio.get_mixture_or_task("test_mix").get_dataset(
        {"inputs": 8, "targets": 32}, split="train", shuffle=False, seed=0, num_epochs=None,
        use_cached=False)
    draws = 10_000
    counts = collections.Counter(
        VOCAB.decode(ex["targets"].tolist()) for ex in ds.take(draws).as_numpy_iterator())
    total = sum(rates.values())
    for name, rate in rates.items():
        assert counts[name] / draws == pytest.approx(rate / total, abs=0.015), (name, counts)
