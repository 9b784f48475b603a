"""Both training readers (Grain, seqio) against the number of tasks: `data_pipeline.py --tasks`.

Synthetic JSONL instruction tasks (3 seqio Tasks each: zs_noopt, fs_noopt, inv), a Flan-2022-
layout parquet (task names x 4 template types) and the default mixture; every configuration
runs in a fresh subprocess (`data_scale.py --child SPEC`) so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # (run as a script, only bench/ is on sys.path)
sys.path.insert(0, str(BENCH))

ROWS_PER_TASK = 300
FLAN2022_ROWS = 25  # per (task_name, template_type)
TEMPLATE_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
SCHEMA = {"question": str, "answer": str}
CAP = 3000


def run_scale(args) -> dict:
    """The parent: generate the data, run each configuration in a child, print the tables."""
    quick = args.quick
    sizes = dict(batch_size=args.batch_size, inputs_length=args.inputs_length,
                 targets_length=args.targets_length, seed=args.seed,
                 warmup_batches=1 if quick else args.scale_warmup_batches,
                 steady_batches=3 if quick else args.scale_batches,
                 max_steady_s=args.max_steady_s, workers=args.workers)
    sweep = [0, 1] if quick else list(args.worker_sweep)
    rows_per_task = 40 if quick else ROWS_PER_TASK
    f22_rows = 6 if quick else FLAN2022_ROWS
    runs: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="flan_jax_scale_"))
    try:
        for n in args.tasks or ():
            t0 = time.perf_counter()
            data = tmp / f"jsonl_{n}"
            write_jsonl_tasks(data, n, rows_per_task, args.seed)
            gen_s = time.perf_counter() - t0
            for reader in ("grain", "seqio"):
                runs.append(_run(args, dict(sizes, kind="jsonl", n=n, dir=str(data),
                                            reader=reader, gen_s=gen_s,
                                            sweep=sweep if reader == "grain" else [])))
        if args.flan2022:
            n = args.flan2022
            t0 = time.perf_counter()
            path = tmp / f"flan2022_{n}" / "train.parquet"
            write_flan2022_parquet(path, n, f22_rows, args.seed)
            gen_s = time.perf_counter() - t0
            from flan_jax.data.prepare import prepare_flan2022
            t0 = time.perf_counter()
            prepare_flan2022([path], path.parent / "prepared", progress=False)
            prepare_s = time.perf_counter() - t0
            for reader in ("grain", "seqio"):
                runs.append(_run(args, dict(sizes, kind="flan2022", n=n, dir=str(path.parent),
                                            reader=reader, gen_s=gen_s, prepare_s=prepare_s,
                                            sweep=sweep if reader == "grain" else [])))
        default = None
        if not args.no_default_mixture:
            spec = dict(sizes, kind="default", n=0, dir="", quick=quick, sweep=[],
                        workers=2)
            g = _run(args, dict(spec, reader="grain"))
            s = _run(args, dict(spec, reader="seqio"))
            runs += [g, s]
            ok = "examples_per_s" in g and "examples_per_s" in s
            default = {"grain": g, "seqio": s,
                       "ratio": g["examples_per_s"] / s["examples_per_s"] if ok else None}
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"mode": "scale", "quick": quick, "runs": runs, "default_mixture": default,
              "rows_per_task": rows_per_task, "flan2022_rows_per_key": f22_rows,
              "seqio_max_tasks": args.seqio_max_tasks, "timeout_s": args.timeout,
              "machine": f"{os.uname().machine}, {os.cpu_count()} cpus",
              "goals": goals(runs, default)}
    report(result)
    return result


def _run(args, spec: dict) -> dict:
    """One configuration in a fresh Python; its JSON, or why there is none."""
    base = {k: spec[k] for k in ("kind", "n", "reader")}
    if spec["kind"] != "default" and spec["reader"] == "seqio" and spec["n"] > args.seqio_max_tasks:
        return {**base, "skipped": f"> cap ({args.seqio_max_tasks})"}
    print(f"... {spec['kind']} {spec['n'] or ''} {spec['reader']}", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = f.name + ".out"
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", f.name, out],
                              timeout=args.timeout, capture_output=True, text=True)
        if proc.returncode:
            return {**base, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        return {**base, **json.loads(Path(out).read_text())}
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timeout ({args.timeout} s)"}
    finally:
        for p in (f.name, out):
            Path(p).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- data

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fu", "go", "hi",
              "ja", "po", "qu", "ze", "xo", "wy", "an", "el", "is", "om", "ur")


def _words(rng: random.Random, k: int) -> str:
    return " ".join("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(k))


def write_jsonl_tasks(out: Path, n: int, rows: int, seed: int) -> None:
    """`n` files task{i}.jsonl of `rows` {question, answer} rows (8-60 / 1-12 words)."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(f"{seed}/{i}")
        with (out / f"task{i:05d}.jsonl").open("w") as f:
            for _ in range(rows):
                f.write(json.dumps({"question": _words(rng, rng.randint(8, 60)) + "?",
                                    "answer": _words(rng, rng.randint(1, 12))}) + "\n")


