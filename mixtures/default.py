"""The embedded default: synthetic instruction families, registered when this is imported.

    import mixtures.default
    seqio.get_mixture_or_task("flan_jax_default")           # training mixture
    seqio.get_mixture_or_task("flan_jax_default_held_in")   # zero-shot + CoT eval, seen families
    seqio.get_mixture_or_task("flan_jax_default_held_out")  # zero-shot eval, unseen families

Training uses every format (zero-/few-shot, with/without options, CoT, inversion) of the
families not flagged held-out, examples-proportional with a cap; the held-out mixture has
only the zero-shot formats of the held-out families, so evaluating on it measures zero-shot
generalization to unseen instructions, as in FLAN.
"""

from __future__ import annotations

import seqio

from flan_jax.data import formats as F
from flan_jax.data import mixing, synthetic
from flan_jax.data.flan import register_flan_task

TRAIN_MIXTURE = "flan_jax_default"
HELD_OUT_MIXTURE = "flan_jax_default_held_out"
HELD_IN_EVAL_MIXTURE = "flan_jax_default_held_in"  # zero-shot + CoT formats of trained families
EVAL_FORMATS = (F.ZS_OPT, F.ZS_NOOPT)
CAP = 3000  # per family; every family has 5000 train examples, so all weigh the same
MIX = mixing.FormatMix(zero_shot=0.5, with_options=0.5, inversion_weight=0.3)


def register(*, vocabulary: seqio.Vocabulary | None = None, seed: int = 0,
             replace: bool = False) -> dict[str, list[str]]:
    """Registers every family's tasks and both mixtures; returns {mixture: task names}."""
    train, held_in, held_out = [], [], []
    for spec in synthetic.specs(seed=seed):
        names = register_flan_task(spec, vocabulary, replace=replace)
        if synthetic.family(spec.name.removeprefix(synthetic.TASK_PREFIX)).held_out:
            held_out += [n for n in names if mixing.split_task_name(n)[1] in EVAL_FORMATS]
        else:
            train += names
            held_in += [n for n in names
                        if mixing.split_task_name(n)[1] in EVAL_FORMATS + (F.COT_ZS,)]
    sizes = {synthetic.TASK_PREFIX + f.name: synthetic.SPLIT_SIZES["train"]
             for f in synthetic.FAMILIES}
    mixing.register_mixture(TRAIN_MIXTURE, mixing.task_rates(train, cap=CAP, mix=MIX,
                                                             sizes=sizes), replace=replace)
    mixing.register_mixture(HELD_OUT_MIXTURE, mixing.task_rates(held_out, cap=CAP, mix=MIX,
                                                                sizes=sizes), replace=replace)
    mixing.register_mixture(HELD_IN_EVAL_MIXTURE, {n: 1.0 for n in held_in}, replace=replace)
    return {TRAIN_MIXTURE: train, HELD_IN_EVAL_MIXTURE: held_in, HELD_OUT_MIXTURE: held_out}


if TRAIN_MIXTURE not in seqio.MixtureRegistry.names():
    register()
