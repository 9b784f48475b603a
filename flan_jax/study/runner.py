"""`flan-jax study`: a grid of ordinary `flan-jax train` runs, one model dir each, then one
results table (JSON + markdown), plots against model size, tokens and compute, and
power-law fits of eval loss.

A study is a gin file binding `Study`: the gin files and bindings every run shares, and
named axes whose values are sets of bindings; the runs are the axes' product. Each run is
a real `flan-jax train` subprocess in `<output_dir>/runs/<name>/` (so it resumes exactly
like any run), and writes `study_result.json` when finished: an interrupted study, started
again, skips finished runs and resumes the one it was in. Every run's gin is parsed before
the first one trains, so a bad binding in run 12 fails at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gin

from flan_jax.errors import ConfigError

RESULT = "study_result.json"
GROUPS = {"held_in": "flan_jax_default_held_in", "held_out": "flan_jax_default_held_out"}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Study:
    """`axes`: {axis: {value name: [gin bindings]}}, e.g. {"size": {"s": ["T5Config.d_model
    = 64"], ...}, "seed": {"0": ["train.seed = 0"], ...}}; run names join "axis=value".
    `loss_groups`: {group: mixture} whose validation loss per target token is measured on
    every final model (teacher forced, the same examples for every run): the fits' L; None
    (the default) measures each run on its own EvalConfig.groups (e.g. a phrasing axis whose
    runs each evaluate their own phrasing). `loss_batches` x the run's eval batch size
    examples per group. `fit_by`: an axis whose values are fitted apart (one power law per
    value, e.g. per phrasing); None fits all runs together."""

    name: str = "study"
    output_dir: str = "/tmp/flan_jax_study"
    gin_files: tuple[str, ...] = ("runs/small.gin",)
    bindings: tuple[str, ...] = ()
    axes: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    loss_groups: dict[str, str] | None = None
    loss_batches: int = 2
    fit_by: str | None = None

    def __post_init__(self) -> None:
        if self.fit_by is not None and self.fit_by not in self.axes:
            raise ConfigError(f"Study.fit_by={self.fit_by!r} is not an axis "
                              f"(axes: {sorted(self.axes)})")
        for axis, values in self.axes.items():
            if not values:
                raise ConfigError(f"Study.axes[{axis!r}] has no values")
            for value, bindings in values.items():
                if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
                    raise ConfigError(f"Study.axes[{axis!r}][{value!r}] must be a list of gin "
                                      f"bindings (strings), not {bindings!r}")


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the grid: its name, its axis values and its full gin."""

    name: str
    values: dict[str, str]
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]


def points(study: Study) -> list[Point]:
    axes = list(study.axes.items())
    out = []
    for combo in itertools.product(*(list(values.items()) for _, values in axes)):
        values = {axis: value for (axis, _), (value, _) in zip(axes, combo)}
        extra = [b for _, bindings in combo for b in bindings]
        name = ",".join(f"{a}={v}" for a, v in values.items()) or "run"
        out.append(Point(name, values, tuple(study.gin_files),
                         (*study.bindings, *extra)))
    return out


def describe(point: Point) -> dict[str, Any]:
    """What the run will cost, from its parsed gin (nothing is built or allocated): params,
    training tokens (steps x batch x row length) and train FLOPs. A bad binding fails here."""
    import jax

    from flan_jax import gin_utils
    from flan_jax.model.flops import train_flops
    from flan_jax.train.setup import bound, setup_run
    gin.clear_config()
    try:
        gin_utils.parse(point.gin_files, point.bindings, finalize=False)
        run = setup_run(bound("train.init_from", None), import_modules=False)
        steps = int(bound("train.total_steps", 0))
    except Exception as e:
        raise ConfigError(f"study run {point.name}: {e}") from e
    finally:
        gin.clear_config()
    from flan_jax.train.evaluate import written_groups
    trained = run.data.mixture_or_task_name
    if run.eval.groups is not None and written_groups(run.eval, trained) is None:
        raise ConfigError(
            f"study run {point.name}: EvalConfig.groups were written for "
            f"{run.eval.groups_of!r} (EvalConfig.groups_of) but the run trains {trained!r}, "
            f"so it would evaluate {trained!r}'s own tasks instead; bind "
            "'EvalConfig.groups_of = None' to score every run on the same groups")
    groups = written_groups(run.eval, trained)
    lengths = run.data.task_feature_lengths
    batch = run.data.batch_size
    params = int(sum(x.size for x in jax.tree.leaves(run.abstract_params)))
    if run.abstract_frozen is not None:
        params += int(sum(x.size for x in jax.tree.leaves(run.abstract_frozen)))
    flops = train_flops(run.model_cfg, batch, lengths["inputs"], lengths["targets"],
                        run.lora) * steps
    return {"params": params, "steps": steps, "batch": batch,
            "tokens": steps * batch * (lengths["inputs"] + lengths["targets"]),
            "compute": flops, "feature_converter": run.data.feature_converter,
            "lengths": dict(lengths), "eval_batch": run.eval.batch_size,
            "eval_groups": dict(groups) if groups is not None else None}


def run_study(study: Study, *, limit: int | None = None, env: dict[str, str] | None = None,
              log=print) -> dict[str, Any]:
    """Trains the grid's unfinished runs (at most `limit` this time), then writes the
    results; returns them. `env`: the train subprocesses' environment."""
    out = Path(study.output_dir)
    grid = points(study)
    planned = {p.name: describe(p) for p in grid}  # (every run's gin, before any training)
    losses = {name: study.loss_groups or plan["eval_groups"] for name, plan in planned.items()}
    for name, groups in losses.items():
        if not groups:
            raise ConfigError(f"study run {name}: no loss groups: bind Study.loss_groups, or "
                              "EvalConfig.groups for the run to be measured on")
    done = 0
    for i, p in enumerate(grid, 1):
        model_dir = out / "runs" / p.name
        if (model_dir / RESULT).is_file():
            log(f"[{i}/{len(grid)}] {p.name}: finished, skipped")
            continue
        if limit is not None and done >= limit:
            log(f"[{i}/{len(grid)}] {p.name}: left for the next start (limit {limit})")
            continue
        log(f"[{i}/{len(grid)}] {p.name}: training ({planned[p.name]['params']:,} params, "
            f"{planned[p.name]['steps']} steps)")
        t0 = time.perf_counter()
        _train(p, model_dir, env)
        record = {"name": p.name, "values": p.values, **planned[p.name],
                  "train_seconds": time.perf_counter() - t0,
                  "accuracy": accuracies(model_dir, planned[p.name]["steps"]),
                  "curve": curve(model_dir, planned[p.name]["tokens"] // max(
                      planned[p.name]["steps"], 1)),
                  "eval_loss": eval_loss(model_dir / "model", planned[p.name]["feature_converter"],
                                         planned[p.name]["lengths"], losses[p.name],
                                         study.loss_batches, planned[p.name]["eval_batch"])}
        from flan_jax.atomic import atomic_file
        with atomic_file(model_dir / RESULT) as f:
            f.write(json.dumps(record, indent=1) + "\n")
        done += 1
    rows = [json.loads((out / "runs" / p.name / RESULT).read_text()) for p in grid
            if (out / "runs" / p.name / RESULT).is_file()]
    return write_results(study, rows, complete=len(rows) == len(grid))


def _train(p: Point, model_dir: Path, env: dict[str, str] | None) -> None:
    argv = [sys.executable, "-m", "flan_jax", "train",
            *(f"--gin_file={f}" for f in p.gin_files), *(f"--gin.{b}" for b in p.bindings),
            f"--gin.train.model_dir='{model_dir}'"]
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"study run {p.name}: flan-jax train exited {proc.returncode}; "
                           f"its model dir {model_dir} is kept (starting the study again "
                           f"resumes it):\n{proc.stderr[-3000:]}")


