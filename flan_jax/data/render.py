"""FlanTask specs and their rendering: a pure function of (seed, example), without seqio.

`FlanRenderer` renders one spec in one format; `RenderedRows` is a split of rendered
examples by index, what the Grain reader's workers read (this module imports neither
TensorFlow nor seqio, so a worker unpickles it cheaply). `flan.py` turns specs into seqio
Tasks over the same renderers, so both readers produce the same text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from flan_jax.data import formats as F
from flan_jax.data.fewshot import ExemplarPool, IndexedExemplars, pack_exemplars
from flan_jax.data.options import DEFAULT_STYLE, OptionsStyle
from flan_jax.data.rows import Rows
from flan_jax.data.sources import iter_source, random_access
from flan_jax.data.templates import Template, plain_value

Example = dict[str, Any]
RENDERED_FEATURES = ("inputs", "targets", "task", "format", "template_id")


@dataclasses.dataclass(frozen=True)
class CotFields:
    """Names of the question / rationale / answer fields of a chain-of-thought example."""

    question: str = "question"
    rationale: str = "rationale"
    answer: str = "answer"


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Few-shot exemplars: at most `max_shots`, within `budget_tokens` of inputs in all.

    `budget_tokens` should be the inputs length you train with (FLAN: 2048 - 128 margin).
    Exemplars are drawn by index from the whole `train_split` (never the query or a
    duplicate of it); `pool_size` bounds the pool of the first train examples used only
    for sources without random access.
    """

    max_shots: int = 5
    budget_tokens: int = 512
    pool_size: int = 256
    pattern: F.FewShotPattern = F.DEFAULT_FEW_SHOT


@dataclasses.dataclass(frozen=True)
class FlanTask:
    """An instruction task: where examples come from and how they are worded.

    `fields` maps a raw source example (numpy values) to the template fields; without it the
    raw features are used as they are. CoT formats need `cot` and `cot_templates`, whose
    targets should end with `formats.COT_ANSWER_SENTENCE` (use `formats.cot_target`).
    `cot_work` adds the `cot_work` format (Galactica's working memory): the CoT templates'
    inputs followed by `<work>`, and the target `{rationale} </work> {answer}`
    (`formats.work_inputs`, `work_target`); off by default.
    `options_required` drops the no-options formats of tasks whose options are the question
    (pick the odd one out of these four words) rather than a label set. `shuffle_buffer_size`
    is seqio's per-task buffer: keep it small for i.i.d. sources, since a mixture fills one
    buffer per task before it yields.
    """

    name: str
    source: Any  # a seqio DataSource; with `random_access(split)` for the Grain reader
    templates: Sequence[Template]
    fields: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    inversion_templates: Sequence[Template] = ()
    cot_templates: Sequence[Template] = ()
    cot: CotFields | None = None
    few_shot: FewShotConfig | None = FewShotConfig()
    randomize_options: bool = False
    options_required: bool = False
    shuffle_buffer_size: int | None = 1000
    metric_fns: Sequence[Callable[..., Any]] = ()
    postprocess_fn: Callable[..., Any] | None = None
    train_split: str = "train"
    seed: int = 0
    cot_work: bool = False

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"FlanTask {self.name!r}: needs at least one template")
        if self.cot_templates and self.cot is None:
            raise ValueError(f"FlanTask {self.name!r}: cot_templates need cot=CotFields(...)")
        if self.cot_work and not self.cot_templates:
            raise ValueError(f"FlanTask {self.name!r}: cot_work=True renders the CoT templates' "
                             "inputs; give cot_templates (and cot=CotFields(...))")
        if self.options_required and not self.has_options:
            raise ValueError(f"FlanTask {self.name!r}: options_required, but no template has "
                             "an {options_} slot")
        if self.few_shot is not None and self.train_split not in self.source.splits:
            raise ValueError(
                f"FlanTask {self.name!r}: few-shot exemplars come from split "
                f"{self.train_split!r}, which the source lacks (splits: "
                f"{sorted(self.source.splits)}); pass few_shot=None or train_split=...")

    @property
    def has_options(self) -> bool:
        return any(t.has_options for t in self.templates)

    def formats(self) -> tuple[str, ...]:
        """The formats this spec can render, in `formats.FORMATS` order."""
        out = []
        noopt = not self.options_required
        if self.has_options:
            out.append(F.ZS_OPT)
        if noopt:
            out.append(F.ZS_NOOPT)
        if self.few_shot is not None:
            if self.has_options:
                out.append(F.FS_OPT)
            if noopt:
                out.append(F.FS_NOOPT)
        if self.cot_templates:
            out.append(F.COT_ZS)
            if self.few_shot is not None:
                out.append(F.COT_FS)
        if self.inversion_templates:
            out.append(F.INV)
        if self.cot_work:
            out.append(F.COT_WORK)
        return tuple(out)

    def format_templates(self, fmt: str) -> tuple[Template, ...]:
        if fmt in (F.ZS_OPT, F.FS_OPT):
            return tuple(t for t in self.templates if t.has_options)
        if fmt in (F.ZS_NOOPT, F.FS_NOOPT):
            return tuple(t.without_options() for t in self.templates)
        if fmt in (F.COT_ZS, F.COT_FS):
            return tuple(self.cot_templates)
        if fmt == F.INV:
            return tuple(self.inversion_templates)
        if fmt == F.COT_WORK:
            work = F.work_target(f"{{{self.cot.rationale}}}", f"{{{self.cot.answer}}}")
            return tuple(Template(F.work_inputs(t.inputs), work) for t in self.cot_templates)
        raise ValueError(f"unknown format {fmt!r}")


