"""bench/model_step.py runs end to end on tiny shapes (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_step_benchmark_reports_both_peers_and_mfu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_step.py"), "--model", "tiny", "--batch", "2",
         "--inputs", "32", "--targets", "8", "--steps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "flan-jax / HF" in proc.stdout and "MFU" in proc.stdout
    result = json.loads(out.read_text())
    for key in ("matmul_peak_gflops", "flan_jax_tokens_per_s", "hf_tokens_per_s",
                "speedup_vs_hf", "flan_jax_mfu"):
        assert result[key] > 0, key
    assert result["step_flops"] > 0 and result["inputs"] == 32


def test_train_step_benchmark_reports_peer_mfu_and_sweeps(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_step.py"), "--model", "tiny", "--batch", "2",
         "--inputs", "32", "--targets", "8", "--steps", "1", "--sizes", "tiny",
         "--lengths", "32", "64", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "flan-jax / HF" in proc.stdout and "vs sequence length" in proc.stdout
    result = json.loads(out.read_text())
    for key in ("matmul_peak_gflops", "flan_jax_tokens_per_s", "hf_tokens_per_s",
                "speedup_vs_hf", "flan_jax_mfu", "flan_jax_peak_bytes"):
        assert result[key] > 0, key
    assert [r["model"] for r in result["sizes"]] == ["tiny"]
    assert result["sizes"][0]["params"] > 0 and result["sizes"][0]["peak_bytes"] > 0
    lengths = result["lengths"]
    assert [(r["inputs"], r["targets"]) for r in lengths] == [(32, 8), (64, 16)]
    # XLA's memory analysis of a longer sequence can't need less memory.
    assert lengths[1]["peak_bytes"] >= lengths[0]["peak_bytes"] > 0


def test_data_pipeline_benchmark_reports_packed_unpacked_and_python(tmp_path):
    out = tmp_path / "data.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "data_pipeline.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "packed / unpacked" in proc.stdout and "packed / Python" in proc.stdout
    result = json.loads(out.read_text())
    for peer in ("packed", "unpacked"):
        m = result[peer]
        for key in ("startup_s", "examples_per_s", "inputs_tokens_per_s", "targets_tokens_per_s"):
            assert m[key] > 0, (peer, key)
        for key in ("inputs_efficiency", "targets_efficiency", "efficiency"):
            assert 0 < m[key] <= 1, (peer, key, m[key])
    assert result["packed"]["examples_per_row"] >= 1  # packing put >= 1 example in each row
    assert result["unpacked"]["examples_per_row"] == 1
    assert result["python_render"]["examples_per_s"] > 0
    assert result["packed_vs_unpacked_tokens"] > 0 and result["packed_vs_python_examples"] > 0


def test_data_pipeline_counts_one_example_per_segment():
    import numpy as np

    bench = _bench_module("data_pipeline")
    segments = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert bench.count_segments(segments) == 2 + 3 + 1


def test_data_pipeline_scale_mode_reports_both_readers_per_configuration(tmp_path):
    """--tasks / --flan2022: a row per (configuration, reader), the seqio cap, the sweep."""
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "data_pipeline.py"), "--quick", "--tasks", "3",
         "--flan2022", "2", "--seqio-max-tasks", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| 3 JSONL tasks | seqio | skipped (> cap (2))" in proc.stdout
    assert "grain (2 workers) / seqio" in proc.stdout
    result = json.loads(out.read_text())
    runs = {(r["kind"], r["reader"]): r for r in result["runs"]}
    assert set(runs) == {(k, r) for k in ("jsonl", "flan2022", "default")
                         for r in ("grain", "seqio")}
    assert "skipped" in runs["jsonl", "seqio"]
    measured = [r for r in runs.values() if "skipped" not in r]
    for r in measured:
        assert "error" not in r, r
        for key in ("setup_s", "first_batch_s", "examples_per_s", "peak_rss_main_mb"):
            assert r[key] > 0, (r["kind"], r["reader"], key)
        assert r["peak_rss_mb"] >= r["peak_rss_main_mb"]
        assert r["examples_per_row"] >= 1
        for key in ("inputs_efficiency", "targets_efficiency"):
            assert 0 < r[key] <= 1, (r["kind"], r["reader"], key)
    assert runs["jsonl", "grain"]["seqio_tasks"] == 3 * 3  # zs_noopt, fs_noopt, inv
    assert runs["flan2022", "grain"]["seqio_tasks"] == 2 * 4  # names x template types
    assert runs["flan2022", "grain"]["prepare_s"] > 0
    grain = runs["jsonl", "grain"]
    assert grain["peak_rss_workers_mb"] > 0 and grain["child_processes"] >= 2
    assert [s["workers"] for s in grain["sweep"]] == [0, 1]
    assert all(s["examples_per_s"] > 0 for s in grain["sweep"])
    assert runs["jsonl", "seqio"].get("sweep") is None
    assert result["default_mixture"]["ratio"] > 0


def test_attention_benchmark_runs_in_interpret_mode(tmp_path):
    """bench/attention.py's CPU smoke mode: every peer prints a row per length (no timing)."""
    out = tmp_path / "attention.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--interpret", "--lengths", "64",
         "100", "--heads", "2", "--steps", "1", "--warmup", "0", "--model-step", "tiny",
         "--step-batch", "2", "--inputs", "32", "--targets", "16", "--peak-tflops", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "not performance figures" in proc.stdout
    result = json.loads(out.read_text())
    rows = result["attention"]
    assert {(r["length"], r["peer"]) for r in rows} == {
        (n, p) for n in (64, 100) for p in ("pallas", "xla", "jax.nn")}
    for r in rows:
        assert "error" not in r, r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0, r
        assert f"| {r['length']:>6} | {r['peer']:<7} |" in proc.stdout
    steps = {r["backend"]: r for r in result["model_step"]}
    assert set(steps) == {"xla", "pallas_interpret"}
    for r in steps.values():
        assert "error" not in r, r
        assert r["step_s"] > 0 and 0 < r["mfu"], r


