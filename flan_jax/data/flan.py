"""FlanTask -> seqio Tasks for every Flan format, over one `RenderedSource` object each.

`register_flan_task(spec)` registers `{name}:{format}` for each format the spec supports
(see `formats.FORMATS`): zero-shot and few-shot with and without options, CoT zero-/few-shot,
inverted, and (for specs with `cot_work=True`) Galactica's `<work>` CoT. Rendering is
`render.FlanRenderer`, a pure function of (seed, example); tokenisation and EOS are ordinary
seqio preprocessors, so packing, caching and evaluation work as for any seqio Task, and the
Grain reader reads the same renderers by index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import seqio

from flan_jax.data import formats as F
from flan_jax.data import metrics
from flan_jax.data.render import (RENDERED_FEATURES, CotFields, Example, FewShotConfig,
                                  FlanRenderer, FlanTask, RenderedRows, render_every_template)
from flan_jax.data.registry import make_room
from flan_jax.data.sources import _tf_dataset, iter_source, random_access
from flan_jax.data.tokenizer import token_counter, tokenizer_for
from flan_jax.errors import FlanJaxError

__all__ = ["CotFields", "FewShotConfig", "FlanRenderer", "FlanTask", "RENDERED_FEATURES",
           "RenderedSource", "register_flan_task", "registered_flan_task",
           "render_every_template"]


class RenderedSource(seqio.DataSource):
    """The rendered examples of one (spec, format): a seqio source, and rows by index.

    It carries its `spec`, `fmt` and `renderer`, which evaluation reads (rank
    classification renders each example's options with them); `random_access(split)`
    gives `RenderedRows` when the spec's source has random access.
    """

    def __init__(self, spec: FlanTask, fmt: str, vocabulary: seqio.Vocabulary):
        self.spec, self.fmt, self.vocabulary = spec, fmt, vocabulary
        self.renderer = FlanRenderer(spec, fmt, token_counter(tokenizer_for(vocabulary)))
        super().__init__(splits=tuple(spec.source.splits), num_input_examples=None)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def random_access(self, split: str) -> RenderedRows | None:
        raw = random_access(self.spec.source, split)
        return None if raw is None else RenderedRows(raw, self.renderer)

    def num_input_examples(self, split: str) -> int | None:
        # Asked lazily: a TFDS source reads its metadata, not wanted at registration; one
        # that can't count (not prepared yet, a stream) leaves it to seqio.
        try:
            n = self.spec.source.num_input_examples(split)
        except FlanJaxError:  # the user's data is at fault (an empty file): say so
            raise
        except Exception:  # noqa: BLE001 - any other failure just means "unknown"
            return None
        return None if n is None else int(n)

    def iter_examples(self, split: str, shuffle: bool = False,
                      seed: int | None = None) -> Iterator[Example]:
        return self.renderer.iterate(iter_source(self.spec.source, split, shuffle=shuffle,
                                                 seed=seed))

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: Any = None, *, sequence_length: Any = None,
                    use_cached: bool = False, num_epochs: int | None = 1):
        del shard_info, sequence_length, use_cached, num_epochs  # seqio shards and repeats
        import tensorflow as tf

        signature = {name: tf.TensorSpec((), tf.int32 if name == "template_id" else tf.string)
                     for name in RENDERED_FEATURES}
        return _tf_dataset(lambda: self.iter_examples(split, shuffle, seed), signature)


def registered_flan_task(task_name: str) -> tuple[FlanTask, str] | None:
    """(spec, format) of a Task that `register_flan_task` registered, else None."""
    if task_name not in seqio.TaskRegistry.names():
        return None
    source = seqio.TaskRegistry.get(task_name).source
    return (source.spec, source.fmt) if isinstance(source, RenderedSource) else None


def register_flan_task(spec: FlanTask, vocabulary: seqio.Vocabulary | None = None, *,
                       formats: Sequence[str] | None = None, replace: bool = False) -> list[str]:
    """Registers `{spec.name}:{format}` seqio Tasks; returns their names.

    `vocabulary` defaults to the shipped SentencePiece model (`vocab.default_vocabulary`).
    `formats` limits which formats are registered (default: all the spec supports). CoT
    formats (and `cot_work`) get the answer-extracting postprocessor unless the spec brings
    its own; tasks without metric_fns are scored by exact-match `metrics.accuracy`.
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
    make_room(seqio.TaskRegistry, [F.task_name(spec.name, f) for f in wanted],
              replace=replace, kind="Task")
    for fmt in wanted:
        name = F.task_name(spec.name, fmt)
        postprocess = spec.postprocess_fn
        if postprocess is None and fmt in (F.COT_ZS, F.COT_FS):
            postprocess = _cot_postprocessor
        elif postprocess is None and fmt == F.COT_WORK:
            postprocess = _work_postprocessor
        seqio.TaskRegistry.add(
            name,
            source=RenderedSource(spec, fmt, vocabulary),
            output_features=output_features,
            preprocessors=[seqio.preprocessors.tokenize,
                           seqio.preprocessors.append_eos_after_trim],
            postprocess_fn=postprocess,
            metric_fns=list(spec.metric_fns) or [metrics.accuracy],
            shuffle_buffer_size=spec.shuffle_buffer_size)
        names.append(name)
    return names


def _cot_postprocessor(output: Any, example: Any = None, is_target: bool = False) -> str:
    """seqio postprocess_fn for CoT formats: the final answer of the generated text."""
    return F.extract_cot_answer(output)


def _work_postprocessor(output: Any, example: Any = None, is_target: bool = False) -> str:
    """seqio postprocess_fn for `cot_work`: the text after the last `</work>`."""
    return F.extract_work_answer(output)
