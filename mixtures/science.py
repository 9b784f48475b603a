"""Galactica-style scientific tasks (`flan_jax.data.science_families`), registered on import.

    import mixtures.science
    seqio.get_mixture_or_task("flan_jax_science")           # training mixture
    seqio.get_mixture_or_task("flan_jax_science_held_in")   # zero-shot + CoT eval, seen families
    seqio.get_mixture_or_task("flan_jax_science_held_out")  # zero-shot eval, unseen families

Tasks are `synth_sci_<family>:<format>`; unit arithmetic also has the `cot_work` format
(the prompt ending in `<work>`, the target `... </work> answer`). Rates are examples-proportional with the default's cap and
format mix (`mixtures.default`), over the same split sizes; the default mixture, its tasks
and its vocabulary are untouched. Every task uses `science_vocabulary()`.
"""

from __future__ import annotations

import functools

import seqio

from flan_jax.data import formats as F
from flan_jax.data import mixing, synthetic
from flan_jax.data.flan import register_flan_task
from flan_jax.data.science_families import SCIENCE_FAMILIES, VARIANT
from mixtures.default import CAP, EVAL_FORMATS, MIX

TRAIN_MIXTURE = "flan_jax_science"
HELD_IN_EVAL_MIXTURE = "flan_jax_science_held_in"
HELD_OUT_MIXTURE = "flan_jax_science_held_out"
HELD_IN_FORMATS = EVAL_FORMATS + (F.COT_ZS, F.COT_WORK)


@functools.lru_cache(maxsize=1)
def science_vocabulary() -> seqio.Vocabulary:
    """The vocabulary of the science tasks: Galactica's, over the shipped model (its markers
    unsplittable pieces, sequence spans and digits one character per token)."""
    from flan_jax.data.vocab import galactica_vocabulary

    return galactica_vocabulary()


def register(*, vocabulary: seqio.Vocabulary | None = None, seed: int = 0,
             replace: bool = False) -> dict[str, list[str]]:
    """Registers every science family's tasks and the three mixtures; returns
    {mixture: task names}."""
    vocabulary = vocabulary or science_vocabulary()
    train, held_in, held_out = [], [], []
    sizes = {}
    for fam in SCIENCE_FAMILIES:
        spec = synthetic.spec(fam, seed=seed, variant=VARIANT, cot_work=True)
        sizes[spec.name] = synthetic.SPLIT_SIZES["train"]
        names = register_flan_task(spec, vocabulary, replace=replace)
        fmts = {n: mixing.split_task_name(n)[1] for n in names}
        if fam.held_out:
            held_out += [n for n in names if fmts[n] in EVAL_FORMATS]
        else:
            train += names
            held_in += [n for n in names if fmts[n] in HELD_IN_FORMATS]
    out = {TRAIN_MIXTURE: mixing.task_rates(train, cap=CAP, mix=MIX, sizes=sizes),
           HELD_IN_EVAL_MIXTURE: {n: 1.0 for n in held_in},
           HELD_OUT_MIXTURE: mixing.task_rates(held_out, cap=CAP, mix=MIX, sizes=sizes)}
    for name, rates in out.items():
        mixing.register_mixture(name, rates, replace=replace)
    return {name: sorted(rates) for name, rates in out.items()}


if TRAIN_MIXTURE not in seqio.MixtureRegistry.names():
    register()