def test_attention_benchmark_compiles_for_a_tpu_topology(tmp_path):
    """--tpu-topology: memory from Mosaic / XLA's TPU compiler, with no TPU (needs libtpu)."""
    import importlib.util
    import os

    import pytest

    if not (importlib.util.find_spec("libtpu") or os.environ.get("TPU_LIBRARY_PATH")):
        pytest.skip("libtpu not installed: no ahead-of-time TPU compilation")
    out = tmp_path / "attention_tpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--tpu-topology", "v5e:2x2",
         "--lengths", "256", "2048", "--heads", "2", "--peers", "pallas", "xla",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["length"], r["peer"]): r for r in json.loads(out.read_text())["attention"]}
    assert set(rows) == {(n, p) for n in (256, 2048) for p in ("pallas", "xla")}
    assert {r["device"] for r in rows.values()} == {"TPU v5 lite"}
    # The dense bias is quadratic, the kernel's residuals linear.
    assert rows[2048, "xla"]["fwd_bwd_mib"] > 4 * rows[2048, "pallas"]["fwd_bwd_mib"] > 0


def test_attention_benchmark_rejects_tpu_topology_with_timed_modes():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--tpu-topology", "v5e:2x2",
         "--interpret"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "--tpu-topology compiles" in proc.stderr


def test_restore_memory_benchmark_reports_scratch_and_both_finetunes(tmp_path):
    out = tmp_path / "restore.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "restore_memory.py"), "--model", "tiny",
         "--steps", "1", "--workdir", str(tmp_path / "w"), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"scratch", "hf", "flan-jax"}
    for run in result["runs"].values():
        assert run["rc"] == 0 and run["peak_rss_bytes"] > 0
    for mode in ("scratch", "hf", "flan-jax"):  # every run finished its model dir
        assert (tmp_path / "w" / f"run-{mode}" / "model" / "config.json").exists()
    assert "| hf |" in proc.stdout and "vs scratch" in proc.stdout


def _bench_module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_architectures_matches_parameters_and_reports_and_plots(tmp_path):
    """bench/architectures.py's parts that need no training: each architecture's layer
    count lands closest to the encoder-decoder's parameters, the table and the plot."""
    bench = _bench_module("architectures")
    base = bench.demo_config([])
    layers = bench.matched_layers(base, semi_encoder_layers=1)
    target = layers["enc_dec"]["params"]
    assert layers["enc_dec"]["params"] == bench.count_params(base)
    for name in ("decoder", "prefix_lm", "semi_causal"):
        n, enc = layers[name]["num_decoder_layers"], layers[name]["num_encoder_layers"]
        arch = bench.ARCHS[name][1]
        gaps = [abs(bench.count_params(base.replace(architecture=arch, num_decoder_layers=m,
                                                    num_encoder_layers=enc)) - target)
                for m in (n - 1, n, n + 1) if m >= 1]
        assert abs(layers[name]["params"] - target) == min(gaps), name
    assert layers["semi_causal"]["num_encoder_layers"] == 1
    fake = {"steps": 3, "batch": 2, "eval_examples": 4, "d_model": base.d_model, "archs": {
        name: {**layers[name], "train_seconds": 1.0,
               "accuracy": {g: {"accuracy": 10.0 * i, "rank_accuracy": 50.0, "tasks": 2}
                            for g in bench.GROUPS},
               "eval_loss": {g: 2.0 + i for g in bench.GROUPS}}
        for i, name in enumerate(bench.ARCHS)}}
    table = bench.report(fake)
    assert "| semi_causal | 1+" in table and "| 30.0% | 50.0% |" in table
    png = tmp_path / "arch.png"
    bench.plot(fake, png)
    assert png.stat().st_size > 5_000


