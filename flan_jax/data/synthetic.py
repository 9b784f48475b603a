"""The embedded default data: procedural instruction families as seqio sources and FlanTasks.

Every example is a pure function of (seed, family, split, index): each split draws from its
own `random.Random` stream, so the data needs no download and never changes under a fixed
seed. Validation and test avoid examples of the train split where the family's space allows
(a bounded number of redraws; the tiny families, such as `letters`, repeat train examples).
Families live in `synthetic_families.py`; `mixtures/default.py` registers them.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Mapping

import seqio

from flan_jax.data import formats as F
from flan_jax.data.flan import CotFields, FewShotConfig, FlanTask
from flan_jax.data.sources import python_source
from flan_jax.data.synthetic_families import FAMILIES, Example, Family

SPLIT_SIZES: Mapping[str, int] = {"train": 5000, "validation": 200, "test": 200}
# Short exemplars: three shots fit well inside the demo's 256-token inputs.
FEW_SHOT = FewShotConfig(max_shots=3, budget_tokens=192, pool_size=64)
TASK_PREFIX = "synth_"
# Examples are independent draws already; a small buffer only mixes few-shot neighbours.
SHUFFLE_BUFFER = 64
_REDRAWS = 20


def family(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise KeyError(f"no synthetic family {name!r} (have {[f.name for f in FAMILIES]})")


def _rng(seed: int, fam: Family, split: str) -> random.Random:
    # String seeds hash with SHA-512 inside `random`, the same on every platform and run.
    return random.Random(f"flan-jax/{seed}/{fam.name}/{split}")


@functools.lru_cache(maxsize=64)
def _train_keys(fam: Family, seed: int, n_train: int) -> frozenset[str]:
    rng = _rng(seed, fam, "train")
    return frozenset(F.example_key(fam.make(rng)) for _ in range(n_train))


def examples(fam: Family, split: str, *, seed: int = 0,
             sizes: Mapping[str, int] = SPLIT_SIZES) -> Iterator[Example]:
    """The `sizes[split]` examples of one family's split, always in the same order."""
    if split not in sizes:
        raise KeyError(f"synthetic family {fam.name!r} has no split {split!r} "
                       f"(have {sorted(sizes)})")
    rng = _rng(seed, fam, split)
    avoid = frozenset() if split == "train" else _train_keys(fam, seed, sizes.get("train", 0))
    for _ in range(sizes[split]):
        ex = fam.make(rng)
        for _ in range(_REDRAWS):
            if F.example_key(ex) not in avoid:
                break
            ex = fam.make(rng)
        yield ex


def _signature(fam: Family):
    import tensorflow as tf

    sample = fam.make(random.Random(0))
    sig = {}
    for name, value in sample.items():
        if isinstance(value, list):
            sig[name] = tf.TensorSpec((None,), tf.string)
        elif isinstance(value, str):
            sig[name] = tf.TensorSpec((), tf.string)
        else:
            raise TypeError(f"synthetic family {fam.name!r}: field {name!r} is "
                            f"{type(value).__name__}; families produce str or list[str]")
    return sig


def source(fam: Family, *, seed: int = 0,
           sizes: Mapping[str, int] = SPLIT_SIZES) -> seqio.DataSource:
    """A seqio source of one family's raw examples (shuffling is left to seqio's buffer)."""
    data_seed = seed

    def generate(split: str, shuffle: bool, seed: int | None) -> Iterator[Example]:
        del shuffle, seed  # one deterministic stream per split
        return examples(fam, split, seed=data_seed, sizes=sizes)

    return python_source(generate, _signature(fam), tuple(sizes), num_input_examples=sizes)


def spec(fam: Family, *, seed: int = 0, sizes: Mapping[str, int] = SPLIT_SIZES) -> FlanTask:
    """The FlanTask of one family: its templates, CoT and inversion, seeded option styles."""
    return FlanTask(
        name=TASK_PREFIX + fam.name, source=source(fam, seed=seed, sizes=sizes),
        templates=fam.templates, inversion_templates=fam.inversion_templates,
        cot_templates=fam.cot_templates, cot=CotFields() if fam.cot_templates else None,
        few_shot=FEW_SHOT, randomize_options=True, options_required=fam.options_required,
        shuffle_buffer_size=SHUFFLE_BUFFER, seed=seed)


def specs(*, seed: int = 0, sizes: Mapping[str, int] = SPLIT_SIZES,
          held_out: bool | None = None) -> tuple[FlanTask, ...]:
    """Specs of every family (`held_out=True/False` selects evaluation-only or training ones)."""
    return tuple(spec(f, seed=seed, sizes=sizes) for f in FAMILIES
                 if held_out is None or f.held_out == held_out)


def sample_texts(n_per_family: int, *, seed: int = 0) -> Iterator[str]:
    """Rendered inputs and targets of every template in every format, for vocabulary training.

    Cycles through each format's templates so that every template appears, and renders
    options in several seeded styles; few-shot formats add nothing new to the text.
    """
    from flan_jax.data.flan import FlanRenderer

    sizes = {"train": n_per_family}
    for fam in FAMILIES:
        task = spec(fam, seed=seed, sizes=sizes)
        for fmt in task.formats():
            if fmt in F.FEW_SHOT_FORMATS:
                continue
            renderer = FlanRenderer(task, fmt, count_tokens=len)
            templates = itertools.cycle(enumerate(renderer.templates))
            for i, ex in enumerate(examples(fam, "train", seed=seed, sizes=sizes)):
                tid, template = next(templates)
                style = renderer.options_style(str(i))
                yield from template.render(ex, style=style, task=task.name, template_id=tid)
