"""The embedded default: synthetic instruction families, registered when this is imported.

    import mixtures.default
    seqio.get_mixture_or_task("flan_jax_default")           # training mixture
    seqio.get_mixture_or_task("flan_jax_default_held_in")   # zero-shot + CoT eval, seen families
    seqio.get_mixture_or_task("flan_jax_default_held_out")  # zero-shot eval, unseen families

Training uses every format (zero-/few-shot, with/without options, CoT, inversion) of the
families not flagged held-out, examples-proportional with a cap; the held-out mixture has
only the zero-shot formats of the held-out families, so evaluating on it measures zero-shot
generalization to unseen instructions, as in FLAN.

For studies (`studies/*.gin`) it also registers, all over the same tasks:
- eval groups apart: `_held_in_zs`, `_held_in_fs` (few-shot) and `_cot` (CoT zero-shot);
- the Flan Collection ablations' training mixtures (`ABLATIONS`): zero-shot or few-shot
  templates only, no inversion, no CoT, and a collection of skewed family sizes with and
  without the cap;
- every mixture above in the varied phrasing (`flan_jax_default_varied...`, tasks
  `synth_varied_<family>`): the same facts in harder, more varied words.
Registration builds nothing (tasks are made lazily), so the whole set costs ~10 ms.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio

from flan_jax.data import formats as F
from flan_jax.data import mixing, synthetic
from flan_jax.data.flan import register_flan_task
from flan_jax.data.phrasing import PHRASINGS, SIMPLE, phrased

TRAIN_MIXTURE = "flan_jax_default"
HELD_OUT_MIXTURE = "flan_jax_default_held_out"
HELD_IN_EVAL_MIXTURE = "flan_jax_default_held_in"  # zero-shot + CoT formats of trained families
EVAL_FORMATS = (F.ZS_OPT, F.ZS_NOOPT)
CAP = 3000  # per family; every family has 5000 train examples, so all weigh the same
MIX = mixing.FormatMix(zero_shot=0.5, with_options=0.5, inversion_weight=0.3)
# The eval groups a study reports apart: {suffix: formats of the trained families}.
EVAL_GROUPS: Mapping[str, tuple[str, ...]] = {
    "held_in": EVAL_FORMATS + (F.COT_ZS,), "held_in_zs": EVAL_FORMATS,
    "held_in_fs": (F.FS_OPT, F.FS_NOOPT), "cot": (F.COT_ZS,)}
# The ablations' training mixtures: {suffix: (format mix, formats left out)}.
ABLATIONS: Mapping[str, tuple[mixing.FormatMix, tuple[str, ...]]] = {
    "zs_only": (mixing.FormatMix(zero_shot=1.0, with_options=0.5, inversion_weight=0.3), ()),
    "fs_only": (mixing.FormatMix(zero_shot=0.0, with_options=0.5, inversion_weight=0.3), ()),
    "no_inversion": (mixing.FormatMix(zero_shot=0.5, with_options=0.5,
                                      inversion_weight=0.0), ()),
    "no_cot": (MIX, (F.COT_ZS, F.COT_FS)),
}
# The cap ablation needs families of unequal size (the synthetic ones all have 5000): the
# trained families in FAMILIES order get 500 ... 50,000 train examples, geometrically.
SKEW_SMALLEST, SKEW_RATIO = 500, 100.0
UNCAPPED = 10**9


def mixture_name(phrasing: str = SIMPLE, suffix: str = "") -> str:
    """`flan_jax_default[_varied][_suffix]`."""
    parts = [TRAIN_MIXTURE] + ([phrasing] if phrasing != SIMPLE else []) + (
        [suffix] if suffix else [])
    return "_".join(parts)


def skewed_sizes() -> dict[str, int]:
    """{family: train examples} of the skewed collection (trained families only)."""
    trained = [f for f in synthetic.FAMILIES if not f.held_out]
    n = len(trained) - 1
    return {f.name: round(SKEW_SMALLEST * SKEW_RATIO ** (i / n)) for i, f in enumerate(trained)}


def _register_phrasing(phrasing: str, vocabulary, seed: int, replace: bool
                       ) -> dict[str, list[str]]:
    train, held_out = [], []
    groups: dict[str, list[str]] = {g: [] for g in EVAL_GROUPS}
    sizes = {}
    for fam in synthetic.FAMILIES:
        spec = synthetic.spec(phrased(fam, phrasing), seed=seed)
        sizes[spec.name] = synthetic.SPLIT_SIZES["train"]
        names = register_flan_task(spec, vocabulary, replace=replace)
        if fam.held_out:
            held_out += [n for n in names if mixing.split_task_name(n)[1] in EVAL_FORMATS]
            continue
        train += names
        for group, formats in EVAL_GROUPS.items():
            groups[group] += [n for n in names if mixing.split_task_name(n)[1] in formats]
    out = {mixture_name(phrasing): mixing.task_rates(train, cap=CAP, mix=MIX, sizes=sizes),
           mixture_name(phrasing, "held_out"): mixing.task_rates(held_out, cap=CAP, mix=MIX,
                                                                 sizes=sizes)}
    out |= {mixture_name(phrasing, g): {n: 1.0 for n in names} for g, names in groups.items()}
    for suffix, (mix, left_out) in ABLATIONS.items():
        kept = [n for n in train if mixing.split_task_name(n)[1] not in left_out]
        out[mixture_name(phrasing, suffix)] = mixing.task_rates(kept, cap=CAP, mix=mix,
                                                                sizes=sizes)
    skewed = []
    skew = skewed_sizes()
    for fam in synthetic.FAMILIES:
        if fam.name in skew:
            spec = synthetic.spec(phrased(fam, phrasing), seed=seed, variant="skewed",
                                  sizes={**synthetic.SPLIT_SIZES, "train": skew[fam.name]})
            sizes[spec.name] = skew[fam.name]
            skewed += register_flan_task(spec, vocabulary, replace=replace)
    out[mixture_name(phrasing, "skewed")] = mixing.task_rates(skewed, cap=CAP, mix=MIX,
                                                              sizes=sizes)
    out[mixture_name(phrasing, "skewed_uncapped")] = mixing.task_rates(
        skewed, cap=UNCAPPED, mix=MIX, sizes=sizes)
    for name, rates in out.items():
        mixing.register_mixture(name, rates, replace=replace)
    return {name: sorted(rates) for name, rates in out.items()}


def register(*, vocabulary: seqio.Vocabulary | None = None, seed: int = 0,
             replace: bool = False) -> dict[str, list[str]]:
    """Registers every family's tasks and the mixtures; returns {mixture: task names}."""
    out: dict[str, list[str]] = {}
    for phrasing in PHRASINGS:
        out |= _register_phrasing(phrasing, vocabulary, seed, replace)
    return out


if TRAIN_MIXTURE not in seqio.MixtureRegistry.names():
    register()
