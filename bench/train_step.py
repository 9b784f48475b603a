"""The whole train step (fwd + bwd + Adafactor update): flan-jax vs Hugging Face PyTorch, MFU.

One run measures, on this machine: the matmul peak (`model_step.matmul_peak`), flan-jax's
jitted `flan_jax.train.step.train_step` (the function `flan-jax train` runs, Adafactor as
t5x configures it, z-loss on), and transformers' `T5ForConditionalGeneration` forward +
backward + `transformers.optimization.Adafactor` step with the same settings. It prints
tokens/s of both, their ratio and flan-jax's MFU; then flan-jax's step time and peak memory
(XLA's memory analysis of the compiled step: arguments + outputs + temporaries, less donated
buffers) against model size and against sequence length.

    python bench/train_step.py                       # T5 1.1-small, batch 8, 512 / 128
    python bench/train_step.py --sizes tiny t5_1_1-small t5_1_1-base --lengths 128 512 2048
    python bench/train_step.py --model tiny --batch 2 --inputs 32 --targets 8 --steps 1 \\
        --sizes tiny --lengths 32 64                 # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import _time, hf_config, matmul_peak  # noqa: E402  (bench/ is not a package)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1-small", help="flan-jax preset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=512, help="encoder length")
    p.add_argument("--targets", type=int, default=128, help="decoder length")
    p.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype (params stay f32)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face PyTorch peer")
    p.add_argument("--sizes", nargs="*", default=["tiny", "t5_1_1-small", "t5_1_1-base"],
                   help="presets for the size sweep at --batch/--inputs/--targets "
                        "(default: %(default)s; none: skip)")
    p.add_argument("--lengths", nargs="*", type=int, default=[128, 256, 512, 1024, 2048],
                   help="encoder lengths for the length sweep of --model at batch "
                        "--sweep-batch, targets = length / 4 (default: %(default)s)")
    p.add_argument("--sweep-batch", type=int, default=1)
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def _batch(cfg, batch: int, inputs: int, targets: int):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(2, cfg.vocab_size, (batch, inputs))
    y = rng.integers(2, cfg.vocab_size, (batch, targets))
    dec_in = np.concatenate([np.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    return {"encoder_input_tokens": jnp.asarray(x, jnp.int32),
            "decoder_input_tokens": jnp.asarray(dec_in, jnp.int32),
            "decoder_target_tokens": jnp.asarray(y, jnp.int32),
            "decoder_loss_weights": jnp.ones((batch, targets), jnp.int32)}


def flan_jax_train_step(cfg, batch: int, inputs: int, targets: int, steps: int,
                        warmup: int) -> tuple[float, int, int]:
    """(median seconds per step, peak bytes, parameters) of the jitted train step, the
    state donated as `flan-jax train` does."""
    import jax
    from flax import nnx

    from flan_jax.model import create_model, param_axes, params_of
    from flan_jax.train.optim import learning_rate_schedule, make_optimizer
    from flan_jax.train.step import LossConfig, init_state, train_step

    model = create_model(cfg, seed=0)
    graphdef, params = nnx.graphdef(model), params_of(model)
    optimizer = make_optimizer("adafactor", schedule=learning_rate_schedule(
        "constant", learning_rate=1e-3), param_axes=param_axes(model))
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                                     loss_cfg=LossConfig(z_loss=1e-4)), donate_argnums=0)
    data = _batch(cfg, batch, inputs, targets)
    state = init_state(params, optimizer)
    compiled = step.lower(state, data).compile()
    peak = _peak_bytes(compiled)
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], data)
        jax.block_until_ready(metrics)

    n_params = sum(x.size for x in jax.tree.leaves(params))
    return _time(run, steps, warmup), peak, n_params


def _peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:  # some backends don't report
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def hf_train_step(args, cfg) -> float:
    import torch
    import transformers
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.T5ForConditionalGeneration(hf_config(cfg)).train()
    if not cfg.tie_embeddings:  # same work as ours: a separate lm_head
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * 0.03)
    # t5x's Adafactor: factored, decay 0.8, update clipping 1.0, parameter-scaled, no momentum.
    opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=True,
                    warmup_init=False, decay_rate=-0.8, clip_threshold=1.0, beta1=None)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    x = torch.randint(2, cfg.vocab_size, (args.batch, args.inputs))
    y = torch.randint(2, cfg.vocab_size, (args.batch, args.targets))

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, args.steps, args.warmup)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from flan_jax.model import get_config
    from flan_jax.model.flops import train_flops

    def config(name):
        return get_config(name, dtype=args.dtype, dropout_rate=0.0)

    cfg = config(args.model)
    tokens = args.batch * (args.inputs + args.targets)
    flops = train_flops(cfg, args.batch, args.inputs, args.targets)
    peak = matmul_peak(args.dtype)
    ours, mem, _ = flan_jax_train_step(cfg, args.batch, args.inputs, args.targets, args.steps,
                                    args.warmup)
    result = {
        "model": args.model, "batch": args.batch, "inputs": args.inputs,
        "targets": args.targets, "dtype": args.dtype, "optimizer": "adafactor",
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} "
                  f"({platform.machine()}, {os.cpu_count()} cpus)",
        "jax": jax.__version__, "matmul_peak_gflops": peak / 1e9, "step_flops": flops,
        "flan_jax_step_s": ours, "flan_jax_tokens_per_s": tokens / ours,
        "flan_jax_mfu": flops / ours / peak, "flan_jax_peak_bytes": mem,
    }
    print(f"{args.model}  batch {args.batch}  {args.inputs} inputs / {args.targets} targets  "
          f"{args.dtype}  train step (fwd + bwd + Adafactor)  on {result['device']}, "
          f"jax {result['jax']}")
    print(f"  measured matmul peak   {peak / 1e9:9.1f} GFLOP/s")
    print(f"  model FLOPs per step   {flops / 1e9:9.1f} GFLOP")
    print(f"  flan-jax               {tokens / ours:9.1f} tokens/s   {ours:7.3f} s/step   "
          f"MFU {result['flan_jax_mfu']:.1%}   peak {mem / 2**20:,.0f} MiB")
    if not args.no_hf:
        import torch
        hf = hf_train_step(args, cfg)
        result.update({"torch": torch.__version__, "hf_step_s": hf,
                       "hf_tokens_per_s": tokens / hf, "hf_mfu": flops / hf / peak,
                       "speedup_vs_hf": hf / ours})
        print(f"  HF PyTorch {result['torch']:<10}  {tokens / hf:9.1f} tokens/s   {hf:7.3f} "
              f"s/step   MFU {result['hf_mfu']:.1%}")
        print(f"  flan-jax / HF          {result['speedup_vs_hf']:9.2f}x")

    result["sizes"] = []
    if args.sizes:
        print(f"\nflan-jax vs model size (batch {args.batch}, {args.inputs} / {args.targets})")
        print(f"  {'model':<16} {'params':>10} {'s/step':>9} {'tokens/s':>10} {'MFU':>7} "
              f"{'peak MiB':>10}")
    for name in args.sizes:
        c = config(name)
        t, m, n_params = flan_jax_train_step(c, args.batch, args.inputs, args.targets, 1, 1)
        f = train_flops(c, args.batch, args.inputs, args.targets)
        row = {"model": name, "params": n_params, "step_s": t, "tokens_per_s": tokens / t,
               "mfu": f / t / peak, "peak_bytes": m}
        result["sizes"].append(row)
        print(f"  {name:<16} {row['params'] / 1e6:9.1f}M {t:9.3f} {tokens / t:10.1f} "
              f"{row['mfu']:7.1%} {m / 2**20:10,.0f}")

    result["lengths"] = []
    if args.lengths:
        print(f"\nflan-jax {args.model} vs sequence length (batch {args.sweep_batch}, "
              "targets = inputs / 4)")
        print(f"  {'inputs':>7} {'targets':>8} {'s/step':>9} {'tokens/s':>10} {'MFU':>7} "
              f"{'peak MiB':>10}")
    for length in args.lengths:
        tl = max(length // 4, 1)
        t, m, _ = flan_jax_train_step(cfg, args.sweep_batch, length, tl, 1, 1)
        f = train_flops(cfg, args.sweep_batch, length, tl)
        n = args.sweep_batch * (length + tl)
        row = {"inputs": length, "targets": tl, "step_s": t, "tokens_per_s": n / t,
               "mfu": f / t / peak, "peak_bytes": m}
        result["lengths"].append(row)
        print(f"  {length:>7} {tl:>8} {t:9.3f} {n / t:10.1f} {row['mfu']:7.1%} "
              f"{m / 2**20:10,.0f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
