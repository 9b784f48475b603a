"""LoRA (gin/peft/lora.gin) against full finetuning (gin/runs/finetune.gin): size, memory, quality.

    python bench/lora.py --json docs/lora.json     # T5 1.1-base step, XL / XXL plans, quality
    python bench/lora.py --quick                    # seconds: tiny shapes, no quality runs

1. The train step of `--model` (random weights) as `flan-jax train` builds it from gin
   (`train.setup.setup_run`: the same optimizer, schedule, loss, dropout and adapters), for
   three runs: finetune.gin (Adafactor), finetune.gin with AdamW (the like-for-like optimizer)
   and finetune.gin + peft/lora.gin (rank 8 on q, v; AdamW). Per run: trainable params,
   optimizer-state bytes, and XLA's memory analysis of the compiled step (arguments + outputs
   + temporaries, less the donated state's aliases), then the median of `--time-steps` steps.
2. `flan_jax.plan` per-device memory of the same three runs for larger presets on an FSDP
   mesh (`mesh/fsdp.gin`): abstract, nothing is allocated.
3. Quality: a small base pretrained with `flan-jax train` (runs/small.gin, the default
   mixture), then finetuned on a JSONL task this script writes (headline -> topic, 5
   options; registered as the README's "Register your own task" does) with finetune.gin and
   with finetune.gin + peft/lora.gin: same steps, data, seed and dropout, each gin file's
   own learning rate. Exact-match and rank-classification accuracy of the base (the step-0
   eval) and of both finetunes on the task's validation split.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (run as a script, only bench/ is on sys.path)
sys.path.insert(0, str(ROOT / "bench"))
from train_step import _batch, _peak_bytes  # noqa: E402  (bench/ is not a package)

FINETUNE, LORA = "runs/finetune.gin", "peft/lora.gin"
# name -> (gin files after the model's, bindings): what each compared run adds.
RUNS = {
    "full_adafactor": ((FINETUNE,), ()),
    "full_adamw": ((FINETUNE,), ("make_optimizer.name='adamw'",)),  # finetune.gin's lr 1e-3
    "lora": ((FINETUNE, LORA), ()),
}
TASK = "lora_topic"
TOPICS = {
    "sports": ("goal", "match", "team", "coach", "league", "player", "stadium", "referee"),
    "food": ("soup", "bread", "recipe", "cheese", "dinner", "salad", "cake", "rice"),
    "weather": ("rain", "storm", "snow", "wind", "cloud", "frost", "fog", "thunder"),
    "music": ("song", "band", "guitar", "concert", "album", "piano", "singer", "drum"),
    "travel": ("flight", "hotel", "airport", "beach", "passport", "train", "map", "tour"),
}
FILLER = ("today", "people", "city", "news", "report", "morning", "week", "town", "new",
          "big", "local", "plan", "young", "family", "night", "first")
TASK_MODULE = '''"""The bench's headline -> topic task (bench/lora.py writes this file)."""
from flan_jax.data import mixing
from flan_jax.data.flan import FlanTask, register_flan_task
from flan_jax.data.sources import jsonl_source
from flan_jax.data.templates import Template

source = jsonl_source({{"train": {train!r}, "validation": {validation!r}}},
                      schema={{"headline": str, "options": list[str], "topic": str}})
names = register_flan_task(FlanTask(name={name!r}, source=source, templates=[
    Template("What is this headline about?\\n{{headline}}\\n{{options_}}", "{{topic}}"),
    Template("Headline: {{headline}}\\nWhich topic is it?\\n{{options_}}", "{{topic}}")],
    few_shot=None, options_required=True))  # one format: {name}:zs_opt
