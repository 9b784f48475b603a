"""Encoder-decoder, causal decoder, prefix LM and METALM's semi-causal model, side by side.

    python bench/architectures.py                   # the demo's model size (~0.9M params), ~40 min on 2 cores
    python bench/architectures.py --quick           # seconds, for a smoke test

Each architecture trains with `flan-jax train` on the default mixture (gin/runs/small.gin plus
its gin/arch/*.gin), at matched parameter count and the same steps, batch and examples: the
encoder-decoder keeps small.gin's layers; the others get the number of decoder layers whose
total parameter count comes closest to it (the semi-causal model's encoder has
`--semi-encoder-layers`). Then, for each, the held-in and held-out (zero-shot) groups of the
default mixture are scored by the run's own final eval (exact-match accuracy of greedy
decodes and, on options tasks, rank-classification accuracy) and by the teacher-forced loss
per target token on the same validation examples (comparable across architectures: the
targets and the tokenizer are the same, only the model and its feature layout differ).
Prints one table, writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (run as a script, only bench/ is on sys.path)
from flan_jax.study.runner import GROUPS, accuracies, eval_loss  # noqa: E402  (one home)

# name -> (gin files after runs/small.gin, T5Config.architecture, DataConfig.feature_converter)
ARCHS = {
    "enc_dec": ((), "encoder_decoder", "enc_dec"),
    "decoder": (("arch/decoder_only.gin",), "decoder_only", "decoder"),
    "prefix_lm": (("arch/prefix_lm.gin",), "decoder_only", "prefix_lm"),
    "semi_causal": (("arch/semi_causal.gin",), "semi_causal", "semi_causal"),
}


def demo_config(overrides: list[str]):
    """small.gin's T5Config with `overrides` (gin bindings) applied."""
    import gin

    from flan_jax.gin_utils import parse
    from flan_jax.model.gin_config import model_config

    parse(["runs/small.gin"], overrides)
    try:
        return model_config()
    finally:
        gin.clear_config()


def count_params(cfg) -> int:
    import jax

    from flan_jax.model.params import abstract_model, params_of
    return int(sum(x.size for x in jax.tree.leaves(params_of(abstract_model(cfg)))))


def matched_layers(base, semi_encoder_layers: int) -> dict[str, dict[str, int]]:
    """Per architecture, the layer counts (and parameters) closest to the encoder-decoder's."""
    target = count_params(base)
    out = {"enc_dec": {"num_encoder_layers": base.num_encoder_layers,
                       "num_decoder_layers": base.num_decoder_layers, "params": target}}
    for name, (_, arch, _) in ARCHS.items():
        if arch == "encoder_decoder":
            continue
        enc = semi_encoder_layers if arch == "semi_causal" else base.num_encoder_layers
        best = min(
            ((abs(count_params(base.replace(architecture=arch, num_decoder_layers=n,
                                            num_encoder_layers=enc)) - target), n)
             for n in range(1, 4 * (base.num_encoder_layers + base.num_decoder_layers) + 1)))
        n = best[1]
        out[name] = {"num_encoder_layers": enc, "num_decoder_layers": n,
                     "params": count_params(base.replace(architecture=arch, num_decoder_layers=n,
                                                         num_encoder_layers=enc))}
    return out


def train_args(name: str, layers: dict[str, int], model_dir: Path, args) -> list[str]:
    gin_files, _, _ = ARCHS[name]
    out = ["train", "--gin_file=runs/small.gin", *(f"--gin_file={g}" for g in gin_files),
           f"--gin.train.model_dir='{model_dir}'", f"--gin.train.total_steps={args.steps}",
           f"--gin.train.checkpoint_every={args.steps}", "--gin.train.eval_at_start=False",
           f"--gin.train.log_every={max(1, args.steps // 8)}",
           f"--gin.DataConfig.batch_size={args.batch}",
           f"--gin.EvalConfig.num_examples={args.eval_examples}",
           f"--gin.T5Config.num_encoder_layers={layers['num_encoder_layers']}",
           f"--gin.T5Config.num_decoder_layers={layers['num_decoder_layers']}",
           *(f"--gin.{g}" for g in args.gin)]
    if args.quick:
        out += ["--gin.DataConfig.task_feature_lengths={'inputs': 96, 'targets': 32}",
                "--gin.EvalConfig.task_feature_lengths={'inputs': 96, 'targets': 32}",
                "--gin.EvalConfig.batch_size=4", "--gin.DataConfig.workers=0"]
    return out


