"""FlanTask: one instruction task spec -> seqio Tasks for every Flan format.

`register_flan_task(spec)` registers `{name}:{format}` for each format the spec
supports (see `formats.FORMATS`): zero-shot and few-shot with and without options, CoT
zero-/few-shot, and inverted. Rendering runs in Python over the raw source's examples;
tokenisation and EOS are ordinary seqio preprocessors, so packing, caching and evaluation
work as for any seqio Task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import seqio

from flan_jax.data import formats as F
from flan_jax.data import metrics
from flan_jax.data.fewshot import ExemplarPool, pack_exemplars
from flan_jax.data.options import DEFAULT_STYLE, OptionsStyle
from flan_jax.data.sources import iter_source, python_source
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
    Exemplars come from `train_split`, from a pool of `pool_size` examples.
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
    `options_required` drops the no-options formats of tasks whose options are the question
    (pick the odd one out of these four words) rather than a label set. `shuffle_buffer_size`
    is seqio's per-task buffer: keep it small for i.i.d. sources, since a mixture fills one
    buffer per task before it yields.
    """

    name: str
    source: seqio.DataSource
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

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"FlanTask {self.name!r}: needs at least one template")
        if self.cot_templates and self.cot is None:
            raise ValueError(f"FlanTask {self.name!r}: cot_templates need cot=CotFields(...)")
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
        raise ValueError(f"unknown format {fmt!r}")


class FlanRenderer:
    """Renders one spec's examples in one format; a pure function of (seed, example)."""

    def __init__(self, spec: FlanTask, fmt: str, count_tokens: Callable[[str], int]):
        if fmt not in spec.formats():
            raise ValueError(f"FlanTask {spec.name!r} has no {fmt!r} format "
                             f"(it has {spec.formats()})")
        self.spec, self.fmt, self.count_tokens = spec, fmt, count_tokens
        self.templates = spec.format_templates(fmt)

    def fields(self, raw: Mapping[str, Any]) -> Example:
        plain = {k: plain_value(v) for k, v in raw.items()}
        return dict(self.spec.fields(plain)) if self.spec.fields else plain

    def options_style(self, key: str) -> OptionsStyle:
        """The options block style of one example (fixed unless the spec randomizes it)."""
        if not self.spec.randomize_options:
            return DEFAULT_STYLE
        return OptionsStyle.from_seed(F.choose(self.spec.seed, self.spec.name, "style", key,
                                               n=2**31))

    def template_id(self, key: str) -> int:
        return F.choose(self.spec.seed, self.spec.name, self.fmt, key, n=len(self.templates))

    def render(self, example: Example, pool: ExemplarPool | None = None, *,
               template_id: int | None = None) -> Example:
        """One rendered example; `template_id` pins the template (default: seeded choice)."""
        key = F.example_key(example)
        tid = self.template_id(key) if template_id is None else template_id
        template, style = self.templates[tid], self.options_style(key)
        inputs, targets = template.render(example, style=style, task=self.spec.name,
                                          template_id=f"{self.fmt}/{tid}")
        if self.fmt in F.FEW_SHOT_FORMATS:
            assert pool is not None and self.spec.few_shot is not None
            cfg = self.spec.few_shot
            exemplars = [
                template.render(ex, style=style, task=self.spec.name,
                                template_id=f"{self.fmt}/{tid}")
                for ex in pool.candidates(self.spec.seed, key, cfg.max_shots)]
            inputs, _ = pack_exemplars(exemplars, inputs, cfg.pattern,
                                       budget=cfg.budget_tokens, count_tokens=self.count_tokens,
                                       max_shots=cfg.max_shots)
        return {"inputs": inputs, "targets": targets, "task": self.spec.name,
                "format": self.fmt, "template_id": tid}

    def choices(self, example: Example, *, template_id: int | None = None) -> list[str]:
        """Each option's target text under the template and style `render` picks for this
        example (empty if it has none); rank classification scores these."""
        key = F.example_key(example)
        tid = self.template_id(key) if template_id is None else template_id
        return self.templates[tid].choices(example, style=self.options_style(key),
                                           task=self.spec.name, template_id=f"{self.fmt}/{tid}")

    def exemplar_pool(self) -> ExemplarPool | None:
        if self.fmt not in F.FEW_SHOT_FORMATS:
            return None
        cfg = self.spec.few_shot
        assert cfg is not None
        raw = iter_source(self.spec.source, self.spec.train_split)
        return ExemplarPool(capacity=cfg.pool_size).fill(self.fields(r) for r in raw)

    def iterate(self, split: str, shuffle: bool = False, seed: int | None = None
                ) -> Iterator[Example]:
        pool = self.exemplar_pool()
        for r in iter_source(self.spec.source, split, shuffle=shuffle, seed=seed):
            yield self.render(self.fields(r), pool)


