"""Throughput of the default training mixture through seqio: packed, unpacked, and raw Python.

One run measures, on this machine: the packed pipeline a trainer reads
(`seqio.get_dataset(mixtures.default.TRAIN_MIXTURE, ..., EncDecFeatureConverter(pack=True))`,
batched like `flan_jax.train.data.batches`), the same pipeline unpacked (pack=False) over
about as many source examples, and the Python work alone (FlanRenderer over the synthetic
source, then SentencePiece in Python; no tf.data). It prints startup time, examples/s,
non-padding tokens/s, packing efficiency, and the ratios between the three.

    python bench/data_pipeline.py                    # batch 32 packed rows, 512 / 128
    python bench/data_pipeline.py --batch-size 8 --step-seconds 10.7   # vs a train step
    python bench/data_pipeline.py --quick --json /tmp/data.json

Scaling mode (`bench/data_scale.py`): both readers (Grain, seqio) over N synthetic JSONL
tasks and a Flan-2022-layout parquet, each in a fresh process (setup, first batch, peak RSS
with workers, steady examples/s, examples/s against Grain workers), then the default mixture
through both (grain / seqio ratio):

    python bench/data_pipeline.py --tasks 10 100 1000 2000 --flan2022 1800 --json /tmp/s.json
    python bench/data_pipeline.py --tasks 3 --flan2022 2 --quick     # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

# Run as a script, the repository root is not on sys.path (bench/ is).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # (data_scale, also when imported)

QUICK_TASK = "synth_arithmetic:fs_noopt"  # one few-shot task: the heaviest Python path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixture", default=None,
                   help="seqio mixture or task (default: mixtures.default.TRAIN_MIXTURE; "
                        f"--quick: {QUICK_TASK})")
    p.add_argument("--batches", type=int, default=None,
                   help="timed packed batches after warm-up (default 150; --quick: 3)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch (default 32, the trainer's; --quick: 4)")
    p.add_argument("--inputs-length", type=int, default=512)
    p.add_argument("--targets-length", type=int, default=128)
    p.add_argument("--warmup-examples", type=int, default=None,
                   help="source examples read after the first batch and before timing, so "
                        "that every task of the mixture has started (default 2000; --quick: 0)")
    p.add_argument("--render-examples", type=int, default=None,
                   help="examples rendered by the Python peer (default 20000; --quick: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-seconds", type=float, default=None,
                   help="a train step's time at this batch size: also report the headroom")
    p.add_argument("--no-unpacked", action="store_true", help="skip the pack=False peer")
    p.add_argument("--quick", action="store_true",
                   help="a tiny smoke run for tests: one task, few small batches")
    p.add_argument("--json", help="also write the results to this JSON file")
    s = p.add_argument_group("scaling mode (either of --tasks / --flan2022)")
    s.add_argument("--tasks", type=int, nargs="+", metavar="N",
                   help="synthetic JSONL tasks (x3 formats) per configuration")
    s.add_argument("--flan2022", type=int, metavar="NAMES",
                   help="a Flan 2022 parquet of NAMES task names x 4 template types")
    s.add_argument("--seqio-max-tasks", type=int, default=160,
                   help="skip the seqio reader above this many task names (default 160)")
    s.add_argument("--timeout", type=int, default=900,
                   help="seconds per configuration's process (default 900)")
    s.add_argument("--workers", type=int, default=2, help="Grain workers of the main run")
    s.add_argument("--worker-sweep", type=int, nargs="+", default=[0, 1, 2, 4],
                   help="Grain worker counts for examples/s vs workers (--quick: 0 1)")
    s.add_argument("--scale-batches", type=int, default=100,
                   help="timed batches per run (--quick: 3)")
    s.add_argument("--scale-warmup-batches", type=int, default=10)
    s.add_argument("--max-steady-s", type=float, default=60.0,
                   help="stop timing a run after this long (slow seqio runs)")
    s.add_argument("--no-default-mixture", action="store_true",
                   help="skip the default mixture through both readers")
    args = p.parse_args(argv)
    for name, full, quick in (("batches", 150, 3), ("batch_size", 32, 4),
                              ("warmup_examples", 2000, 0), ("render_examples", 20000, 200)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("batches", "batch_size", "render_examples", "inputs_length", "targets_length"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tasks or args.flan2022:
        from data_scale import run_scale
        result = run_scale(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    t0 = time.perf_counter()
    from flan_jax.quiet import import_tensorflow, silenced_stderr
    import_tensorflow()  # sets TF_CPP_MIN_LOG_LEVEL=2 and hides TF's start-up banner
    import absl.logging
    import seqio
    import tensorflow as tf

    import mixtures.default

    with silenced_stderr():  # a data benchmark: leave any GPU alone (no cuInit line)
        tf.config.set_visible_devices([], "GPU")
    # seqio warns once per Task and pipeline that FunctionDataSources are uncached (98 lines).
    absl.logging.set_verbosity(absl.logging.ERROR)
    args.mixture = args.mixture or (QUICK_TASK if args.quick else mixtures.default.TRAIN_MIXTURE)
    import_s = time.perf_counter() - t0

    packed = measure_pipeline(args, pack=True, batches=args.batches)
    unpacked = None
    if not args.no_unpacked:  # about as many source examples as the packed run read
        unpacked = measure_pipeline(args, pack=False,
                                    batches=max(1, math.ceil(packed["examples"] / args.batch_size)))
    python = measure_python(args)

    result = {
        "mixture": args.mixture, "batch_size": args.batch_size,
        "inputs_length": args.inputs_length, "targets_length": args.targets_length,
        "seed": args.seed, "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "seqio": getattr(seqio, "__version__", "?"),
        "import_s": import_s, "packed": packed, "unpacked": unpacked, "python_render": python,
        "packed_vs_python_examples": packed["examples_per_s"] / python["examples_per_s"],
    }
    if unpacked is not None:
        result["packed_vs_unpacked_tokens"] = packed["tokens_per_s"] / unpacked["tokens_per_s"]
        result["packed_vs_unpacked_examples"] = (packed["examples_per_s"]
                                                 / unpacked["examples_per_s"])
        # What a train step sees: real tokens per row of the same shape.
        result["packed_vs_unpacked_tokens_per_row"] = (packed["efficiency"]
                                                       / unpacked["efficiency"])
    if args.step_seconds:
        need = args.batch_size / args.step_seconds
        result["train_step"] = {"seconds": args.step_seconds, "rows_per_s_needed": need,
                                "headroom": packed["rows_per_s"] / need}
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def pipeline(args, *, pack: bool):
    """The trainer's dataset (as flan_jax.train.data.batches builds it, one host)."""
    import seqio
    import tensorflow as tf

    ds = seqio.get_dataset(
        args.mixture,
        task_feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length},
        dataset_split="train", shuffle=True, seed=args.seed, num_epochs=None,
        feature_converter=seqio.EncDecFeatureConverter(pack=pack), use_cached=False)
    return ds.batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def count_segments(segment_ids) -> int:
    """Source examples in packed rows: each run of one nonzero segment id is one example."""
    import numpy as np

    seg = np.asarray(segment_ids)  # [rows, length]
    starts = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0)
    return int(starts.sum() + (seg[:, 0] > 0).sum())