def test_lora_benchmark_reports_sizes_memory_and_plans(tmp_path):
    """bench/lora.py --quick: the tiny preset's step and plan, full vs LoRA (no quality runs).
    AdamW keeps two moments per trained param, so LoRA's optimizer state shrinks as its
    trainable params do; the compiled step of a LoRA run needs less memory than full AdamW."""
    out = tmp_path / "lora.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lora.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora / full_adamw:" in proc.stdout and "| tiny | 2 | lora |" in proc.stdout
    result = json.loads(out.read_text())
    runs = result["step"]["runs"]
    assert set(runs) == {"full_adafactor", "full_adamw", "lora"}
    full, lora = runs["full_adamw"], runs["lora"]
    assert full["trainable_params"] == full["params"] == runs["full_adafactor"]["params"]
    assert 0 < lora["trainable_params"] < full["trainable_params"] / 10
    assert lora["params"] == full["params"] + lora["trainable_params"]  # base + adapters
    assert lora["frozen_bytes"] == full["trainable_bytes"]
    assert (runs["full_adafactor"]["optimizer"], full["optimizer"], lora["optimizer"]) == (
        "adafactor", "adamw", "adamw")
    ratio = result["step"]["ratios"]["full_adamw"]
    assert abs(ratio["optimizer_bytes"] / ratio["trainable_params"] - 1) < 0.01, ratio
    assert abs(full["optimizer_bytes"] - 2 * full["trainable_bytes"]) < 1024  # mu, nu
    for r in runs.values():
        assert r["peak_bytes"] > 0 and r["temp"] > 0 and r["step_s"] > 0 and r["compile_s"] > 0
    assert lora["peak_bytes"] < full["peak_bytes"]
    plans = {p["run"]: p for p in result["plans"]}
    assert set(plans) == set(runs) and {p["devices"] for p in plans.values()} == {2}
    assert plans["lora"]["trainable_param_count"] == lora["trainable_params"]
    assert plans["lora"]["optimizer"] < plans["full_adamw"]["optimizer"]
    assert plans["lora"]["gradients"] < plans["full_adamw"]["gradients"]
    assert plans["lora"]["activations"] == plans["full_adamw"]["activations"]


def test_lora_task_is_deterministic_with_disjoint_splits_and_reports(tmp_path):
    """The bench's JSONL task: the same files from the same seed, no validation headline in
    train, one topic word per headline; its module compiles; the quality table renders."""
    bench = _bench_module("lora")
    a = bench.write_task(tmp_path / "a", 300, 50)
    b = bench.write_task(tmp_path / "b", 300, 50)
    rows = {}
    for split in ("train", "validation"):
        text = (a / f"{bench.TASK}_{split}.jsonl").read_text()
        assert text == (b / f"{bench.TASK}_{split}.jsonl").read_text()
        rows[split] = [json.loads(line) for line in text.splitlines()]
    assert [len(rows["train"]), len(rows["validation"])] == [300, 50]
    assert not {r["headline"] for r in rows["train"]} & {r["headline"] for r in rows["validation"]}
    for r in rows["train"] + rows["validation"]:
        words = r["headline"].split()
        assert [w for w in words if w in bench.TOPICS[r["topic"]]] and len(words) == 4
        assert r["options"] == sorted(bench.TOPICS)
    compile((a / f"{bench.TASK}.py").read_text(), "lora_topic.py", "exec")
    score = {"accuracy": 40.0, "rank_accuracy": 60.0}
    fake = {"quality": {"eval_examples": 50, "chance_percent": 20.0, "steps": 3, "batch": 2,
                        "base_steps": 5, "seconds": {"base": 1.0}, "base": score,
                        "runs": {name: {"after": score, "loss": 1.5, "steps_per_s": 2.0,
                                        "seconds": 3.0} for name in ("full", "lora")}}}
    table = bench.report(fake)
    assert "| lora finetune | 40.0% | 60.0% | 1.500 |" in table and "chance 20%" in table


def test_galactica_tokens_benchmark_reports_the_peer_and_the_span_sweep(tmp_path):
    out = tmp_path / "tokens.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "galactica_tokens.py"), "--quick", "--json",
         str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "char-split / plain" in proc.stdout
    result = json.loads(out.read_text())
    for peer in ("plain SentencePiece", "Galactica char-split"):
        assert result[peer]["texts_per_s"] > 0 and result[peer]["tokens"] > 0
    assert result["char_split_over_plain"] > 0
    assert [r["bases"] for r in result["dna"]] == [10, 100, 1000]
    assert all(r["ns_per_base"] > 0 for r in result["dna"])