def write_flan2022_parquet(path: Path, n: int, rows: int, seed: int) -> None:
    """Columns inputs, targets, task_name, template_type: `n` names x 4 types x `rows`,
    shuffled as the published files are (tasks interleaved); few-shot inputs are longer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    table = {"inputs": [], "targets": [], "task_name": [], "template_type": []}
    for i in range(n):
        for ttype in TEMPLATE_TYPES:
            shots = 3 if ttype.startswith("fs") else 1
            opts = ttype.endswith("_opt")
            for _ in range(rows):
                q = "\n\n".join(_words(rng, rng.randint(8, 50)) for _ in range(shots))
                if opts:
                    q += "\nOPTIONS:\n- " + "\n- ".join(_words(rng, 2) for _ in range(3))
                table["inputs"].append(q)
                table["targets"].append(_words(rng, rng.randint(1, 12)))
                table["task_name"].append(f"synth_t{i:05d}:1.0.0")
                table["template_type"].append(ttype)
    order = list(range(len(table["inputs"])))
    rng.shuffle(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: [v[j] for j in order] for k, v in table.items()}), path,
                   row_group_size=50_000)


# ---------------------------------------------------------------------------------- child

def child(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    memory = MemorySampler()
    t0 = time.perf_counter()
    from flan_jax.quiet import import_tensorflow, silenced_stderr
    import_tensorflow()
    import absl.logging
    import tensorflow as tf
    with silenced_stderr():
        tf.config.set_visible_devices([], "GPU")
    absl.logging.set_verbosity(absl.logging.ERROR)
    import_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    mixture, tasks = register(spec)
    setup_s = time.perf_counter() - t0

    from flan_jax.train.data import DataConfig
    cfg = DataConfig(mixture_or_task_name=mixture, batch_size=spec["batch_size"],
                     task_feature_lengths={"inputs": spec["inputs_length"],
                                           "targets": spec["targets_length"]},
                     seed=spec["seed"], module_imports=(), reader=spec["reader"],
                     workers=spec["workers"])
    main = measure(cfg, spec)
    main.update(memory.peak())  # before the sweep: this run's memory, at its worker count
    sweep = []
    for w in spec["sweep"]:
        if w == spec["workers"]:
            m = {k: main[k] for k in ("first_batch_s", "examples_per_s", "batches")}
        else:
            import dataclasses
            m = {k: v for k, v in measure(dataclasses.replace(cfg, workers=w), spec).items()
                 if k in ("first_batch_s", "examples_per_s", "batches")}
        sweep.append({"workers": w, **m})
    memory.stop()
    Path(out_path).write_text(json.dumps({
        **{k: spec.get(k) for k in ("gen_s", "prepare_s")},
        "workers": spec["workers"] if spec["reader"] == "grain" else None,
        "seqio_tasks": tasks, "import_s": import_s, "setup_s": setup_s, **main,
        "sweep": sweep}))


def register(spec: dict) -> tuple[str, int]:
    """Registers the spec's tasks and mixture here; (mixture name, number of seqio Tasks)."""
    import seqio

    from flan_jax.data import mixing
    kind, n = spec["kind"], spec["n"]
    if kind == "default":
        import mixtures.default
        from data_pipeline import QUICK_TASK
        name = QUICK_TASK if spec.get("quick") else mixtures.default.TRAIN_MIXTURE
        provider = seqio.get_mixture_or_task(name)
        return name, len(getattr(provider, "tasks", [provider]))
    from flan_jax.data.vocab import default_vocabulary
    vocab = default_vocabulary()
    names: list[str] = []
    if kind == "jsonl":
        from flan_jax.data.flan import FlanTask, register_flan_task
        from flan_jax.data.sources import jsonl_source
        from flan_jax.data.templates import Template
        templates = [Template("Question: {question}\nAnswer:", "{answer}"),
                     Template("{question}\n\nWhat is the answer to this question?", "{answer}"),
                     Template("Answer the following.\n\n{question}", "{answer}")]
        inversion = [Template("Write a question whose answer is: {answer}", "{question}")]
        for path in sorted(Path(spec["dir"]).glob("task*.jsonl")):
            source = jsonl_source({"train": str(path)}, SCHEMA)
            names += register_flan_task(
                FlanTask(name=f"scale_{path.stem}", source=source, templates=templates,
                         inversion_templates=inversion), vocab)
    else:
        from flan_jax.data.flan2022 import register_flan2022_submix
        d = Path(spec["dir"])
        names = register_flan2022_submix("f22", {"train": [str(d / "train.parquet")]}, vocab,
                                         prepared_dir=d / "prepared")
    mixture = f"bench_scale_{kind}_{n}"
    mixing.register_mixture(mixture, mixing.task_rates(names, cap=CAP))
    return mixture, len(names)


