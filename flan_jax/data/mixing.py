"""Mixing rates: examples-proportional with a cap, format proportions, weighted submixtures.

A base task's budget is `min(cap, number of train examples)`; it is split over the task's
registered formats (zero-shot vs few-shot, with vs without options), inverted formats add
`inversion_weight` of it, and submixtures are scaled so each one's rates sum to its weight.
The FLAN 2022 recipe ships as `FLAN_2022`, ready to apply to your own tasks.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence

import seqio

from flan_jax.data import formats as F

Rates = dict[str, float]  # seqio Task name -> rate

# (opt, noopt, then the CoT formats: each CoT format is one slot beside the pair)
_ZERO_SHOT = (F.ZS_OPT, F.ZS_NOOPT, F.COT_ZS, F.COT_WORK)
_FEW_SHOT = (F.FS_OPT, F.FS_NOOPT, F.COT_FS)


@dataclasses.dataclass(frozen=True)
class FormatMix:
    """How a task's budget is shared between its formats.

    `zero_shot` of it goes to zero-shot formats and the rest to few-shot ones (all of it to
    whichever kind a task has, if only one); within each, `with_options` goes to the options
    variant when the task has one; inverted formats get `inversion_weight` on top.
    `cot_work_weight` scales the `<work>` CoT format's zero-shot slot (a task that opts in:
    `FlanTask(cot_work=True)`): 2.0 gives it twice the plain CoT format's share, 0.0 none.
    """

    zero_shot: float = 0.5
    with_options: float = 0.5
    inversion_weight: float = 0.3
    cot_work_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("zero_shot", "with_options"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FormatMix.{name}={getattr(self, name)} must be in [0, 1]")
        for name in ("inversion_weight", "cot_work_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"FormatMix.{name} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Submixture:
    weight: float
    cap: int
    mix: FormatMix = FormatMix()


# FLAN 2022 (the Flan Collection): submixture weights and per-task example caps.
FLAN_2022: Mapping[str, Submixture] = {
    "flan2021": Submixture(weight=0.4, cap=30_000),
    "t0": Submixture(weight=0.32, cap=20_000),
    "niv2": Submixture(weight=0.2, cap=5_000),
    "cot": Submixture(weight=0.05, cap=100_000),
    "dialog": Submixture(weight=0.03, cap=200_000),
}


def split_task_name(name: str) -> tuple[str, str]:
    base, sep, fmt = name.rpartition(":")
    if not sep or fmt not in F.FORMATS:
        raise ValueError(f"{name!r} is not a flan-jax task name '{{base}}:{{format}}' "
                         f"with a format in {F.FORMATS}")
    return base, fmt


def _group_shares(formats: set[str], group: Sequence[str], share: float,
                  with_options: float) -> dict[str, float]:
    present = [f for f in group if f in formats]
    if not present:
        return {}
    opt, noopt = group[0], group[1]
    plain = [f for f in present if f not in (opt, noopt)]  # CoT formats
    out: dict[str, float] = {}
    # The (opt, noopt) pair counts as one slot beside each CoT format.
    slots = len(plain) + (1 if (opt in formats or noopt in formats) else 0)
    for f in plain:
        out[f] = share / slots
    pair = share / slots if slots > len(plain) else 0.0
    if opt in formats and noopt in formats:
        out[opt], out[noopt] = pair * with_options, pair * (1 - with_options)
    elif opt in formats or noopt in formats:
        out[opt if opt in formats else noopt] = pair
    return out


def format_shares(formats: set[str], mix: FormatMix = FormatMix()) -> dict[str, float]:
    """Each format's share of one base task's budget (inverted adds on top)."""
    has_zs = any(f in formats for f in _ZERO_SHOT)
    has_fs = any(f in formats for f in _FEW_SHOT)
    zs = mix.zero_shot if (has_zs and has_fs) else float(has_zs)
    shares = {**_group_shares(formats, _ZERO_SHOT, zs, mix.with_options),
              **_group_shares(formats, _FEW_SHOT, 1.0 - zs if has_fs else 0.0,
                              mix.with_options)}
    if F.INV in formats:
        shares[F.INV] = mix.inversion_weight
    if F.COT_WORK in shares:
        shares[F.COT_WORK] *= mix.cot_work_weight
    return shares


def num_train_examples(task_name: str, split: str = "train") -> int:
    """Examples in a registered task's split, as its source reports them."""
    task = seqio.get_mixture_or_task(task_name)
    n = task.source.num_input_examples(split)
    if n is None:
        raise ValueError(f"task {task_name!r}: its source can't count split {split!r}; "
                         "give the sizes explicitly (sizes={...})")
    return int(n)


def task_rates(task_names: Sequence[str], *, cap: int, mix: FormatMix = FormatMix(),
               sizes: Mapping[str, int] | None = None, split: str = "train") -> Rates:
    """Examples-proportional rates with a cap for registered `{base}:{format}` tasks.

    `sizes` maps base names to example counts; otherwise each task's source is asked.
    """
    if cap <= 0:
        raise ValueError(f"cap={cap} must be positive")
    by_base: dict[str, dict[str, str]] = defaultdict(dict)
    for name in task_names:
        base, fmt = split_task_name(name)
        by_base[base][fmt] = name
    rates: Rates = {}
    for base, fmts in by_base.items():
        n = sizes[base] if sizes and base in sizes else num_train_examples(
            next(iter(fmts.values())), split)
        budget = float(min(cap, n))
        for fmt, share in format_shares(set(fmts), mix).items():
            if share > 0:
                rates[fmts[fmt]] = budget * share
    return rates


def combine(submixtures: Mapping[str, tuple[Rates, float]]) -> Rates:
    """Scales each submixture's rates to sum to its weight, then merges them."""
    out: Rates = {}
    for sub, (rates, weight) in submixtures.items():
        total = sum(rates.values())
        if total <= 0:
            raise ValueError(f"submixture {sub!r} has no examples")
        for name, rate in rates.items():
            out[name] = out.get(name, 0.0) + weight * rate / total
    return out


def recipe_rates(tasks_by_submixture: Mapping[str, Sequence[str]],
                 recipe: Mapping[str, Submixture] = FLAN_2022, *,
                 sizes: Mapping[str, int] | None = None) -> Rates:
    """Rates for your own tasks grouped like a recipe (default: FLAN 2022's submixtures)."""
    unknown = set(tasks_by_submixture) - set(recipe)
    if unknown:
        raise ValueError(f"submixture(s) {sorted(unknown)} not in the recipe {sorted(recipe)}")
    return combine({
        sub: (task_rates(names, cap=recipe[sub].cap, mix=recipe[sub].mix, sizes=sizes),
              recipe[sub].weight)
        for sub, names in tasks_by_submixture.items() if names})


def register_mixture(name: str, rates: Mapping[str, float], *, replace: bool = False) -> str:
    """Registers a seqio Mixture with these rates."""
    from flan_jax.data.registry import make_room

    make_room(seqio.MixtureRegistry, [name], replace=replace, kind="Mixture")
    seqio.MixtureRegistry.add(name, sorted(rates.items()))
    return name
