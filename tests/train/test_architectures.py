"""The trainer's guarantees for every decoder-only arch file (gin/arch/*.gin) as the
encoder-decoder has them in test_loop / test_parallel: 8 devices (data x FSDP x tensor) train
as 1 does, and a run SIGKILLed while it writes a checkpoint resumes to exactly the losses
and params of an uninterrupted run."""

import concurrent.futures
import json
import signal

import jax
import numpy as np
import pytest

from tests.test_parallel import _run_worker
from tests.train.test_loop import ENV, ROOT, TINY, _cli, _losses, _train_args

# semi_causal only once its arch file exists (it is being added alongside).
ARCHS = ["decoder_only", "prefix_lm"] + [
    a for a in ("semi_causal",) if (ROOT / "gin" / "arch" / f"{a}.gin").exists()]
# 2 decoder layers: with 1, a prefix LM's target logits equal a causal LM's (layer 1's keys
# and values are the embeddings whatever the mask), so prefix_lm would test nothing new.
LAYERS = ["--gin.T5Config.num_decoder_layers=2"]
STEPS, EVERY = 6, 2
KILL_AT = "during_save:2"  # while step 4 is written: step 2 is the last whole checkpoint
MESH = "data2_fsdp2_model2"  # tests.parallel_worker.MESHES: every mesh axis at once
# LLVM -O0 compiles several times faster; every run compared here is compiled the same way.
FAST = {**ENV, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def _args(arch, model_dir):
    return _train_args(model_dir, STEPS, EVERY, [f"--gin_file=arch/{arch}.gin", *LAYERS])


def _kill_then_resume(arch, model_dir):
    """The killed run and its rerun, with what the kill left: checkpoint dirs, log lines."""
    killed = _cli(*_args(arch, model_dir), env={**FAST, "FLAN_JAX_KILL_AT": KILL_AT})
    left = sorted(p.name for p in (model_dir / "checkpoints").glob("*"))
    logged = _metric_lines(model_dir)
    return {"killed": killed, "left": left, "logged": logged,
            "resumed": _cli(*_args(arch, model_dir), env=FAST)}


def _metric_lines(model_dir):
    path = model_dir / "train" / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess of this module, two at a time (a CLI run is mostly single-threaded
    start-up and compiling): the 8-device worker for all archs ("sharded"), and per arch an
    uninterrupted run ("straight") and a killed-then-resumed one ("resumed")."""
    root = tmp_path_factory.mktemp("archs")
    bindings = [b[len("--gin."):] for b in TINY + LAYERS if b.startswith("--gin.")]
    bindings.append("learning_rate_schedule.warmup_steps=0")  # (demo's step 1 has lr 0)
    spec = {"steps": 3, "meshes": [MESH], "runs": {
        a: {"files": ["runs/demo.gin", f"arch/{a}.gin"], "bindings": bindings} for a in ARCHS}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {"sharded": pool.submit(_run_worker, "train", json.dumps(spec), timeout=600)}
        for a in ARCHS:
            futures[a, "straight"] = pool.submit(_cli, *_args(a, root / a / "straight"),
                                                 env=FAST)
            futures[a, "resumed"] = pool.submit(_kill_then_resume, a, root / a / "resumed")
    return root, futures


@pytest.mark.parametrize("arch", ARCHS)
def test_eight_devices_train_as_one(runs, arch):
    """3 Adafactor steps of the step `flan-jax train` builds from the arch file, on the
    reader's features of that converter: data=2 x fsdp=2 x model=2 against 1 device. The
    losses agree to test_parallel's tolerance; the params' 3-step update to 1e-3 of each
    leaf's largest entry (Adafactor divides by the root of tiny second moments in rarely
    seen embedding rows, which magnifies the sharded sums' rounding: ~2e-4 there)."""
    result = runs[1]["sharded"].result()[arch]
    one, eight = result["meshes"]["one_device"], result["meshes"][MESH]
    assert eight["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
    assert len(one["losses"]) == 3 and one["update_norm"] > 0.1
    for got, want in zip(eight["losses"], one["losses"]):
        assert abs(got - want) / abs(want) < 1e-5
    assert eight["update_rel"] < 1e-3
    extra = {"decoder_only": set(), "prefix_lm": {"decoder_causal_attention"},
             "semi_causal": {"decoder_encoded_span"}}[arch]
    assert set(result["features"]) == {"decoder_input_tokens", "decoder_target_tokens",
                                       "decoder_loss_weights", "decoder_segment_ids",
                                       "decoder_positions"} | extra


def test_the_prefix_mask_reaches_the_sharded_step(runs):
    """Same params, examples and targets: only decoder_causal_attention differs."""
    result = runs[1]["sharded"].result()
    assert result["decoder_only"]["architecture"] == result["prefix_lm"]["architecture"]
    causal, prefix = (result[a]["meshes"][MESH]["losses"][0] for a in ("decoder_only",
                                                                       "prefix_lm"))
    assert abs(causal - prefix) > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_a_run_killed_during_a_save_resumes_exactly(runs, arch):
    from flan_jax.model.io import load_pretrained

    root, futures = runs
    straight, run = futures[arch, "straight"].result(), futures[arch, "resumed"].result()
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert run["killed"].returncode == -signal.SIGKILL, run["killed"].stderr[-3000:]
    assert run["left"][:1] == ["2"] and run["left"][1].startswith("4.")  # 4 half written
    assert run["resumed"].returncode == 0, run["resumed"].stderr[-3000:]
    want, got = root / arch / "straight", root / arch / "resumed"
    lines = _metric_lines(got)
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    # Resumed from step 2, not rerun from 0: the killed run's records of 1-2 stand (their
    # timings too); it had logged 3-4 as well, which the rerun logged again, identically.
    assert lines[:2] == run["logged"][:2] and len(run["logged"]) == 4
    assert [json.loads(x)["loss"] for x in run["logged"][2:]] == [
        json.loads(x)["loss"] for x in lines[2:4]]
    assert _losses(got) == _losses(want)  # exactly
    assert sorted(p.name for p in (got / "checkpoints").iterdir()) == sorted(
        p.name for p in (want / "checkpoints").iterdir()) == ["4", "6"]
    assert not [p for p in got.rglob("*") if "tmp" in p.name]
    (cfg, params), (_, ref) = load_pretrained(got / "model"), load_pretrained(want / "model")
    assert cfg.architecture == ("decoder_only" if arch == "prefix_lm" else arch)
    flat, flat_ref = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (params, ref))
    assert [k for k, _ in flat] == [k for k, _ in flat_ref]
    for (path, x), (_, y) in zip(flat, flat_ref):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