class FlanRenderer:
    """Renders one spec's examples in one format; a pure function of (seed, example).

    It keeps what rendering needs, not the spec (whose source is a seqio object), so it
    pickles into Grain workers. Few-shot exemplars come by index from the spec's train
    rows when its source has random access, else from a pool of its first rows.
    """

    def __init__(self, spec: FlanTask, fmt: str, count_tokens: Callable[[str], int]):
        if fmt not in spec.formats():
            raise ValueError(f"FlanTask {spec.name!r} has no {fmt!r} format "
                             f"(it has {spec.formats()})")
        self.name, self.fmt, self.seed = spec.name, fmt, spec.seed
        self.count_tokens = count_tokens
        self.templates = spec.format_templates(fmt)
        self.randomize_options = spec.randomize_options
        self.few_shot = spec.few_shot if fmt in F.FEW_SHOT_FORMATS else None
        self._fields = spec.fields
        self._exemplars: IndexedExemplars | ExemplarPool | None = None
        if self.few_shot is not None:
            rows = random_access(spec.source, spec.train_split)
            if rows is not None:
                self._exemplars = IndexedExemplars(rows, self.fields)
            else:  # a stream: the first pool_size rows, read when first needed
                self._pool_from = (spec.source, spec.train_split)

    def fields(self, raw: Mapping[str, Any]) -> Example:
        plain = {k: plain_value(v) for k, v in raw.items()}
        return dict(self._fields(plain)) if self._fields else plain

    def options_style(self, key: str) -> OptionsStyle:
        """The options block style of one example (fixed unless the spec randomizes it)."""
        if not self.randomize_options:
            return DEFAULT_STYLE
        return OptionsStyle.from_seed(F.choose(self.seed, self.name, "style", key, n=2**31))

    def template_id(self, key: str) -> int:
        return F.choose(self.seed, self.name, self.fmt, key, n=len(self.templates))

    def exemplars(self) -> IndexedExemplars | ExemplarPool | None:
        """Where few-shot exemplars come from (None for other formats)."""
        if self._exemplars is None and self.few_shot is not None:
            source, split = self._pool_from
            raw = iter_source(source, split)
            self._exemplars = ExemplarPool(capacity=self.few_shot.pool_size).fill(
                self.fields(r) for r in raw)
        return self._exemplars

    def render(self, example: Example, pool: IndexedExemplars | ExemplarPool | None = None,
               *, template_id: int | None = None) -> Example:
        """One rendered example; `template_id` pins the template (default: seeded choice).
        `pool` overrides where exemplars come from (default: `exemplars()`)."""
        key = F.example_key(example)
        tid = self.template_id(key) if template_id is None else template_id
        template, style = self.templates[tid], self.options_style(key)
        inputs, targets = template.render(example, style=style, task=self.name,
                                          template_id=f"{self.fmt}/{tid}")
        if self.few_shot is not None:
            cfg = self.few_shot
            pool = pool if pool is not None else self.exemplars()
            exemplars = [
                template.render(ex, style=style, task=self.name, template_id=f"{self.fmt}/{tid}")
                for ex in pool.candidates(self.seed, key, cfg.max_shots)]
            inputs, _ = pack_exemplars(exemplars, inputs, cfg.pattern,
                                       budget=cfg.budget_tokens, count_tokens=self.count_tokens,
                                       max_shots=cfg.max_shots)
        return {"inputs": inputs, "targets": targets, "task": self.name,
                "format": self.fmt, "template_id": tid}

    def choices(self, example: Example, *, template_id: int | None = None) -> list[str]:
        """Each option's target text under the template and style `render` picks for this
        example (empty if it has none); rank classification scores these."""
        key = F.example_key(example)
        tid = self.template_id(key) if template_id is None else template_id
        return self.templates[tid].choices(example, style=self.options_style(key),
                                           task=self.name, template_id=f"{self.fmt}/{tid}")

    def iterate(self, raw: Iterable[Mapping[str, Any]]) -> Iterator[Example]:
        for r in raw:
            yield self.render(self.fields(r))


class RenderedRows:
    """A split of one (spec, format) by index: `rows[i]` is raw row i, rendered."""

    def __init__(self, raw: Rows, renderer: FlanRenderer):
        self.raw, self.renderer = raw, renderer

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> Example:
        return self.renderer.render(self.renderer.fields(self.raw[index]))

    def fields(self, index: int) -> Example:
        """Raw row `index` as template fields (what rank classification needs)."""
        return self.renderer.fields(self.raw[index])


def render_every_template(spec: FlanTask, raw_examples: Iterable[Mapping[str, Any]],
                          count_tokens: Callable[[str], int] = len,
                          formats: Iterable[str] | None = None) -> list[Example]:
    """Each example rendered by every template of every format of `spec` (or of `formats`):
    a preview and a check that no template misses a field. Few-shot exemplars come from the
    same examples (never the query itself)."""
    raw_examples = list(raw_examples)
    out = []
    for fmt in (spec.formats() if formats is None else formats):
        renderer = FlanRenderer(spec, fmt, count_tokens)
        examples = [renderer.fields(r) for r in raw_examples]
        pool = None
        if fmt in F.FEW_SHOT_FORMATS:
            pool = ExemplarPool(capacity=max(2, len(examples))).fill(examples)
        for tid in range(len(renderer.templates)):
            out += [renderer.render(ex, pool, template_id=tid) for ex in examples]
    return out
