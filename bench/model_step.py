"""Forward+backward throughput of the flan-jax T5 vs Hugging Face PyTorch T5, and MFU.

One run measures, on the same shapes and this machine: the matmul peak (the best of a few
large f32/bf16 matmuls in JAX), flan-jax's jitted loss+gradient step, and transformers'
`T5ForConditionalGeneration` forward + `loss.backward()`. It prints tokens/s for both, their
ratio, and flan-jax's MFU (analytic model FLOPs / step time / measured peak).

    python bench/model_step.py                      # T5 1.1-small, batch 8, 512 / 128
    python bench/model_step.py --model tiny --batch 4 --inputs 64 --targets 16 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1-small", help="flan-jax preset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=512, help="encoder length")
    p.add_argument("--targets", type=int, default=128, help="decoder length")
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype (params stay f32)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face PyTorch peer")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


from flan_jax.train.metrics import median_seconds  # noqa: E402

_time = median_seconds  # (re-exported: attention.py, train_step.py)


def matmul_peak(dtype: str) -> float:
    """Best FLOP/s of square matmuls in JAX: the machine's practical ceiling for MFU."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for n in (1024, 2048, 3072):
        a = jnp.ones((n, n), dtype)
        b = jnp.ones((n, n), dtype)
        f = jax.jit(lambda a, b: a @ b)
        t = _time(lambda: f(a, b).block_until_ready(), steps=5, warmup=2)
        best = max(best, 2 * n**3 / t)
    return best


def loss_and_grad_step(cfg, batch: int, inputs: int, targets: int):
    """(jitted step, params): value_and_grad of the mean token cross entropy over random
    tokens, the forward + backward work the benchmarks time. Call it as `step(params)`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from flan_jax.model import create_model
    from flan_jax.model.losses import mean_cross_entropy

    graphdef, state = nnx.split(create_model(cfg, seed=0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, inputs)), jnp.int32)
    y = jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, targets)), jnp.int32)
    dec_in = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)

    @jax.jit
    def step(state):
        def loss_fn(state):
            logits = nnx.merge(graphdef, state)(x, dec_in)
            return mean_cross_entropy(logits, y, jnp.ones_like(y))
        return jax.value_and_grad(loss_fn)(state)

    return step, state


def flan_jax_step(args, cfg) -> float:
    import jax

    step, state = loss_and_grad_step(cfg, args.batch, args.inputs, args.targets)
    return _time(lambda: jax.block_until_ready(step(state)), args.steps, args.warmup)


def hf_config(cfg):
    """The transformers T5Config of the same shapes as a flan-jax T5Config, dropout off."""
    import transformers

    return transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, num_heads=cfg.num_heads,
        d_ff=cfg.d_ff, num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
        feed_forward_proj=cfg.feed_forward, tie_word_embeddings=cfg.tie_embeddings,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def hf_step(args, cfg) -> float:
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.T5ForConditionalGeneration(hf_config(cfg)).train()
    if not cfg.tie_embeddings:  # same work as ours: a separate lm_head
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * 0.03)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    x = torch.randint(2, cfg.vocab_size, (args.batch, args.inputs))
    y = torch.randint(2, cfg.vocab_size, (args.batch, args.targets))

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=x, labels=y).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return _time(step, args.steps, args.warmup)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from flan_jax.model import get_config
    from flan_jax.model.flops import train_flops

    cfg = get_config(args.model, dtype=args.dtype, dropout_rate=0.0)
    tokens = args.batch * (args.inputs + args.targets)
    flops = train_flops(cfg, args.batch, args.inputs, args.targets)
    peak = matmul_peak(args.dtype)
    ours = flan_jax_step(args, cfg)
    hf = None if args.no_hf else hf_step(args, cfg)

    result = {
        "model": args.model, "batch": args.batch, "inputs": args.inputs,
        "targets": args.targets, "dtype": args.dtype,
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} "
                  f"({platform.machine()}, {os.cpu_count()} cpus)",
        "jax": jax.__version__,
        "matmul_peak_gflops": peak / 1e9,
        "step_flops": flops,
        "flan_jax_step_s": ours,
        "flan_jax_tokens_per_s": tokens / ours,
        "flan_jax_mfu": flops / ours / peak,
    }
    if hf is not None:
        import torch
        result.update({"torch": torch.__version__, "hf_step_s": hf,
                       "hf_tokens_per_s": tokens / hf, "hf_mfu": flops / hf / peak,
                       "speedup_vs_hf": hf / ours})

    print(f"{args.model}  batch {args.batch}  {args.inputs} inputs / {args.targets} targets  "
          f"{args.dtype}  fwd+bwd  on {result['device']}, jax {result['jax']}")
    print(f"  measured matmul peak   {peak / 1e9:9.1f} GFLOP/s")
    print(f"  model FLOPs per step   {flops / 1e9:9.1f} GFLOP")
    print(f"  flan-jax               {tokens / ours:9.1f} tokens/s   {ours:7.3f} s/step   "
          f"MFU {result['flan_jax_mfu']:.1%}")
    if hf is not None:
        print(f"  HF PyTorch {result['torch']:<10}  {tokens / hf:9.1f} tokens/s   {hf:7.3f} s/step   "
              f"MFU {result['hf_mfu']:.1%}")
        print(f"  flan-jax / HF          {result['speedup_vs_hf']:9.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
