"""T5 attention: the Pallas flash kernel vs XLA with the dense bias vs jax.nn (cuDNN).

For each sequence length (self-attention, lq = lk) it times the forward and forward+backward
(median of jitted calls) and reports the compiled memory of forward+backward (XLA's memory
analysis: temporaries + outputs; arguments excluded) for:

  pallas  flan_jax.kernels flash attention with T5's relative position bias (per-offset vector)
  xla     flan-jax's reference: dense [b, h, l, l] bias + mask, f32 softmax
  jax.nn  jax.nn.dot_product_attention(implementation="cudnn") on GPU, without T5's bias
          (cuDNN takes no bucketed bias), so it is a lower bound rather than a peer

`--model-step PRESET` also times a whole train step (loss + gradients) of that T5 with the xla
and the pallas attention backend and reports MFU against a measured matmul peak.

    python bench/attention.py                                      # GPU: 512 .. 16k, bf16
    python bench/attention.py --model-step t5_1_1-large --batch 8 --inputs 2048 --targets 512
    python bench/attention.py --interpret --lengths 64 128 --heads 2   # CPU smoke (not timing)
    python bench/attention.py --tpu-topology v5e:2x2 --peers pallas xla  # TPU memory, no TPU

`--tpu-topology` compiles ahead of time for a TPU that is not here (libtpu installed, or
TPU_LIBRARY_PATH set; JAX_PLATFORMS unset) and reports the compiler's memory figures only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import _time, loss_and_grad_step, matmul_peak  # noqa: E402  (bench/ is not a package)

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16, help="default: T5 1.1-large's 16")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--causal", action="store_true",
                   help="decoder self-attention (causal bias) instead of the encoder's")
    p.add_argument("--peers", nargs="+", default=["pallas", "xla", "jax.nn"],
                   choices=("pallas", "xla", "jax.nn"))
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-k", type=int, default=128)
    p.add_argument("--interpret", action="store_true",
                   help="run the kernel in Pallas interpret mode (CPU; smoke test, not timing)")
    p.add_argument("--steps", type=int, default=5, help="timed calls after warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model-step", metavar="PRESET",
                   help="also time a train step of this preset (e.g. t5_1_1-large)")
    p.add_argument("--inputs", type=int, default=2048, help="model step: encoder length")
    p.add_argument("--targets", type=int, default=512, help="model step: decoder length")
    p.add_argument("--step-batch", type=int, default=8, help="model step: batch")
    p.add_argument("--peak-tflops", type=float,
                   help="MFU denominator; default: the best matmul rate measured here")
    p.add_argument("--tpu-topology", metavar="TOPOLOGY",
                   help="compile only, for this TPU topology (e.g. v5e:2x2; needs libtpu, no "
                        "TPU): report compiled memory per length, no times")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.tpu_topology and (args.interpret or args.model_step):
        p.error("--tpu-topology compiles the attention peers only (no --interpret, "
                "--model-step)")
    return args


def _memory_mib(jitted, *args) -> float | None:
    """Compiled temporaries + outputs of `jitted(*args)`, MiB (None where XLA can't say)."""
    try:
        stats = jitted.lower(*args).compile().memory_analysis()
        return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 (some backends have no memory analysis)
        return None


def attention_fns(args, peer: str, length: int):
    """(forward, loss+grads, inputs) for one peer at one length."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from flan_jax.kernels import flash_attention
    from flan_jax.model import get_config
    from flan_jax.model.attention import (dot_product_attention, prepare_attention,
                                          relative_bias_vector)
    from flan_jax.model.layers import RelativePositionBias

    b, h, d = args.batch, args.heads, args.head_dim
    rng = np.random.default_rng(length)
    q, k, v = (jnp.asarray(rng.normal(size=(b, length, h, d)) * 0.3, args.dtype)
               for _ in range(3))
    cfg = get_config("tiny", num_heads=h)
    relpos = RelativePositionBias(cfg, bidirectional=not args.causal, rngs=nnx.Rngs(0))
    graphdef, table = nnx.split(relpos)
    seg = jnp.ones((b, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    masks = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos,
                 causal=args.causal)

    if peer == "pallas":
        mode = "interpret" if args.interpret else (
            "triton" if jax.default_backend() == "gpu" and not args.tpu_topology
            else "mosaic_tpu")

        def attend(q, k, v, table):
            vec = relative_bias_vector(nnx.merge(graphdef, table))
            return flash_attention(q, k, v, **masks, bias=vec, max_distance=relpos.max_distance,
                                   block_q=args.block_q, block_k=args.block_k, mode=mode)
    elif peer == "xla":
        def attend(q, k, v, table):
            inputs = prepare_attention(**masks, relpos=nnx.merge(graphdef, table), backend="xla")
            return dot_product_attention(q, k, v, inputs)
    else:  # jax.nn: cuDNN on GPU (no T5 bias), XLA elsewhere
        impl = "cudnn" if jax.default_backend() == "gpu" else None

        def attend(q, k, v, table):
            return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=args.causal,
                                                implementation=impl)

    def loss(q, k, v, table):
        return jnp.sum(attend(q, k, v, table).astype(jnp.float32))

    fwd = jax.jit(attend)
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    return fwd, fwd_bwd, (q, k, v, table)


def _on_topology(args, inputs):
    """Abstract copies of `inputs` placed on the first device of a compile-only topology."""
    import jax
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    device = topologies.get_topology_desc(args.tpu_topology, "tpu").devices[0]
    return device, jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=SingleDeviceSharding(device)), inputs)


def _compiled_mib(jitted, *args) -> float:
    """Like _memory_mib, for a lowering to a compile-only TPU topology."""
    stats = jitted.trace(*args).lower(lowering_platforms=("tpu",)).compile().memory_analysis()
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20


def bench_attention(args) -> list[dict]:
    import jax

    rows = []
    for length in args.lengths:
        for peer in args.peers:
            row = {"length": length, "peer": peer}
            try:
                fwd, fwd_bwd, inputs = attention_fns(args, peer, length)
                if args.tpu_topology:
                    device, abstract = _on_topology(args, inputs)
                    row["device"] = device.device_kind
                    row["fwd_bwd_mib"] = _compiled_mib(fwd_bwd, *abstract)
                    rows.append(row)
                    continue
                row["fwd_ms"] = 1e3 * _time(lambda: jax.block_until_ready(fwd(*inputs)),
                                            args.steps, args.warmup)
                row["fwd_bwd_ms"] = 1e3 * _time(lambda: jax.block_until_ready(fwd_bwd(*inputs)),
                                                args.steps, args.warmup)
                row["fwd_bwd_mib"] = _memory_mib(fwd_bwd, *inputs)
            except Exception as e:  # noqa: BLE001 (OOM at long lengths is a result, not a crash)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
    return rows


def bench_model_step(args) -> list[dict]:
    import jax

    from flan_jax.model import get_config
    from flan_jax.model.flops import train_flops

    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(args.dtype)
    kernel = "pallas_interpret" if args.interpret else "pallas"
    rows = []
    for backend in ("xla", kernel):
        cfg = get_config(args.model_step, dtype=args.dtype, dropout_rate=0.0,
                         attention_backend=backend)
        row = {"preset": args.model_step, "backend": backend}
        try:
            b, le, ld = args.step_batch, args.inputs, args.targets
            step, state = loss_and_grad_step(cfg, b, le, ld)
            t = _time(lambda: jax.block_until_ready(step(state)), args.steps, args.warmup)
            flops = train_flops(cfg, b, le, ld)
            row.update(step_s=t, tokens_per_s=b * (le + ld) / t, mfu=flops / t / peak,
                       step_mib=_memory_mib(step, state))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _print_table(rows: list[dict], columns: list[tuple[str, str, object]], keys: int) -> None:
    """A Markdown table; `columns`: (header, format spec with width, cell(row) -> value). A row
    with an "error" prints its first `keys` cells and the error."""
    aligns = [re.match(r"([<>]?)(\d*)", spec).groups() for _, spec, _ in columns]
    widths = [int(w or 0) for _, w in aligns]
    print("| " + " | ".join(format(h, a + str(w)) for (h, _, _), (a, w)
                            in zip(columns, aligns)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [format(cell(r), spec) for _, spec, cell in
                 (columns[:keys] if "error" in r else columns)]
        print("| " + " | ".join(cells + [r["error"]] if "error" in r else cells)
              + ("" if "error" in r else " |"))


def _ratio(num, den, spec: str) -> str:
    return f"{num / den:{spec}}x" if num and den else "-"


def _report_compiled(args, device: str, rows: list[dict]) -> dict:
    kernel = {r["length"]: r.get("fwd_bwd_mib") for r in rows if r["peer"] == "pallas"}
    _print_table(rows, [
        ("length", ">6", lambda r: r["length"]), ("peer", "<7", lambda r: r["peer"]),
        ("fwd+bwd MiB", ">11.1f", lambda r: r["fwd_bwd_mib"]),
        ("peer / pallas", ">13",
         lambda r: _ratio(r["fwd_bwd_mib"], kernel.get(r["length"]), ".1f"))], keys=2)
    result = {"device": device, "args": vars(args), "attention": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    if args.interpret and jax.default_backend() != "cpu":
        print("note: --interpret on an accelerator times the interpreter, not the kernel")
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    if args.tpu_topology:
        device = f"TPU topology {args.tpu_topology} (compile only), jax {jax.__version__}"
    kind = "decoder self (causal)" if args.causal else "encoder self (bidirectional)"
    print(f"attention: {kind}, batch {args.batch}, {args.heads} heads x {args.head_dim}, "
          f"{args.dtype}, blocks {args.block_q}/{args.block_k}, on {device}")
    if args.interpret:
        print("kernel in Pallas interpret mode: these times are not performance figures")
    rows = bench_attention(args)
    if args.tpu_topology:
        return _report_compiled(args, device, rows)
    xla_time = {r["length"]: r.get("fwd_bwd_ms") for r in rows if r["peer"] == "xla"}
    _print_table(rows, [
        ("length", ">6", lambda r: r["length"]), ("peer", "<7", lambda r: r["peer"]),
        ("fwd ms", ">9.3f", lambda r: r["fwd_ms"]),
        ("fwd+bwd ms", ">10.3f", lambda r: r["fwd_bwd_ms"]),
        ("fwd+bwd MiB", ">11", lambda r: _fmt(r["fwd_bwd_mib"], ".1f")),
        ("xla / peer", ">14", lambda r: _ratio(xla_time.get(r["length"]), r["fwd_bwd_ms"],
                                               ".2f"))], keys=2)
    result = {"device": device, "args": vars(args), "attention": rows}
    if args.model_step:
        steps = bench_model_step(args)
        print(f"\ntrain step: {args.model_step}, batch {args.step_batch}, "
              f"{args.inputs} inputs / {args.targets} targets, {args.dtype}")
        _print_table(steps, [
            ("backend", "<16", lambda r: r["backend"]), ("step s", ">8.3f", lambda r: r["step_s"]),
            ("tokens/s", ">10.0f", lambda r: r["tokens_per_s"]),
            ("MFU", ">6.1%", lambda r: r["mfu"]),
            ("step MiB", ">10", lambda r: _fmt(r["step_mib"], ".1f"))], keys=1)
        result["model_step"] = steps
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