def measure(cfg, spec: dict) -> dict:
    """First batch (from make_reader), warm-up, then steady rates over a fixed batch count
    (or fewer, if `max_steady_s` runs out first)."""
    import numpy as np

    from data_pipeline import count_segments
    from flan_jax.train.data import make_reader

    t0 = time.perf_counter()
    reader = make_reader(cfg)
    build_s = time.perf_counter() - t0
    next(reader)
    first = time.perf_counter() - t0
    for _ in range(spec["warmup_batches"]):
        next(reader)
    examples = batches = in_tok = tgt_tok = 0
    t0 = time.perf_counter()
    while batches < spec["steady_batches"] and (
            batches < 1 or time.perf_counter() - t0 < spec["max_steady_s"]):
        b = next(reader)
        examples += count_segments(b["encoder_segment_ids"])
        in_tok += int(np.count_nonzero(b["encoder_input_tokens"]))
        tgt_tok += int(np.count_nonzero(b["decoder_target_tokens"]))
        batches += 1
    seconds = time.perf_counter() - t0
    reader.close()
    rows = batches * cfg.batch_size
    lengths = cfg.task_feature_lengths
    return {"build_s": build_s, "first_batch_s": first, "batches": batches,
            "seconds": seconds, "examples": examples, "examples_per_s": examples / seconds,
            "examples_per_row": examples / rows,
            "inputs_efficiency": in_tok / (rows * lengths["inputs"]),
            "targets_efficiency": tgt_tok / (rows * lengths["targets"])}


class MemorySampler:
    """Peak memory of this process (VmHWM) and of its children (Grain workers), sampled."""

    def __init__(self, every: float = 0.2):
        import psutil

        self._me, self._every = psutil.Process(), every
        self._child_hwm: dict[int, int] = {}
        self._peak_total = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self._every):
            self.sample()

    def sample(self) -> None:
        total = self._me.memory_info().rss
        for c in self._me.children(recursive=True):
            try:
                total += c.memory_info().rss
                self._child_hwm[c.pid] = max(self._child_hwm.get(c.pid, 0), _hwm(c.pid))
            except (OSError, ValueError):  # (gone between listing and reading)
                continue
        self._peak_total = max(self._peak_total, total)

    def peak(self) -> dict:
        self.sample()
        main = _hwm(os.getpid())
        workers = sum(self._child_hwm.values())
        return {"peak_rss_main_mb": main / 2**20, "peak_rss_workers_mb": workers / 2**20,
                "peak_rss_mb": (main + workers) / 2**20,
                "peak_rss_sampled_total_mb": self._peak_total / 2**20,
                "child_processes": len(self._child_hwm)}

    def stop(self) -> None:
        self._done.set()


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------- report

