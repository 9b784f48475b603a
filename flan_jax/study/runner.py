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
import math
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
X_AXES = ("params", "tokens", "compute")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Study:
    """`axes`: {axis: {value name: [gin bindings]}}, e.g. {"size": {"s": ["T5Config.d_model
    = 64"], ...}, "seed": {"0": ["train.seed = 0"], ...}}; run names join "axis=value".
    `loss_groups`: {group: mixture} whose validation loss per target token is measured on
    every final model (teacher forced, the same examples for every run): the fits' L.
    `loss_batches` x the run's eval batch size examples per group."""

    name: str = "study"
    output_dir: str = "/tmp/flan_jax_study"
    gin_files: tuple[str, ...] = ("runs/demo.gin",)
    bindings: tuple[str, ...] = ()
    axes: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    loss_groups: dict[str, str] = dataclasses.field(default_factory=lambda: dict(GROUPS))
    loss_batches: int = 2

    def __post_init__(self) -> None:
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
            "lengths": dict(lengths), "eval_batch": run.eval.batch_size}


def run_study(study: Study, *, limit: int | None = None, env: dict[str, str] | None = None,
              log=print) -> dict[str, Any]:
    """Trains the grid's unfinished runs (at most `limit` this time), then writes the
    results; returns them. `env`: the train subprocesses' environment."""
    out = Path(study.output_dir)
    grid = points(study)
    planned = {p.name: describe(p) for p in grid}  # (every run's gin, before any training)
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
                  "eval_loss": eval_loss(model_dir / "model", planned[p.name]["feature_converter"],
                                         planned[p.name]["lengths"], study.loss_groups,
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
    """results.json, results.md and the plots in `output_dir`; fits of each loss group
    against each x where the runs give >= 4 points with >= 3 distinct x."""
    from flan_jax.atomic import atomic_file
    from flan_jax.study.fit import fit_power_law
    out = Path(study.output_dir)
    fits: dict[str, dict[str, Any]] = {}
    for group in study.loss_groups:
        for x in X_AXES:
            xs = [r[x] for r in rows]
            if len(rows) >= 4 and len(set(xs)) >= 3:
                fit = fit_power_law(xs, [r["eval_loss"][group] for r in rows])
                fits.setdefault(group, {})[x] = dataclasses.asdict(fit) | {
                    "text": fit.describe({"params": "N", "tokens": "D", "compute": "C"}[x])}
    results = {"study": study.name, "complete": complete, "runs": rows, "fits": fits}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json") as f:
        f.write(json.dumps(results, indent=1) + "\n")
    with atomic_file(out / "results.md") as f:
        f.write(table(results) + "\n")
    if rows:
        plot(results, out)
    return results


def table(results: dict[str, Any]) -> str:
    rows = results["runs"]
    groups = sorted({g for r in rows for g in r["accuracy"]})
    losses = sorted({g for r in rows for g in r["eval_loss"]})
    head = (["run", "params", "tokens", "train PFLOP"]
            + [f"{g} {m}" for g in groups for m in ("acc", "rank acc")]
            + [f"{g} loss" for g in losses] + ["train (s)"])
    lines = [f"{results['study']}: {len(rows)} runs"
             + ("" if results["complete"] else " (unfinished: more to train)"), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['params'] / 1e6:.3g}M", f"{r['tokens'] / 1e6:.3g}M",
                 f"{r['compute'] / 1e15:.3g}"]
        cells += [_pct(r["accuracy"].get(g, {}).get(m)) for g in groups
                  for m in ("accuracy", "rank_accuracy")]
        cells += [f"{r['eval_loss'][g]:.3f}" for g in losses]
        lines.append("| " + " | ".join(cells + [f"{r['train_seconds']:.0f}"]) + " |")
    for group, by_x in results["fits"].items():
        lines += ["", f"{group} eval loss fits:"] + [f"- {fit['text']}" for fit in by_x.values()]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.1f}%"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """<x>.png for x in params, tokens, compute: accuracy per group and eval loss (with the
    fitted curve) against x, one marker series per value of the study's first axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["runs"]
    groups = sorted({g for r in rows for g in r["accuracy"]})
    losses = sorted({g for r in rows for g in r["eval_loss"]})
    first = next(iter(rows[0]["values"]), None)
    series = sorted({r["values"].get(first, "") for r in rows})
    paths = []
    for x in X_AXES:
        fig, axs = plt.subplots(1, len(groups) + len(losses),
                                figsize=(4 * (len(groups) + len(losses)), 3.4), squeeze=False)
        for ax, (kind, g) in zip(axs[0], [("acc", g) for g in groups]
                                 + [("loss", g) for g in losses]):
            for s in series:
                pts = [(r[x], r["accuracy"][g]["accuracy"] if kind == "acc"
                        else r["eval_loss"][g]) for r in rows
                       if r["values"].get(first, "") == s and g in r[
                           "accuracy" if kind == "acc" else "eval_loss"]]
                ax.plot(*zip(*sorted(pts)), "o-", label=f"{first}={s}" if first else None)
            fit = results["fits"].get(g, {}).get(x) if kind == "loss" else None
            if fit:
                grid = np.geomspace(min(r[x] for r in rows), max(r[x] for r in rows), 50)
                ax.plot(grid, fit["a"] * grid ** -fit["b"] + fit["c"], "k--", lw=1,
                        label=f"fit b={fit['b']:.2f}±{fit['b_err']:.2f}")
            ax.set_xscale("log")
            ax.set_xlabel({"params": "parameters", "tokens": "training tokens",
                           "compute": "training FLOPs"}[x])
            ax.set_ylabel(f"{g} exact match (%)" if kind == "acc" else f"{g} eval loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(results["study"])
        fig.tight_layout()
        path = out / f"{x}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