def render_every_template(spec: FlanTask, raw_examples: Iterable[Mapping[str, Any]],
                          count_tokens: Callable[[str], int] = len) -> list[Example]:
    """Each example rendered by every template of every format of `spec`: a preview and a
    check that no template misses a field. Few-shot exemplars come from the same examples
    (never the query itself)."""
    raw_examples = list(raw_examples)
    out = []
    for fmt in spec.formats():
        renderer = FlanRenderer(spec, fmt, count_tokens)
        examples = [renderer.fields(r) for r in raw_examples]
        pool = None
        if fmt in F.FEW_SHOT_FORMATS:
            pool = ExemplarPool(capacity=max(2, len(examples))).fill(examples)
        for tid in range(len(renderer.templates)):
            out += [renderer.render(ex, pool, template_id=tid) for ex in examples]
    return out


def rendered_source(spec: FlanTask, fmt: str, vocabulary: seqio.Vocabulary) -> seqio.DataSource:
    """A seqio source of rendered examples (the features in RENDERED_FEATURES)."""
    import tensorflow as tf

    renderer = FlanRenderer(spec, fmt, count_tokens=lambda s: len(vocabulary.encode(s)))
    signature = {"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string),
                 "task": tf.TensorSpec((), tf.string), "format": tf.TensorSpec((), tf.string),
                 "template_id": tf.TensorSpec((), tf.int32)}

    def generate(split: str, shuffle: bool, seed: int | None) -> Iterator[Example]:
        return renderer.iterate(split, shuffle=shuffle, seed=seed)

    def count(split: str) -> int | None:
        # Asked lazily: a TFDS source reads its metadata, not wanted at registration; one
        # that can't count (not prepared yet, a stream) leaves it to seqio.
        try:
            return spec.source.num_input_examples(split)
        except Exception:  # noqa: BLE001 - any failure just means "unknown"
            return None

    return python_source(generate, signature, spec.source.splits, num_input_examples=count)


# seqio Task name -> (spec, format), for evaluation code that needs more than the rendered
# text (e.g. the options of an example, for rank classification).
_REGISTERED: dict[str, tuple[FlanTask, str]] = {}


def registered_flan_task(task_name: str) -> tuple[FlanTask, str] | None:
    """(spec, format) of a Task that `register_flan_task` registered, else None."""
    return _REGISTERED.get(task_name)


def register_flan_task(spec: FlanTask, vocabulary: seqio.Vocabulary | None = None, *,
                       formats: Sequence[str] | None = None, replace: bool = False) -> list[str]:
    """Registers `{spec.name}:{format}` seqio Tasks; returns their names.

    `vocabulary` defaults to the shipped SentencePiece model (`vocab.default_vocabulary`).
    `formats` limits which formats are registered (default: all the spec supports). CoT
    formats get the answer-extracting postprocessor unless the spec brings its own; tasks
    without metric_fns are scored by exact-match `metrics.accuracy`.
    """
    if vocabulary is None:
        from flan_jax.data.vocab import default_vocabulary
        vocabulary = default_vocabulary()
    wanted = tuple(formats) if formats is not None else spec.formats()
    unknown = set(wanted) - set(spec.formats())
    if unknown:
        raise ValueError(f"FlanTask {spec.name!r}: can't register formats {sorted(unknown)} "
                         f"(it supports {spec.formats()})")
    output_features = {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }
    names = []
    for fmt in wanted:
        name = F.task_name(spec.name, fmt)
        if name in seqio.TaskRegistry.names():
            if not replace:
                raise ValueError(f"seqio Task {name!r} is already registered "
                                 "(pass replace=True to register it again)")
            seqio.TaskRegistry.remove(name)
        postprocess = spec.postprocess_fn
        if postprocess is None and fmt in (F.COT_ZS, F.COT_FS):
            postprocess = _cot_postprocessor
        seqio.TaskRegistry.add(
            name,
            source=rendered_source(spec, fmt, vocabulary),
            output_features=output_features,
            preprocessors=[seqio.preprocessors.tokenize,
                           seqio.preprocessors.append_eos_after_trim],
            postprocess_fn=postprocess,
            metric_fns=list(spec.metric_fns) or [metrics.accuracy],
            shuffle_buffer_size=spec.shuffle_buffer_size)
        _REGISTERED[name] = (spec, fmt)
        names.append(name)
    return names


def _cot_postprocessor(output: Any, example: Any = None, is_target: bool = False) -> str:
    """seqio postprocess_fn for CoT formats: the final answer of the generated text."""
    return F.extract_cot_answer(output)