mixing.register_mixture({name!r}, mixing.task_rates(names, cap=30_000))
'''


def model_file(preset: str) -> str:
    """gin/models/ file of a preset name: "t5_1_1-base" -> "models/t5_1_1_base.gin"."""
    return f"models/{preset.replace('-', '_')}.gin"


def gin_run(files: list[str], bindings: list[str]):
    """The run `files` + `bindings` describe, set up as `flan-jax train` / `plan` do it."""
    import gin

    from flan_jax import gin_utils
    from flan_jax.train.setup import setup_run
    gin.clear_config()
    try:
        gin_utils.parse(files, bindings, finalize=False)
        return setup_run(import_modules=False)
    finally:
        gin.clear_config()


def _nbytes(tree) -> int:
    import jax
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _count(tree) -> int:
    import jax
    return int(sum(x.size for x in jax.tree.leaves(tree)))


# --- 1. the train step ---------------------------------------------------------------------

def step_memory(run, batch: int, inputs: int, targets: int, time_steps: int) -> dict:
    """Sizes and XLA's memory analysis of `run`'s jitted train step (state donated, a LoRA
    run's base passed as `frozen`, dropout on as the run has it); then `time_steps` steps."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flan_jax import parallel
    from flan_jax import plan as plan_lib
    from flan_jax.model import create_model, params_of
    from flan_jax.model.lora import apply_lora, split_params
    from flan_jax.train.metrics import median_seconds
    from flan_jax.train.step import TrainState, init_state, train_step

    cfg = run.model_cfg
    trained = run.abstract_params
    opt = jax.eval_shape(run.optimizer.init, trained)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), trained, opt)
    frozen = () if run.abstract_frozen is None else (run.abstract_frozen,)
    step = jax.jit(functools.partial(
        train_step, graphdef=nnx.graphdef(run.abstract_model), optimizer=run.optimizer,
        loss_cfg=run.loss, schedule=run.schedule,
        dropout_seed=0 if cfg.dropout_rate > 0 or run.lora.dropout > 0 else None),
        donate_argnums=0)
    data = _batch(cfg, batch, inputs, targets)
    t0 = time.perf_counter()
    compiled = step.lower(state, data, *frozen).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    one = plan_lib.plan(cfg, parallel.MeshConfig(data=1), run.rules, run.optimizer,
                        run.optimizer_name, devices=1, batch_size=batch, input_len=inputs,
                        target_len=targets, model=run.abstract_model)
    row = {"optimizer": run.optimizer_name, "peft": run.lora.describe() if run.lora.enabled
           else "", "params": _count((trained, frozen)),
           "trainable_params": _count(trained), "trainable_bytes": _nbytes(trained),
           "frozen_bytes": _nbytes(frozen), "optimizer_bytes": _nbytes(opt),
           "compile_s": compile_s, "peak_bytes": _peak_bytes(compiled),
           "plan_total_bytes": one.total}
    if m is not None:
        row.update({k: int(getattr(m, f"{k}_size_in_bytes"))
                    for k in ("argument", "output", "temp", "alias")})
    if time_steps:
        model = create_model(cfg, seed=0)
        if run.lora.enabled:
            apply_lora(model, run.lora, rngs=nnx.Rngs(params=0))
            base, params = split_params(model)
            frozen = (base,)
        else:
            params, frozen = params_of(model), ()
        del model
        holder = [init_state(params, run.optimizer)]
        del params

        def one_step():
            holder[0], metrics = compiled(holder[0], data, *frozen)
            jax.block_until_ready(metrics)

        row["step_s"] = median_seconds(one_step, time_steps, 0)
        del holder, frozen
    return row


def step_section(args) -> dict:
    files = [model_file(args.model)]
    lengths = f"{{'inputs': {args.inputs}, 'targets': {args.targets}}}"
    bindings = [f"DataConfig.batch_size={args.batch}",
                f"DataConfig.task_feature_lengths={lengths}"]
    rows = {}
    for name, (extra, binds) in RUNS.items():
        rows[name] = step_memory(gin_run(files + list(extra), bindings + list(binds)),
                                 args.batch, args.inputs, args.targets, args.time_steps)
        print(f"step {name}: {rows[name]}", file=sys.stderr, flush=True)
    return {"model": args.model, "batch": args.batch, "inputs": args.inputs,
            "targets": args.targets, "runs": rows, "ratios": ratios(rows)}


def ratios(rows: dict) -> dict:
    """LoRA / full for each full run and each figure both have."""
    keys = ("trainable_params", "optimizer_bytes", "peak_bytes", "temp", "step_s")
    return {full: {k: rows["lora"][k] / rows[full][k] for k in keys
                   if rows[full].get(k) and k in rows["lora"]}
            for full in rows if full != "lora"}


# --- 2. plans of larger presets ------------------------------------------------------------

def plan_section(specs: list[str], bindings: list[str]) -> list[dict]:
    """`flan_jax.plan` of each RUNS entry for each "preset:devices" in `specs`."""
    from flan_jax import plan as plan_lib

    out = []
    for spec in specs:
        preset, devices = spec.rsplit(":", 1)
        for name, (extra, binds) in RUNS.items():
            run = gin_run([model_file(preset), *extra, "mesh/fsdp.gin"],
                          [*bindings, *binds])
            p = plan_lib.plan(
                run.model_cfg, run.mesh, run.rules, run.optimizer, run.optimizer_name,
                devices=int(devices), batch_size=run.data.batch_size,
                input_len=run.data.task_feature_lengths["inputs"],
                target_len=run.data.task_feature_lengths["targets"],
                model=run.abstract_model, lora=run.lora if run.lora.enabled else None)
            out.append({"model": preset, "devices": int(devices), "run": name,
                        "remat": run.model_cfg.remat, "dtype": run.model_cfg.dtype,
                        **{k: v for k, v in p.to_dict().items()
                           if k not in ("stacks", "replicated_params")}})
    return out


def plan_ratios(plans: list[dict]) -> dict:
    """{(model, devices): LoRA / full figures} of `plan_section`'s rows."""
    by = {(p["model"], p["devices"], p["run"]): p for p in plans}
    out = {}
    for model, devices, run in by:
        if run != "lora":
            continue
        lora, adamw = by[model, devices, "lora"], by[model, devices, "full_adamw"]
        out[model, devices] = {
            "total": lora["total"] / adamw["total"],
            "optimizer": lora["optimizer"] / adamw["optimizer"],
            "total_vs_adafactor": lora["total"] / by[model, devices, "full_adafactor"]["total"]}
    return out


# --- 3. quality on a user task -------------------------------------------------------------

def write_task(directory: Path, n_train: int, n_validation: int, seed: int = 0) -> Path:
    """JSONL train / validation files of the headline -> topic task (a topic word among
    three filler words; validation headlines never occur in train) and the module that
    registers it; returns the directory (to run from: the module imports from there)."""
    rng = random.Random(seed)
    options = sorted(TOPICS)
    seen: set[str] = set()

    def rows(n: int):
        out = []
        while len(out) < n:
            topic = rng.choice(options)
            words = [rng.choice(TOPICS[topic]), *rng.sample(FILLER, 3)]
            rng.shuffle(words)
            headline = " ".join(words)
            if headline in seen:
                continue
            seen.add(headline)
            out.append({"headline": headline, "options": options, "topic": topic})
        return out

    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_validation)):
        paths[split] = directory / f"{TASK}_{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    (directory / f"{TASK}.py").write_text(TASK_MODULE.format(
        train=str(paths["train"]), validation=str(paths["validation"]), name=TASK))
    return directory


def _train(argv: list[str], cwd: Path, what: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flan_jax", "train", *argv], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what}: flan-jax train failed:\n{proc.stderr[-4000:]}")
    seconds = time.perf_counter() - t0
    print(f"{what}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


def task_scores(model_dir: Path, step: int) -> dict:
    """The task's exact-match and rank accuracy (percent) at `step`'s eval."""
    results = json.loads((model_dir / "eval" / f"step_{step}.json").read_text())
    (metrics,) = [m for tasks in results.values() for name, m in tasks.items()
                  if name.startswith(TASK)]
    return {"accuracy": metrics["accuracy"], "rank_accuracy": metrics["rank_accuracy"]}


def final_train_metrics(model_dir: Path) -> dict:
    rows = [json.loads(line) for line in (model_dir / "train" / "metrics.jsonl").open()]
    last = rows[-1]
    rates = [r["steps_per_s"] for r in rows[1:] if "steps_per_s" in r]  # (the first: compile)
    return {"loss": last["loss"], "token_accuracy": last["accuracy"],
            "steps_per_s": sorted(rates)[len(rates) // 2] if rates else float("nan")}


def quality_section(args) -> dict:
    work = args.workdir
    task_dir = write_task(work / "task", args.train_examples, args.eval_examples)
    base = work / "base"
    lengths = f"{{'inputs': {args.inputs_q}, 'targets': {args.targets_q}}}"
    seconds = {}
    if not (base / "model" / "config.json").exists():
        seconds["base"] = _train(
            ["--gin_file=runs/small.gin", f"--gin.train.model_dir='{base}'",
             f"--gin.train.total_steps={args.base_steps}",
             f"--gin.train.checkpoint_every={args.base_steps}", "--gin.train.evaluate=False",
             f"--gin.DataConfig.batch_size={args.base_batch}"], task_dir, "base")
    common = [f"--gin.train.init_from='{base / 'model'}'",
              f"--gin.train.total_steps={args.steps}",
              f"--gin.train.checkpoint_every={args.steps}", "--gin.train.eval_every=0",
              f"--gin.train.log_every={max(1, args.steps // 10)}",
              f"--gin.DataConfig.module_imports=('{TASK}',)",
              f"--gin.DataConfig.mixture_or_task_name='{TASK}'",
              f"--gin.DataConfig.batch_size={args.batch_q}",
              f"--gin.DataConfig.task_feature_lengths={lengths}",
              f"--gin.EvalConfig.task_feature_lengths={lengths}",
              f"--gin.EvalConfig.num_examples={args.eval_examples}",
              "--gin.EvalConfig.batch_size=50"]
    runs = {}
    for name, files in (("full", (FINETUNE,)), ("lora", (FINETUNE, LORA))):
        model_dir = work / name
        seconds[name] = _train([*(f"--gin_file={f}" for f in files),
                                f"--gin.train.model_dir='{model_dir}'", *common],
                               task_dir, name)
        runs[name] = {"before": task_scores(model_dir, 0),
                      "after": task_scores(model_dir, args.steps),
                      **final_train_metrics(model_dir), "seconds": seconds[name]}
    if runs["full"]["before"] != runs["lora"]["before"]:  # B = 0: the same model at step 0
        print(f"warning: step-0 evals differ: {runs['full']['before']} vs "
              f"{runs['lora']['before']}", file=sys.stderr)
    return {"base_steps": args.base_steps, "base_batch": args.base_batch, "steps": args.steps,
            "batch": args.batch_q, "inputs": args.inputs_q, "targets": args.targets_q,
            "train_examples": args.train_examples, "eval_examples": args.eval_examples,
            "chance_percent": 100 / len(TOPICS), "seconds": seconds,
            "base": runs["full"]["before"], "runs": runs}


# --- report --------------------------------------------------------------------------------

def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _size(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else _mib(n)


def report(r: dict) -> str:
    lines = []
    if "step" in r:
        s = r["step"]
        lines += [f"train step of {s['model']}, batch {s['batch']}, {s['inputs']} / "
                  f"{s['targets']} tokens, XLA memory analysis of the compiled step", "",
                  "| run | optimizer | trainable params | optimizer state | arguments | "
                  "temporaries | peak (args + out + temp - aliased) | plan (1 device) | "
                  "step |", "|---|---|---|---|---|---|---|---|---|"]
        for name, x in s["runs"].items():
            step = f"{x['step_s']:.2f} s" if "step_s" in x else ""
            lines.append(f"| {name} | {x['optimizer']} | {x['trainable_params']:,} | "
                         f"{_mib(x['optimizer_bytes'])} | {_mib(x.get('argument', 0))} | "
                         f"{_mib(x.get('temp', 0))} | {_mib(x['peak_bytes'])} | "
                         f"{_mib(x['plan_total_bytes'])} | {step} |")
        lines.append("")
        for full, q in s["ratios"].items():
            lines.append(f"lora / {full}: " + ", ".join(f"{k} {v:.4g}x" for k, v in q.items()))
    if r.get("plans"):
        lines += ["", "flan_jax.plan per device (the most loaded), mesh/fsdp.gin", "",
                  "| model | devices | run | trainable params | params | optimizer state | "
                  "gradients | activations (rough) | total |", "|---" * 9 + "|"]
        for p in r["plans"]:
            lines.append(f"| {p['model']} | {p['devices']} | {p['run']} | "
                         f"{p['trainable_param_count']:,} | {_size(p['params'])} | "
                         f"{_size(p['optimizer'])} | {_size(p['gradients'])} | "
                         f"{_size(p['activations'])} | {_size(p['total'])} |")
        for (model, devices), q in plan_ratios(r["plans"]).items():
            lines.append(f"{model} on {devices}: lora / full_adamw total {q['total']:.3f}x, "
                         f"optimizer {q['optimizer']:.4f}x; lora / full_adafactor total "
                         f"{q['total_vs_adafactor']:.3f}x")
    if "quality" in r:
        q = r["quality"]
        lines += ["", f"{TASK}:zs_opt validation ({q['eval_examples']} examples, "
                  f"{len(TOPICS)} options, chance {q['chance_percent']:.0f}%), after "
                  f"{q['steps']} steps of {q['batch']} packed rows", "",
                  "| model | exact match | rank accuracy | final train loss | steps/s | "
                  "wall (s) |", "|---|---|---|---|---|---|",
                  f"| base ({q['base_steps']} steps on the default mixture) | "
                  f"{q['base']['accuracy']:.1f}% | {q['base']['rank_accuracy']:.1f}% | | | "
                  f"{q['seconds'].get('base', float('nan')):.0f} |"]
        for name, x in q["runs"].items():
            lines.append(f"| {name} finetune | {x['after']['accuracy']:.1f}% | "
                         f"{x['after']['rank_accuracy']:.1f}% | {x['loss']:.3f} | "
                         f"{x['steps_per_s']:.2f} | {x['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="t5_1_1-base", help="preset of the step (%(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=512)
    p.add_argument("--targets", type=int, default=128)
    p.add_argument("--time-steps", type=int, default=2,
                   help="timed steps per run after compiling (0: compile only)")
    p.add_argument("--plans", nargs="*", default=["t5_1_1-xl:8", "t5_1_1-xxl:64"],
                   help="PRESET:DEVICES to plan on an FSDP mesh (%(default)s)")
    p.add_argument("--plan-gin", nargs="*", default=["T5Config.remat='full'"],
                   help="bindings for every plan, on top of finetune.gin's batch and lengths "
                        "(default: %(default)s; none: finetune.gin's remat too)")
    p.add_argument("--no-quality", action="store_true", help="skip the finetuning runs")
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--base-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300, help="finetune steps (%(default)s)")
    p.add_argument("--batch-q", type=int, default=16, help="finetune rows per batch")
    p.add_argument("--inputs-q", type=int, default=128)
    p.add_argument("--targets-q", type=int, default=32)
    p.add_argument("--train-examples", type=int, default=2000)
    p.add_argument("--eval-examples", type=int, default=200)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/flan_jax_lora"),
                   help="run directories (default: %(default)s; a finished base is reused)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, no quality runs: a smoke test, not a result")
    args = p.parse_args(argv)
    args.plan_gin = [g.removeprefix("--gin.") for g in args.plan_gin]
    if args.quick:
        args.model, args.batch, args.inputs, args.targets = "tiny", 2, 32, 8
        args.time_steps, args.plans, args.no_quality = 1, ["tiny:2"], True
    import jax
    result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()} "
                        f"({platform.machine()}, {os.cpu_count()} cpus)",
              "jax": jax.__version__}
    t0 = time.perf_counter()
    result["step"] = step_section(args)
    result["plans"] = plan_section(args.plans, args.plan_gin)
    if not args.no_quality:
        result["quality"] = quality_section(args)
    result["wall_s"] = time.perf_counter() - t0
    print(report(result))
    print(f"\non {result['device']}, jax {result['jax']}, {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
