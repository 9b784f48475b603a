"""The embedded default data: procedural instruction families as seqio sources and FlanTasks.

Every example is a pure function of (seed, family, split, index), drawn from its own
`random.Random`, so the data needs no download, never changes under a fixed seed, and is
read by index (`SyntheticRows`) as cheaply as in order. Validation and test avoid examples
of the train split where the family's space allows (a bounded number of redraws; the tiny
families, such as `letters`, repeat train examples).
Families live in `synthetic_families.py`; `mixtures/default.py` registers them (and
`mixtures/science.py` the Galactica-markup ones of `science_families.py`).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Mapping

from flan_jax.data import formats as F
from flan_jax.data.render import CotFields, FewShotConfig, FlanTask
from flan_jax.data.sources import indexed_source
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


def _rng(seed: int, fam: Family, split: str, index: int) -> random.Random:
    # String seeds hash with SHA-512 inside `random`, the same on every platform and run.
    return random.Random(f"flan-jax/{seed}/{fam.name}/{split}/{index}")


@functools.lru_cache(maxsize=64)
def _train_keys(fam: Family, seed: int, n_train: int) -> frozenset[str]:
    return frozenset(F.example_key(fam.make(_rng(seed, fam, "train", i)))
                     for i in range(n_train))


class SyntheticRows:
    """One family's split by index: row i is a pure function of (seed, family, split, i)."""

    def __init__(self, fam: Family, split: str, *, seed: int = 0,
                 sizes: Mapping[str, int] = SPLIT_SIZES):
        if split not in sizes:
            raise KeyError(f"synthetic family {fam.name!r} has no split {split!r} "
                           f"(have {sorted(sizes)})")
        self.fam, self.split, self.seed = fam, split, seed
        self.size, self.n_train = sizes[split], sizes.get("train", 0)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic {self.fam.name}/{self.split}: row {index} of "
                             f"{self.size}")
        rng = _rng(self.seed, self.fam, self.split, index)
        ex = self.fam.make(rng)
        if self.split == "train":
            return ex
        avoid = _train_keys(self.fam, self.seed, self.n_train)
        for _ in range(_REDRAWS):
            if F.example_key(ex) not in avoid:
                break
            ex = self.fam.make(rng)
        return ex


def examples(fam: Family, split: str, *, seed: int = 0,
             sizes: Mapping[str, int] = SPLIT_SIZES) -> Iterator[Example]:
    """The `sizes[split]` examples of one family's split, always in the same order."""
    rows = SyntheticRows(fam, split, seed=seed, sizes=sizes)
    return (rows[i] for i in range(len(rows)))


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


def source(fam: Family, *, seed: int = 0, sizes: Mapping[str, int] = SPLIT_SIZES):
    """A seqio source of one family's raw examples, in order and by index (`IndexedSource`);
    shuffling is left to the reader."""
    return indexed_source({split: SyntheticRows(fam, split, seed=seed, sizes=sizes)
                           for split in sizes}, _signature(fam))


def base_name(fam: Family, variant: str = "") -> str:
    """The family's task base name: `synth_<family>`, `synth_varied_<family>` in the varied
    phrasing, and `variant` (e.g. "skewed") before the family name when given."""
    parts = [p for p in (fam.phrasing if fam.phrasing != "simple" else "", variant) if p]
    return TASK_PREFIX + "".join(f"{p}_" for p in parts) + fam.name


def spec(fam: Family, *, seed: int = 0, sizes: Mapping[str, int] = SPLIT_SIZES,
         variant: str = "", cot_work: bool = False) -> FlanTask:
    """The FlanTask of one family: its templates, CoT and inversion, seeded option styles;
    `cot_work` adds the `<work>` CoT format to a family with CoT templates."""
    return FlanTask(
        name=base_name(fam, variant), source=source(fam, seed=seed, sizes=sizes),
        templates=fam.templates, inversion_templates=fam.inversion_templates,
        cot_templates=fam.cot_templates, cot=CotFields() if fam.cot_templates else None,
        few_shot=FEW_SHOT, randomize_options=True, options_required=fam.options_required,
        shuffle_buffer_size=SHUFFLE_BUFFER, seed=seed,
        cot_work=cot_work and bool(fam.cot_templates))


def specs(*, seed: int = 0, sizes: Mapping[str, int] = SPLIT_SIZES,
          held_out: bool | None = None, phrasing: str = "simple") -> tuple[FlanTask, ...]:
    """Specs of every family (`held_out=True/False` selects evaluation-only or training ones)
    in a phrasing (`flan_jax.data.phrasing`: "simple", or "varied" for the same facts in
    harder, more varied words)."""
    from flan_jax.data.phrasing import phrased

    return tuple(spec(phrased(f, phrasing), seed=seed, sizes=sizes) for f in FAMILIES
                 if held_out is None or f.held_out == held_out)


def sample_texts(n_per_family: int, *, seed: int = 0) -> Iterator[str]:
    """Rendered inputs and targets of every template in every format, for vocabulary training.

    Cycles through each format's templates so that every template appears, and renders
    options in several seeded styles; few-shot formats add nothing new to the text.
    """
    from flan_jax.data.render import FlanRenderer

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