def run(args) -> dict:
    base = demo_config(list(args.gin))
    layers = matched_layers(base, args.semi_encoder_layers)
    lengths = ({"inputs": 96, "targets": 32} if args.quick
               else {"inputs": 256, "targets": 64})
    results = {"steps": args.steps, "batch": args.batch, "eval_examples": args.eval_examples,
               "d_model": base.d_model, "archs": {}}
    for name in args.archs:
        model_dir = args.workdir / name
        argv = train_args(name, layers[name], model_dir, args)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flan_jax", *argv], cwd=ROOT,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{name}: flan-jax train failed:\n{proc.stderr[-4000:]}")
        _, _, converter = ARCHS[name]
        results["archs"][name] = {
            **layers[name], "train_seconds": seconds,
            "accuracy": accuracies(model_dir, args.steps),
            "eval_loss": eval_loss(model_dir / "model", converter, lengths, GROUPS,
                                   args.loss_batches, args.batch)}
        print(f"{name}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return results


def report(r: dict) -> str:
    lines = [f"{r['steps']} steps of {r['batch']} packed rows each, d_model {r['d_model']}, "
             f"eval on {r['eval_examples']} examples per task", "",
             "| architecture | layers (enc+dec) | params | held-in acc | held-in rank acc | "
             "held-out acc | held-out rank acc | held-in loss | held-out loss | train (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in r["archs"].items():
        enc = a["num_encoder_layers"] if name in ("enc_dec", "semi_causal") else 0
        acc, loss = a["accuracy"], a["eval_loss"]
        cells = [f"{acc.get(g, {}).get(m, float('nan')):.1f}%"  # (seqio's metrics: percent)
                 for g in GROUPS for m in ("accuracy", "rank_accuracy")]
        lines.append(f"| {name} | {enc}+{a['num_decoder_layers']} | {a['params'] / 1e6:.2f}M | "
                     + " | ".join(cells)
                     + f" | {loss['held_in']:.3f} | {loss['held_out']:.3f} | "
                       f"{a['train_seconds']:.0f} |")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["archs"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [("exact-match accuracy (%)", lambda a, g: a["accuracy"][g]["accuracy"]),
              ("rank-classification accuracy (%)", lambda a, g: a["accuracy"][g]["rank_accuracy"]),
              ("eval loss per target token", lambda a, g: a["eval_loss"][g])]
    width = 0.38
    for ax, (title, value) in zip(axes, panels):
        for k, group in enumerate(GROUPS):
            xs = [i + (k - 0.5) * width for i in range(len(names))]
            ax.bar(xs, [value(r["archs"][n], group) for n in names], width,
                   label=group.replace("_", "-"))
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(title)
        ax.set_ylim(0, 100 if "%" in title else None)
    axes[0].legend()
    fig.suptitle(f"matched parameters (~{r['archs'][names[0]]['params'] / 1e6:.1f}M), "
                 f"{r['steps']} steps on the default mixture")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    p.add_argument("--steps", type=int, default=600, help="train steps per model (%(default)s)")
    p.add_argument("--batch", type=int, default=32, help="rows per batch (%(default)s)")
    p.add_argument("--eval-examples", type=int, default=32,
                   help="validation examples per task for accuracy (%(default)s)")
    p.add_argument("--loss-batches", type=int, default=4,
                   help="validation batches per group for the loss (%(default)s)")
    p.add_argument("--semi-encoder-layers", type=int, default=1,
                   help="the semi-causal model's encoder layers (%(default)s)")
    p.add_argument("--gin", action="append", default=[],
                   help="an extra gin binding for every run, e.g. T5Config.d_model=256")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/flan_jax_architectures"),
                   help="run directories (default: %(default)s; reused runs are resumed)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    p.add_argument("--quick", action="store_true",
                   help="short sequences and tiny eval: a smoke test, not a result")
    args = p.parse_args(argv)
    args.gin = [g.removeprefix("--gin.") for g in args.gin]
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
