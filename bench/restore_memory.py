"""Peak host memory of a finetune against training the same shapes from scratch.

    python bench/restore_memory.py                 # T5 1.1-base shapes (248M params, ~1 GB f32)
    python bench/restore_memory.py --model tiny    # seconds, for a smoke test

Writes a random-weight Hugging Face directory and a flan-jax directory of the model's shapes,
then runs `flan-jax train` for a few steps three ways, each in a fresh process so that its
peak RSS (`ru_maxrss`) is its own: from scratch (the peer), `init_from` the HF directory and
`init_from` the flan-jax directory. The finetune reads each parameter block straight into its
sharding (`model.io.load_sharded`), so its peak should sit within a fraction of one parameter
copy of the scratch run's; a loader that built a host copy first would add about one copy (and
a `jit` closing over it, another).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (run as a script, only bench/ is on sys.path)

MODES = ("scratch", "hf", "flan-jax")


def _train_args(model: str, model_dir: Path, steps: int, init_from: Path | None) -> list[str]:
    args = ["train", f"--gin.train.model_dir='{model_dir}'", f"--gin.train.total_steps={steps}",
            "--gin.train.evaluate=False", "--gin.train.log_every=1",
            "--gin.DataConfig.batch_size=2", "--gin.DataConfig.workers=0",
            "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}"]
    if init_from is None:
        return ["--gin_file=runs/train.gin", f"--gin_file=models/{model}.gin", *args,
                "--gin.T5Config.dropout_rate=0.0"]
    return ["--gin_file=runs/finetune.gin", f"--gin.train.init_from='{init_from}'", *args,
            "--gin.T5Config.dropout_rate=0.0"]


def child_train(argv: list[str]) -> None:
    """Runs one `flan-jax train` in this process; prints its peak RSS and wall time."""
    from flan_jax.cli import main
    t0 = time.perf_counter()
    rc = main(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rc": rc, "peak_rss_bytes": peak_kib * 1024,
                      "seconds": time.perf_counter() - t0}))


def child_make(model: str, out: Path) -> None:
    """A random-weight model of `model`'s shapes, saved as HF and flan-jax directories."""
    import gin

    from flan_jax.gin_utils import parse
    from flan_jax.model.convert import save_hf_checkpoint
    from flan_jax.model.gin_config import model_config
    from flan_jax.model.io import save_pretrained
    from flan_jax.model.params import create_model, params_of
    import jax

    parse([f"models/{model}.gin"], [])
    cfg = model_config()
    gin.clear_config()
    params = jax.device_get(params_of(create_model(cfg, seed=0)))
    save_hf_checkpoint(out / "hf", cfg, params)
    save_pretrained(out / "flan-jax", cfg, params)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(json.dumps({"params": int(count), "param_bytes": int(count) * 4}))


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(model: str, steps: int, workdir: Path) -> dict:
    made = _child(["--make", model, str(workdir)])
    results = {"model": model, **made, "runs": {}}
    for mode in MODES:
        init = {"scratch": None, "hf": workdir / "hf", "flan-jax": workdir / "flan-jax"}[mode]
        argv = _train_args(model, workdir / f"run-{mode}", steps, init)
        results["runs"][mode] = _child(["--train", json.dumps(argv)])
    return results


def report(r: dict) -> str:
    copy = r["param_bytes"]
    base = r["runs"]["scratch"]["peak_rss_bytes"]
    lines = [f"peak host RSS, `flan-jax train` of {r['model']} ({r['params'] / 1e6:.1f}M params, "
             f"one f32 copy = {copy / 2**30:.2f} GiB)", "",
             "| run | peak RSS (GiB) | vs scratch | extra, in param copies | wall (s) |",
             "|---|---|---|---|---|"]
    for mode, run_ in r["runs"].items():
        peak = run_["peak_rss_bytes"]
        lines.append(f"| {mode} | {peak / 2**30:.2f} | {peak / base:.2f}x | "
                     f"{(peak - base) / copy:+.2f} | {run_['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="t5_1_1_base",
                   help="a gin/models/*.gin name (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="train steps per run (%(default)s)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the model dirs and runs go (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make:
        child_make(args.make[0], Path(args.make[1]))
        return 0
    if args.train:
        child_train(json.loads(args.train))
        return 0
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="flan_jax_restore_") as tmp:
            results = run(args.model, args.steps, Path(tmp))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args.model, args.steps, args.workdir)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