def goals(runs: list[dict], default: dict | None) -> dict:
    """The issue's goals for the largest JSONL run (Grain) and the default mixture."""
    grain = {r["n"]: r for r in runs if r["kind"] == "jsonl" and r["reader"] == "grain"
             and "examples_per_s" in r}
    out: dict = {}
    if grain:
        big, small = grain[max(grain)], grain[min(grain)]
        out = {"tasks": max(grain), "first_batch_s": big["first_batch_s"],
               "first_batch_ok": big["first_batch_s"] <= 60,
               "peak_rss_mb": big["peak_rss_mb"], "peak_rss_ok": big["peak_rss_mb"] <= 4096,
               "throughput_vs_smallest": big["examples_per_s"] / small["examples_per_s"],
               "throughput_ok": big["examples_per_s"] >= 0.8 * small["examples_per_s"]}
    if default and default["ratio"] is not None:
        out["default_ratio"] = default["ratio"]
        out["default_ratio_ok"] = default["ratio"] >= 2
    return out


def _fmt(r: dict) -> str:
    name = {"jsonl": f"{r['n']} JSONL tasks", "flan2022": f"Flan 2022, {r['n']} names x 4",
            "default": "default mixture"}[r["kind"]]
    if "skipped" in r:
        return f"| {name} | {r['reader']} | skipped ({r['skipped']}) | | | | | | |"
    if "error" in r:
        return f"| {name} | {r['reader']} | error: {r['error'].splitlines()[-1][:80]} | | | | | | |"
    sweep = " / ".join(f"{s['examples_per_s']:,.0f}" for s in r["sweep"])
    reader = r["reader"] + (f" ({r['workers']} w)" if r["reader"] == "grain" else "")
    return (f"| {name} | {reader} | {r['seqio_tasks']:,} | {r['setup_s']:.1f} s | "
            f"{r['first_batch_s']:.1f} s | {r['peak_rss_mb'] / 1024:.2f} GB | "
            f"{r['examples_per_s']:,.0f} | {r['inputs_efficiency']:.1%} / "
            f"{r['targets_efficiency']:.1%} | {sweep} |")


def report(result: dict) -> None:
    runs = result["runs"]
    sweep = next((r["sweep"] for r in runs if r.get("sweep")), [])
    ws = "/".join(str(s["workers"]) for s in sweep)
    print(f"Readers against task count on {result['machine']} (peak RSS: main + workers' "
          "VmHWM; ex/s: packed segments per second)\n")
    print(f"| configuration | reader | seqio Tasks | setup | first batch | peak RSS | ex/s "
          f"| inputs / targets eff | ex/s at workers {ws} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(_fmt(r))
    g = result["goals"]
    if "tasks" in g:
        print(f"\nat {g['tasks']} tasks (grain): first batch {g['first_batch_s']:.1f} s "
              f"({'ok' if g['first_batch_ok'] else 'over'} <= 60 s), peak RSS "
              f"{g['peak_rss_mb'] / 1024:.2f} GB ({'ok' if g['peak_rss_ok'] else 'over'} "
              f"<= 4 GB), throughput {g['throughput_vs_smallest']:.2f}x the smallest run's "
              f"({'ok' if g['throughput_ok'] else 'short of'} >= 0.8x)")
    d = result["default_mixture"]
    if d is not None:
        ratio = f"{d['ratio']:.2f}x" if d["ratio"] is not None else "n/a"
        print(f"default mixture, grain (2 workers) / seqio packed examples/s: {ratio}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit("run bench/data_pipeline.py --tasks N ... (this module is its scaling mode)")