def measure_pipeline(args, *, pack: bool, batches: int) -> dict:
    """Startup (build + first batch), warm-up, then the steady rates over `batches` batches."""
    from tqdm import tqdm

    def counts(b) -> tuple[int, int, int]:
        inputs, targets = b["encoder_input_tokens"], b["decoder_target_tokens"]
        examples = (count_segments(b["encoder_segment_ids"]) if pack
                    else int((targets[:, 0] > 0).sum()))  # unpacked: one example a row
        return examples, int((inputs > 0).sum()), int((targets > 0).sum())

    name = "packed" if pack else "unpacked"
    t0 = time.perf_counter()
    it = pipeline(args, pack=pack).as_numpy_iterator()
    next(it)
    startup = time.perf_counter() - t0

    # Tasks start (trace, fill their shuffle buffer) when the sampler first picks them.
    t0, seen = time.perf_counter(), 0
    with tqdm(total=args.warmup_examples, desc=f"{name} warm-up", unit="ex", file=sys.stderr,
              leave=False, mininterval=2.0, disable=not args.warmup_examples) as bar:
        while seen < args.warmup_examples:
            n = counts(next(it))[0]
            seen += n
            bar.update(n)
    warmup = time.perf_counter() - t0

    examples = in_tokens = tgt_tokens = 0
    t0 = time.perf_counter()
    for _ in tqdm(range(batches), desc=name, unit="batch", file=sys.stderr, leave=False,
                  mininterval=2.0):
        e, i, t = counts(next(it))
        examples, in_tokens, tgt_tokens = examples + e, in_tokens + i, tgt_tokens + t
    seconds = time.perf_counter() - t0
    # An iterator over Python-generator sources, left for interpreter exit to tear down,
    # can hang the exit (seen with the 49-task mixture); close it while Python is whole.
    del it
    gc.collect()

    rows = batches * args.batch_size
    in_positions, tgt_positions = rows * args.inputs_length, rows * args.targets_length
    return {
        "startup_s": startup, "warmup_s": warmup, "warmup_examples": seen,
        "batches": batches, "seconds": seconds, "examples": examples,
        "rows_per_s": rows / seconds, "examples_per_s": examples / seconds,
        "examples_per_row": examples / rows,
        "inputs_tokens_per_s": in_tokens / seconds,
        "targets_tokens_per_s": tgt_tokens / seconds,
        "tokens_per_s": (in_tokens + tgt_tokens) / seconds,
        "inputs_efficiency": in_tokens / in_positions,
        "targets_efficiency": tgt_tokens / tgt_positions,
        "efficiency": (in_tokens + tgt_tokens) / (in_positions + tgt_positions),
    }


