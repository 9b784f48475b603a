"""A study's results: seed summaries, power-law fits, the markdown table and the plots.

Pure functions of the finished runs' `study_result.json` records (`runner.run_study`
collects them), so a study's report can be rebuilt from its run records alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

X_AXES = ("params", "tokens", "compute")
X_SYMBOL = {"params": "N", "tokens": "D", "compute": "C"}
X_LABEL = {"params": "parameters", "tokens": "training tokens", "compute": "training FLOPs"}
SEED_AXIS = "seed"
# Train-loss points before this fraction of a run's steps (warmup, the first fast drop) are
# left out of its L(D) fit.
CURVE_FROM = 0.25


def metrics(row: dict[str, Any]) -> dict[str, float]:
    """A run's reported numbers, flat: `<group> acc`, `<group> rank acc`, `<group> loss`."""
    out = {}
    for group, m in sorted(row["accuracy"].items()):
        out[f"{group} acc"] = m["accuracy"]
        out[f"{group} rank acc"] = m["rank_accuracy"]
    for group, loss in sorted(row["eval_loss"].items()):
        out[f"{group} loss"] = loss
    return out


def summarize(rows: Sequence[dict[str, Any]], seed_axis: str = SEED_AXIS
              ) -> list[dict[str, Any]]:
    """One entry per configuration (every axis but `seed_axis`): each metric's mean, sample
    standard deviation and count over its seeds, and the seeds themselves."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = ",".join(f"{a}={v}" for a, v in r["values"].items() if a != seed_axis) or "run"
        configs.setdefault(key, []).append(r)
    out = []
    for key, runs in configs.items():
        names = list(dict.fromkeys(n for r in runs for n in metrics(r)))
        stats = {}
        for name in names:
            vals = [v for r in runs if not math.isnan(v := metrics(r).get(name, math.nan))]
            stats[name] = {"mean": statistics.fmean(vals) if vals else math.nan,
                           "sd": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                           "n": len(vals)}
        out.append({"config": key, "seeds": [r["values"].get(seed_axis) for r in runs],
                    "params": runs[0]["params"], "tokens": runs[0]["tokens"],
                    "metrics": stats})
    return out


def fits(rows: Sequence[dict[str, Any]], by: str | None = None) -> dict[str, Any]:
    """Power-law fits L = a x^-b + c: each loss group's final eval loss against params,
    tokens and compute where the runs give >= 4 points with >= 3 distinct x; and L(D) of
    the training loss along the curve of the largest run (`train_loss`: single-epoch data,
    so the training loss is a held-out loss). `by`: an axis fitted apart, one fit per value
    (keys `<group> (<axis>=<value>)`)."""
    from flan_jax.study.fit import fit_power_law

    if by is not None:
        out = {}
        for value in dict.fromkeys(r["values"][by] for r in rows):
            part = fits([r for r in rows if r["values"][by] == value])
            out |= {f"{group} ({by}={value})": f for group, f in part.items()}
        return out
    out: dict[str, dict[str, Any]] = {}
    for group in sorted({g for r in rows for g in r["eval_loss"]}):
        for x in X_AXES:
            pts = [(r[x], r["eval_loss"][group]) for r in rows if group in r["eval_loss"]]
            if len(pts) >= 4 and len({p for p, _ in pts}) >= 3:
                out.setdefault(group, {})[x] = _fit(fit_power_law, *zip(*pts), X_SYMBOL[x])
    curves = [r for r in rows if len(r.get("curve", ())) >= 4]
    if curves:
        big = max(curves, key=lambda r: (r["params"], r["tokens"]))
        pts = [(t, loss) for s, t, loss in big["curve"] if s >= CURVE_FROM * big["steps"]]
        if len(pts) >= 4 and len({t for t, _ in pts}) >= 3:
            out["train_loss"] = {"tokens": _fit(fit_power_law, *zip(*pts), "D")
                                 | {"run": big["name"]}}
    return out


def _fit(fit_power_law, xs, ys, symbol: str) -> dict[str, Any]:
    fit = fit_power_law(list(xs), list(ys))
    return dataclasses.asdict(fit) | {"text": fit.describe(symbol)}


def write(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md and the plots in `out`."""
    from flan_jax.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json") as f:
        f.write(json.dumps(results, indent=1) + "\n")
    with atomic_file(out / "results.md") as f:
        f.write(table(results) + "\n")
    if results["runs"]:
        plot(results, out)


