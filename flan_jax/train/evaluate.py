"""Evaluation with `seqio.Evaluator`: decode each eval task, postprocess, score, by group.

Groups are mixtures evaluated and reported apart. By default evaluation follows the run: one
group named after the trained mixture (or task), holding a seeded sample of at most
`max_tasks` of its tasks that have the eval split, so a collection of thousands of tasks
costs `max_tasks` seqio pipelines, not thousands. `EvalConfig.groups` names groups instead
(gin/runs/demo.gin: the default mixture's held-in and held-out families, as FLAN reports
zero-shot generalization). Evaluators are built once per run (they cache their datasets).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gin
import numpy as np

from flan_jax.decode import greedy_decode

if TYPE_CHECKING:
    from flan_jax.train.data import DataConfig

log = logging.getLogger(__name__)
Results = dict[str, dict[str, dict[str, float]]]  # group -> task -> metric -> value


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`groups`: {group: mixture or task}; None follows the run (see the module).
    `groups_of`: the training mixture those groups were written for; a run that trains on
    another one follows the run instead (so a gin file's groups never evaluate a mixture
    other than the one trained, e.g. demo.gin's with `mixture_or_task_name` overridden)."""

    groups: Mapping[str, str] | None = None
    groups_of: str | None = None
    # Evaluated besides, whatever is trained (e.g. held-out tasks: {'held_out': 'my_mix'}).
    extra_groups: Mapping[str, str] = dataclasses.field(default_factory=dict)
    max_tasks: int = 32  # of the trained mixture, when groups is None (seeded sample)
    seed: int = 0
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

    def __init__(self, cfg: EvalConfig, trained: str | None = None,
                 trained_modules: tuple[str, ...] = (), feature_converter: str = "enc_dec"):
        """`trained`: the mixture or task the run trains on (what `groups=None` evaluates);
        `trained_modules`: the modules that register it (DataConfig.module_imports);
        `feature_converter`: the features the model trained on (DataConfig's), so a
        decoder-only model is prompted and scored as it trained."""
        import seqio

        from flan_jax.data.export import import_modules
        from flan_jax.data.sources import user_errors_from_tf

        import_modules(tuple(dict.fromkeys((*cfg.module_imports, *trained_modules))))
        self.cfg, self.feature_converter = cfg, feature_converter
        self.evaluators = {}
        groups = written_groups(cfg, trained)
        if groups is None and cfg.groups is not None:
            log.info("evaluating %r itself: EvalConfig.groups are for %r", trained,
                     cfg.groups_of)
        if groups is None:
            groups = follow_the_run(cfg, trained)
        groups = {**groups, **cfg.extra_groups}
        for group, name in groups.items():
            with user_errors_from_tf():  # (seqio reads every eval example here)
                self.evaluators[group] = seqio.Evaluator(
                    mixture_or_task_name=name,
                    feature_converter=seqio.EncDecFeatureConverter(pack=False),
                    eval_split=cfg.split, use_cached=False, seed=0,
                    sequence_length=dict(cfg.task_feature_lengths),
                    num_examples=cfg.num_examples)

    def __call__(self, model, step: int | None = None) -> Results:
        predict = make_predict_fn(model, self.cfg.batch_size,
                                  self.cfg.task_feature_lengths["targets"],
                                  prefix=self.feature_converter == "prefix_lm")
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
                                   lengths=dict(self.cfg.task_feature_lengths),
                                   feature_converter=self.feature_converter)


def written_groups(cfg: EvalConfig, trained: str | None) -> Mapping[str, str] | None:
    """`cfg.groups`, or None where the run follows what it trains: no groups, or groups
    written for another mixture (`groups_of`) than the one `trained`."""
    if cfg.groups is not None and trained and cfg.groups_of not in (None, trained):
        return None
    return cfg.groups


def follow_the_run(cfg: EvalConfig, trained: str | None) -> dict[str, str]:
    """{trained name: an eval mixture of a seeded sample of its tasks with the eval split}."""
    import random

    import seqio

    from flan_jax.data.mixing import register_mixture
    from flan_jax.data.reader.build import leaf_tasks

    if trained is None:
        raise ValueError("EvalConfig.groups=None evaluates what the run trains on; give "
                         "EvalConfig.groups = {'name': 'mixture'} to evaluate without a run")
    tasks = sorted(t.name for t, _ in leaf_tasks(trained) if cfg.split in t.source.splits)
    if not tasks:
        raise ValueError(f"none of the tasks of {trained!r} has split {cfg.split!r} to "
                         "evaluate; set EvalConfig.split or EvalConfig.groups, or "
                         "train.evaluate=False")
    if len(tasks) > cfg.max_tasks:
        tasks = sorted(random.Random(cfg.seed).sample(tasks, cfg.max_tasks))
    if len(tasks) == 1 and trained in seqio.TaskRegistry.names():
        return {trained: trained}
    name = register_mixture(f"{trained}.eval", {t: 1.0 for t in tasks}, replace=True)
    return {trained: name}


# Beside an export's config.json (train's `model/`): the DataConfig fields it was trained on.
TRAINED_ON = "trained_on.json"