def measure_python(args) -> dict:
    """The mixture's per-example work in plain Python, no tf.data: render (what the seqio
    sources' generators run), then SentencePiece (what seqio's tokenize does in TF).

    Tasks are drawn by the mixture's rates; each task reads its own raw stream, restarted at
    its end, as each seqio Task does with num_epochs=None. Token counts are trimmed to the
    feature lengths with EOS, like seqio's append_eos_after_trim.
    """
    import seqio

    from flan_jax.data import synthetic
    from flan_jax.data.flan import FlanRenderer
    from flan_jax.data.mixing import split_task_name
    from flan_jax.data.sources import iter_source

    provider = seqio.get_mixture_or_task(args.mixture)
    tasks = list(getattr(provider, "tasks", [provider]))
    rates = [provider.get_rate(t) if hasattr(provider, "get_rate") else 1.0 for t in tasks]
    vocab = tasks[0].output_features["inputs"].vocabulary
    specs = {s.name: s for s in synthetic.specs()}  # as mixtures.default registers them
    clock: Counter = Counter()

    def timed(key: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                clock[key] += time.perf_counter() - t
                clock[key + "_calls"] += 1
        return wrapper

    class Renderer(FlanRenderer):
        """rendered_source's renderer (SentencePiece token counts), with its parts timed."""

        def exemplar_pool(self):
            pool = super().exemplar_pool()
            if pool is not None:
                pool.candidates = timed("exemplar_choice", pool.candidates)
            return pool

    count_tokens = timed("count_tokens", lambda s: len(vocab.encode(s)))

    def stream(name: str) -> Iterator[dict]:
        base, fmt = split_task_name(name)
        renderer = Renderer(specs[base], fmt, count_tokens)
        while True:
            yield from renderer.iterate(iter_source(specs[base].source, "train"))

    # Every stream started (exemplar pool filled) before timing.
    t0 = time.perf_counter()
    streams = {t.name: stream(t.name) for t in tasks}
    for s in streams.values():
        next(s)
    startup = time.perf_counter() - t0
    clock.clear()

    order = random.Random(args.seed).choices([t.name for t in tasks], rates,
                                             k=args.render_examples)
    render_s = tokenize_s = 0.0
    in_tokens = tgt_tokens = 0
    for name in order:
        t = time.perf_counter()
        ex = next(streams[name])
        t2 = time.perf_counter()
        in_tokens += min(len(vocab.encode(ex["inputs"])) + 1, args.inputs_length)
        tgt_tokens += min(len(vocab.encode(ex["targets"])) + 1, args.targets_length)
        tokenize_s += time.perf_counter() - t2
        render_s += t2 - t

    n, total = args.render_examples, render_s + tokenize_s
    return {
        "startup_s": startup, "examples": n,
        "render_s": render_s, "render_examples_per_s": n / render_s,
        "raw_generation_s": _time_raw_generation(order),
        "exemplar_choice_s": clock["exemplar_choice"],
        "fewshot_count_tokens_s": clock["count_tokens"],
        "fewshot_count_tokens_calls": int(clock["count_tokens_calls"]),
        "fewshot_examples": int(clock["exemplar_choice_calls"]),
        "tokenize_s": tokenize_s,
        "examples_per_s": n / total,
        "inputs_tokens_per_s": in_tokens / total,
        "targets_tokens_per_s": tgt_tokens / total,
        "tokens_per_s": (in_tokens + tgt_tokens) / total,
    }


def _time_raw_generation(order: list[str]) -> float:
    """Seconds to draw as many raw examples per family as `order` renders (inside render_s).

    Per task, like the renderers: each format of a family draws its own stream.
    """
    from flan_jax.data import synthetic
    from flan_jax.data.mixing import split_task_name

    t0 = time.perf_counter()
    for name, n in Counter(order).items():
        fam = synthetic.family(split_task_name(name)[0].removeprefix(synthetic.TASK_PREFIX))
        while n > 0:
            for _ in zip(range(n), synthetic.examples(fam, "train")):
                n -= 1
    return time.perf_counter() - t0


def report(r: dict) -> None:
    p, u, py = r["packed"], r["unpacked"], r["python_render"]
    print(f"{r['mixture']}  batch {r['batch_size']}  {r['inputs_length']} inputs / "
          f"{r['targets_length']} targets  on {r['machine']}, tf {r['tensorflow']}")
    print(f"  import (TF, seqio, mixtures)  {r['import_s']:6.1f} s")
    print(f"  {'':24}{'startup':>8}{'warm-up':>8}{'rows/s':>8}{'ex/s':>8}{'in tok/s':>10}"
          f"{'tgt tok/s':>10}{'in eff':>8}{'tgt eff':>8}")
    for name, m in (("packed", p), ("unpacked", u)):
        if m is not None:
            print(f"  {name:24}{m['startup_s']:7.1f}s{m['warmup_s']:7.1f}s{m['rows_per_s']:8.1f}"
                  f"{m['examples_per_s']:8.0f}{m['inputs_tokens_per_s']:10.0f}"
                  f"{m['targets_tokens_per_s']:10.0f}{m['inputs_efficiency']:8.1%}"
                  f"{m['targets_efficiency']:8.1%}")
    print(f"  {'Python render+tokenize':24}{py['startup_s']:7.1f}s{'':16}"
          f"{py['examples_per_s']:8.0f}{py['inputs_tokens_per_s']:10.0f}"
          f"{py['targets_tokens_per_s']:10.0f}")
    print(f"  packed rows hold {p['examples_per_row']:.2f} examples; "
          f"{p['efficiency']:.1%} of all positions are tokens")
    ms = 1e3 / py["examples"]
    print(f"  Python, ms per example: render {py['render_s'] * ms:.3f} (raw generation "
          f"{py['raw_generation_s'] * ms:.3f}, few-shot exemplar choice "
          f"{py['exemplar_choice_s'] * ms:.3f}, few-shot token counting "
          f"{py['fewshot_count_tokens_s'] * ms:.3f}), tokenize {py['tokenize_s'] * ms:.3f}")
    if u is not None:
        print(f"  packed / unpacked      {r['packed_vs_unpacked_tokens']:6.2f}x tokens/s   "
              f"{r['packed_vs_unpacked_examples']:.2f}x examples/s   "
              f"{r['packed_vs_unpacked_tokens_per_row']:.2f}x tokens per row")
    print(f"  packed / Python        {r['packed_vs_python_examples']:6.2f}x examples/s")
    if "train_step" in r:
        s = r["train_step"]
        print(f"  a {s['seconds']:.3g} s train step needs {s['rows_per_s_needed']:.2f} rows/s: "
              f"headroom {s['headroom']:.1f}x")


if __name__ == "__main__":
    main()
    sys.exit(0)