def table(results: dict[str, Any]) -> str:
    rows = results["runs"]
    groups = sorted({g for r in rows for g in r["accuracy"]})
    losses = sorted({g for r in rows for g in r["eval_loss"]})
    head = (["run", "params", "tokens", "train PFLOP"]
            + [f"{g} {m}" for g in groups for m in ("acc", "rank acc")]
            + [f"{g} loss" for g in losses] + ["train (s)"])
    lines = [f"{results['study']}: {len(rows)} runs"
             + ("" if results["complete"] else " (unfinished: more to train)"), ""]
    summary = results.get("summary", [])
    if any(len(s["seeds"]) > 1 for s in summary):
        names = [n for n in summary[0]["metrics"]  # (a metric no configuration has: left out)
                 if any(not math.isnan(s["metrics"][n]["mean"]) for s in summary)]
        lines += ["Mean ± standard deviation over seeds:", "",
                  "| config | seeds | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 2)]
        for s in summary:
            cells = [_mean_sd(s["metrics"][n], n) for n in names]
            lines.append(f"| {s['config']} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
        lines += ["", "Every run:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['params'] / 1e6:.3g}M", f"{r['tokens'] / 1e6:.3g}M",
                 f"{r['compute'] / 1e15:.3g}"]
        cells += [_pct(r["accuracy"].get(g, {}).get(m)) for g in groups
                  for m in ("accuracy", "rank_accuracy")]
        cells += [f"{r['eval_loss'][g]:.3f}" for g in losses]
        lines.append("| " + " | ".join(cells + [f"{r['train_seconds']:.0f}"]) + " |")
    for group, by_x in results["fits"].items():
        kind = "" if group.startswith("train_loss") else "eval "
        lines += ["", f"{group} {kind}loss fits:"]
        lines += [f"- {fit['text']}" + (f" (curve of {fit['run']})" if "run" in fit else "")
                  for fit in by_x.values()]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.1f}%"


def _mean_sd(stat: dict[str, float], name: str) -> str:
    if math.isnan(stat["mean"]):
        return ""
    fmt = "{:.3f}" if name.endswith(" loss") else "{:.1f}"
    sd = "" if math.isnan(stat["sd"]) else " ± " + fmt.format(stat["sd"])
    return fmt.format(stat["mean"]) + sd


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """<x>.png for each x in params / tokens / compute that varies over the runs (accuracy
    per group and eval loss with its fitted curve against x, one series per value of the
    first axis), and summary.png (each configuration's mean accuracy per group with its
    seed spread) when the study has more than one configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["runs"]
    paths = []
    for x in X_AXES:
        if len({r[x] for r in rows}) > 1:
            paths.append(_plot_x(plt, results, x, out))
    if len(results.get("summary", [])) > 1:
        paths.append(_plot_summary(plt, results, out))
    return paths


def _plot_x(plt, results: dict[str, Any], x: str, out: Path) -> Path:
    import numpy as np

    rows = results["runs"]
    groups = sorted({g for r in rows for g in r["accuracy"]})
    losses = sorted({g for r in rows for g in r["eval_loss"]})
    first = next(iter(rows[0]["values"]), None)
    series = sorted({r["values"].get(first, "") for r in rows})
    panels = [("acc", g) for g in groups] + [("loss", g) for g in losses]
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (kind, g) in zip(axs[0], panels):
        for s in series:
            pts = [(r[x], r["accuracy"][g]["accuracy"] if kind == "acc" else r["eval_loss"][g])
                   for r in rows if r["values"].get(first, "") == s
                   and g in r["accuracy" if kind == "acc" else "eval_loss"]]
            ax.plot(*zip(*sorted(pts)), "o-", label=f"{first}={s}" if first else None)
        for key in ([g] + [f"{g} ({first}={s})" for s in series]) if kind == "loss" else ():
            fit = results["fits"].get(key, {}).get(x)
            if fit:
                grid = np.geomspace(min(r[x] for r in rows), max(r[x] for r in rows), 50)
                ax.plot(grid, fit["a"] * grid ** -fit["b"] + fit["c"], "--", lw=1,
                        label=f"fit{key[len(g):]} b={fit['b']:.2f}±{fit['b_err']:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel(X_LABEL[x])
        ax.set_ylabel(f"{g} exact match (%)" if kind == "acc" else f"{g} eval loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(results["study"])
    fig.tight_layout()
    path = out / f"{x}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_summary(plt, results: dict[str, Any], out: Path) -> Path:
    import numpy as np

    summary = results["summary"]
    names = [n for n in summary[0]["metrics"] if n.endswith(" acc")
             and any(not math.isnan(s["metrics"][n]["mean"]) for s in summary)]
    width = 0.8 / len(summary)
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(names) * len(summary))), 4.2))
    for i, s in enumerate(summary):
        means = [s["metrics"][n]["mean"] for n in names]
        sds = [0 if math.isnan(s["metrics"][n]["sd"]) else s["metrics"][n]["sd"]
               for n in names]
        ax.bar(np.arange(len(names)) + i * width, means, width, yerr=sds, capsize=2,
               label=s["config"])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8)
    ax.set_ylabel("accuracy (%), mean ± sd over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(results["study"])
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