class TrainedOn(NamedTuple):
    """What a checkpoint was trained on: the mixture (and the modules that register it) and
    the feature converter, which also says how to prompt it (see `prefix_lm`)."""

    mixture_or_task_name: str
    module_imports: tuple[str, ...]
    feature_converter: str

    @property
    def prefix_lm(self) -> bool:
        """The model trained as a prefix LM: decode with its prompt seen bidirectionally."""
        return self.feature_converter == "prefix_lm"


def write_trained_on(directory: str | os.PathLike[str], data: DataConfig) -> Path:
    """Records `data`'s `TrainedOn` fields in `directory`/TRAINED_ON, for
    `trained_data` to read back (train writes it into its `model/` export)."""
    from flan_jax.atomic import atomic_file

    path = Path(directory) / TRAINED_ON
    record = {"mixture_or_task_name": data.mixture_or_task_name,
              "module_imports": list(data.module_imports),
              "feature_converter": data.feature_converter}
    with atomic_file(path) as f:
        f.write(json.dumps(record, indent=2) + "\n")
    return path


def trained_data(checkpoint: str | os.PathLike[str], architecture: str) -> TrainedOn:
    """What `checkpoint` (a training model_dir, its `model/` export or any model dir) was
    trained on, for `flan-jax eval` and `infer`. Each field: gin's DataConfig binding if this
    command sets it (the user's override), else the export's TRAINED_ON record, else the
    run's config.gin (in the run dir, or beside a run's `model/` dir: runs exported before
    the record), else its default: DataConfig's, and for the feature converter the
    `architecture`'s own (enc_dec, as every Hugging Face dir; decoder, causal; semi_causal).
    A feature converter that `architecture` can't read is refused naming both."""
    import ast
    import re

    from flan_jax.errors import CheckpointError, ConfigError
    from flan_jax.train.data import DataConfig
    from flan_jax.train.setup import FEATURES_OF

    keys = ("mixture_or_task_name", "module_imports", "feature_converter")
    path = Path(checkpoint)
    found: dict[str, Any] = {}
    where: dict[str, str] = {}
    for record in (path / TRAINED_ON, path / "model" / TRAINED_ON):
        if record.is_file():
            try:
                values = json.loads(record.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{record}: not JSON ({e})") from e
            found.update({k: values[k] for k in keys if k in values})
            where.update({k: str(record) for k in keys if k in values})
            break
    for candidate in (path / "config.gin", path.parent / "config.gin"):
        if candidate.is_file():
            for key in keys:
                m = re.search(rf"^DataConfig\.{key} = (.+)$", candidate.read_text(), re.M)
                if m and key not in found:
                    try:
                        found[key] = ast.literal_eval(m.group(1))
                        where[key] = str(candidate)
                    except (ValueError, SyntaxError):
                        pass
            break
    cfg = DataConfig()
    bound = gin.get_bindings("DataConfig")
    defaults = {"mixture_or_task_name": cfg.mixture_or_task_name,
                "module_imports": cfg.module_imports,
                "feature_converter": FEATURES_OF[architecture][0]}
    value = {k: getattr(cfg, k) if k in bound else found.get(k, defaults[k]) for k in keys}
    features = value["feature_converter"]
    if features not in FEATURES_OF[architecture]:
        source = ("--gin.DataConfig.feature_converter" if "feature_converter" in bound
                  else where.get("feature_converter", "the default"))
        raise ConfigError(
            f"{source}: DataConfig.feature_converter={features!r}, but {path} holds a "
            f"T5Config.architecture={architecture!r} model, which reads "
            f"{FEATURES_OF[architecture]}; bind --gin.DataConfig.feature_converter to the "
            "features it was trained on")
    return TrainedOn(value["mixture_or_task_name"], tuple(value["module_imports"]), features)


def _scalar(value: Any) -> float:
    return getattr(value, "value", value)  # seqio may wrap values in metric objects


def make_predict_fn(model, batch_size: int, max_decode_len: int, *, prefix: bool = False
                    ) -> Callable[[Any], list[tuple[int, list[int]]]]:
    """A seqio predict_fn: greedy decoding in fixed-size batches (one compilation). The
    EncDecFeatureConverter's `encoder_input_tokens` are the prompt of either model kind
    (`prefix`: a prefix LM's, seen bidirectionally)."""
    def predict(ds) -> list[tuple[int, list[int]]]:
        out: list[tuple[int, list[int]]] = []
        for indices, features in ds.batch(batch_size).as_numpy_iterator():
            tokens = np.asarray(features["encoder_input_tokens"], np.int32)
            n = tokens.shape[0]
            if n < batch_size:  # pad the last batch so shapes never change
                tokens = np.concatenate(
                    [tokens, np.zeros((batch_size - n,) + tokens.shape[1:], np.int32)])
            result = greedy_decode(model, tokens, max_decode_len=max_decode_len, prefix=prefix)
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
    """Writes results atomically (complete or not at all)."""
    from flan_jax.atomic import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(json.dumps(results, indent=1, sort_keys=True))
    return path