def accuracies(model_dir: Path, step: int) -> dict[str, dict[str, float]]:
    """Mean exact-match and rank-classification accuracy (percent) per eval group at `step`."""
    results = json.loads((model_dir / "eval" / f"step_{step}.json").read_text())
    out = {}
    for group, tasks in results.items():
        exact = [m["accuracy"] for m in tasks.values() if "accuracy" in m]
        rank = [m["rank_accuracy"] for m in tasks.values() if "rank_accuracy" in m]
        out[group] = {"accuracy": sum(exact) / len(exact) if exact else float("nan"),
                      "rank_accuracy": sum(rank) / len(rank) if rank else float("nan"),
                      "tasks": len(tasks)}
    return out


def curve(model_dir: Path, tokens_per_step: int) -> list[list[float]]:
    """[step, tokens, training loss] at each logged step (the last record of a step that a
    resume logged twice)."""
    from flan_jax.train.metrics import METRICS_FILE

    by_step = {}
    path = model_dir / "train" / METRICS_FILE
    for line in path.read_text().splitlines() if path.is_file() else ():
        record = json.loads(line)
        if "loss" in record:
            by_step[int(record["step"])] = float(record["loss"])
    return [[s, s * tokens_per_step, by_step[s]] for s in sorted(by_step)]


def eval_loss(model_dir: Path, feature_converter: str, lengths: dict[str, int],
              groups: dict[str, str], batches: int, batch_size: int) -> dict[str, float]:
    """Teacher-forced loss per target token on each group's validation examples, read by the
    seqio reader with the model's own features (the same examples for every model)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flan_jax.model.losses import token_losses
    from flan_jax.train.data import DataConfig, make_reader
    from flan_jax.train.infer import load
    from flan_jax.train.step import forward

    model, _ = load(model_dir)
    graphdef, state = nnx.split(model)

    @jax.jit
    def sums(state, batch):
        logits = forward(nnx.merge(graphdef, state), batch)
        loss, _ = token_losses(logits, batch["decoder_target_tokens"])
        w = batch["decoder_loss_weights"].astype(jnp.float32)
        return jnp.sum(loss * w), jnp.sum(w)

    out = {}
    for group, mixture in groups.items():
        cfg = DataConfig(mixture_or_task_name=mixture, split="validation", reader="seqio",
                         pack=False, shuffle=False, batch_size=batch_size, seed=0,
                         task_feature_lengths=lengths, module_imports=("mixtures",),
                         feature_converter=feature_converter)
        reader = make_reader(cfg)
        total = count = 0.0
        try:
            for _ in range(batches):
                batch = {k: jnp.asarray(v) for k, v in next(reader).items()}
                s, n = sums(state, batch)
                total, count = total + float(s), count + float(n)
        finally:
            reader.close()
        out[group] = total / max(count, 1.0)
    return out


def write_results(study: Study, rows: list[dict[str, Any]], *, complete: bool
                  ) -> dict[str, Any]:
    """results.json, results.md and the plots in `output_dir` (`report`): every run, the
    seed summary per configuration and the power-law fits."""
    from flan_jax.study import report

    results = {"study": study.name, "complete": complete, "runs": rows,
               "summary": report.summarize(rows),
               "fits": report.fits(rows, by=study.fit_by)}
    report.write(Path(study.output_dir), results)
    return results
