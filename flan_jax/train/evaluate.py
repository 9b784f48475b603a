"""Evaluation with `seqio.Evaluator`: decode each eval task, postprocess, score, by group.

Groups are mixtures evaluated and reported apart: by default the families trained on
(`held_in`) and the families kept out of training (`held_out`, zero-shot generalization, as
FLAN reports it). Evaluators are built once per run (they cache their datasets).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gin
import numpy as np

from flan_jax.decode import greedy_decode

Results = dict[str, dict[str, dict[str, float]]]  # group -> task -> metric -> value


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    groups: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
        "held_in": "flan_jax_default_held_in", "held_out": "flan_jax_default_held_out"})
    split: str = "validation"
    num_examples: int | None = 48  # per task; None: the whole split
    batch_size: int = 32
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 64})
    module_imports: tuple[str, ...] = ("mixtures",)
    # Also score each option of tasks in an options format (`rank_accuracy`, FLAN / T0 style).
    rank_classification: bool = True


class Evaluator:
    """One seqio.Evaluator per group; `__call__(model, step)` -> per-task metrics."""

    def __init__(self, cfg: EvalConfig):
        import seqio

        from flan_jax.data.export import import_modules

        import_modules(cfg.module_imports)
        self.cfg = cfg
        self.evaluators = {}
        for group, name in cfg.groups.items():
            self.evaluators[group] = seqio.Evaluator(
                mixture_or_task_name=name,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
                eval_split=cfg.split, use_cached=False, seed=0,
                sequence_length=dict(cfg.task_feature_lengths), num_examples=cfg.num_examples)

    def __call__(self, model, step: int | None = None) -> Results:
        predict = make_predict_fn(model, self.cfg.batch_size,
                                  self.cfg.task_feature_lengths["targets"])
        results: Results = {}
        for group, evaluator in self.evaluators.items():
            future, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict)
            results[group] = {task: {k: float(_scalar(v)) for k, v in metrics.items()}
                              for task, metrics in future.result().items()}
            if self.cfg.rank_classification:
                for task, metrics in results[group].items():
                    metrics.update(self._rank(model, task) or {})
        return results

    def _rank(self, model, task: str) -> dict[str, float] | None:
        import seqio

        from flan_jax.train.rank_classification import rank_classification

        vocabulary = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
        return rank_classification(model, vocabulary, task, split=self.cfg.split,
                                   num_examples=self.cfg.num_examples,
                                   batch_size=self.cfg.batch_size,
                                   lengths=dict(self.cfg.task_feature_lengths))


def _scalar(value: Any) -> float:
    return getattr(value, "value", value)  # seqio may wrap values in metric objects


def make_predict_fn(model, batch_size: int, max_decode_len: int
                    ) -> Callable[[Any], list[tuple[int, list[int]]]]:
    """A seqio predict_fn: greedy decoding in fixed-size batches (one compilation)."""
    def predict(ds) -> list[tuple[int, list[int]]]:
        out: list[tuple[int, list[int]]] = []
        for indices, features in ds.batch(batch_size).as_numpy_iterator():
            tokens = np.asarray(features["encoder_input_tokens"], np.int32)
            n = tokens.shape[0]
            if n < batch_size:  # pad the last batch so shapes never change
                tokens = np.concatenate(
                    [tokens, np.zeros((batch_size - n,) + tokens.shape[1:], np.int32)])
            result = greedy_decode(model, tokens, max_decode_len=max_decode_len)
            # Full rows, pad after EOS: seqio stacks predictions into one array, and its
            # vocabulary's decode stops at EOS.
            decoded = np.asarray(result.tokens)[:n]
            out.extend((int(i), decoded[j].tolist()) for j, i in enumerate(indices))
        return out

    return predict


def summary(results: Results) -> dict[str, float]:
    """Flat scalars for logs: `eval/{group}/{task}/{metric}` and each group's mean accuracy
    (and mean rank-classification accuracy over the tasks that have one)."""
    flat: dict[str, float] = {}
    for group, tasks in results.items():
        for task, metrics in tasks.items():
            for name, value in metrics.items():
                flat[f"eval/{group}/{task}/{name}"] = value
        for name in ("accuracy", "rank_accuracy"):
            values = [m[name] for m in tasks.values() if name in m]
            if values:
                flat[f"eval/{group}/{name}"] = float(np.mean(values))
    return flat


def write_json(results: Results, path: str | os.PathLike[str]) -> Path:
    """Writes results atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
