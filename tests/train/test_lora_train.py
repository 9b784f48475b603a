"""`flan-jax train --gin_file=runs/finetune.gin --gin_file=peft/lora.gin` on a tiny flan-jax
model dir: only the adapters train and are checkpointed, the exported model is the base with
the final adapters merged in, a run SIGKILLed while it saves resumes exactly, and a LoRA
checkpoint resumed without the LoRA bindings is refused naming them."""

import concurrent.futures
import json
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train.test_loop import ENV, _cli, _losses

STEPS, EVERY = 4, 2
KILL_AT = "during_save:2"  # while step 4 is written: step 2 is the last whole checkpoint
FAST = {**ENV, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
SHAPES = {"vocab_size": 512, "d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64,
          "num_encoder_layers": 1, "num_decoder_layers": 2}


def _args(base, model_dir, lora=True):
    lora_args = ["--gin_file=peft/lora.gin", "--gin.LoraConfig.targets=('q', 'v', 'mlp_out')"]
    return ["train", "--gin_file=runs/finetune.gin", *(lora_args if lora else []),
            f"--gin.train.init_from='{base}'", f"--gin.train.model_dir='{model_dir}'",
            f"--gin.train.total_steps={STEPS}", f"--gin.train.checkpoint_every={EVERY}",
            "--gin.train.evaluate=False", "--gin.train.log_every=1",
            "--gin.DataConfig.batch_size=4", "--gin.DataConfig.workers=0",
            "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}"]


def _kill_then_resume(base, model_dir):
    killed = _cli(*_args(base, model_dir), env={**FAST, "FLAN_JAX_KILL_AT": KILL_AT})
    left = sorted(p.name for p in (model_dir / "checkpoints").glob("*"))
    return {"killed": killed, "left": left, "resumed": _cli(*_args(base, model_dir), env=FAST)}


def _straight_then_refused(base, model_dir, other_base):
    """The uninterrupted run, then the same dir resumed without the LoRA bindings, and on
    another base (neither changes anything on disk)."""
    straight = _cli(*_args(base, model_dir), env=FAST)
    more = ["--gin.train.total_steps=6"]  # (a finished run would not look at its base again)
    return {"straight": straight,
            "refused": _cli(*_args(base, model_dir, lora=False), env=FAST),
            "other_base": _cli(*_args(other_base, model_dir), *more, env=FAST)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from flan_jax.model import create_model, get_config, params_of
    from flan_jax.model.io import save_pretrained

    root = tmp_path_factory.mktemp("lora")
    cfg = get_config("flan_t5-tiny", **SHAPES)
    save_pretrained(root / "base", cfg, params_of(create_model(cfg, seed=0)))
    save_pretrained(root / "other", cfg, params_of(create_model(cfg, seed=1)))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # (each run: mostly one core)
        straight = pool.submit(_straight_then_refused, root / "base", root / "straight",
                               root / "other")
        resumed = pool.submit(_kill_then_resume, root / "base", root / "resumed")
        return {"root": root, "cfg": cfg, **straight.result(), **resumed.result()}


def _stored_names(step_dir):
    handler = ocp.StandardCheckpointHandler()
    try:
        meta = handler.metadata(step_dir / "state")
    finally:
        handler.close()
    return {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, leaf in jax.tree_util.tree_flatten_with_path(meta)[0]
            if getattr(leaf, "shape", None) is not None}


def test_only_adapters_train_and_the_export_is_the_merged_model(runs):
    from flan_jax.model.io import load_pretrained
    from flan_jax.model.lora import LoraConfig, load_adapters, merge_lora

    root, cfg, proc = runs["root"], runs["cfg"], runs["straight"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = root / "straight"
    assert sorted(_losses(d)) == list(range(1, STEPS + 1))
    # The checkpoint: step, adapters and their AdamW moments; no base weight.
    names = _stored_names(d / "checkpoints" / str(STEPS))
    params = {n for n in names if n.startswith("params/")}
    assert params and all("/lora/" in n for n in params), sorted(params)[:5]
    # A and B of q and v in 5 attentions (encoder 1, decoder 2 x self + cross) and of 3 wo
    assert len(params) == 2 * (2 * 5 + 3)
    assert all(n == "step" or "/lora/" in n or n.endswith("count") for n in names), names
    lora, adapters = load_adapters(d / "adapters", cfg)
    assert lora == LoraConfig(rank=8, alpha=16.0, targets=("q", "v", "mlp_out"))
    assert json.loads((d / "adapters" / "lora_config.json").read_text())["base_model"] == str(
        root / "base")
    assert all(np.any(b["lora_b"]) for b in _adapter_leaves(adapters))  # trained off zero
    _, base = load_pretrained(root / "base")
    got_cfg, exported = load_pretrained(d / "model")
    assert got_cfg.d_model == cfg.d_model and (d / "model" / "trained_on.json").exists()
    want = merge_lora(base, adapters, lora)
    flat, flat_want = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (exported, want))
    assert [k for k, _ in flat] == [k for k, _ in flat_want]
    changed = 0
    for (path, x), (_, y) in zip(flat, flat_want):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    for (path, x), (_, y) in zip(flat, jax.tree_util.tree_flatten_with_path(base)[0]):
        changed += not np.array_equal(np.asarray(x), np.asarray(y))
    assert changed == 2 * 5 + 3  # only the targeted projections moved


def test_a_lora_run_killed_during_a_save_resumes_exactly(runs):
    from flan_jax.model.io import load_pretrained

    root, straight, run = runs["root"], runs["straight"], runs
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert run["killed"].returncode == -signal.SIGKILL, run["killed"].stderr[-3000:]
    assert run["left"][:1] == ["2"] and run["left"][1].startswith("4.")  # 4 half written
    assert run["resumed"].returncode == 0, run["resumed"].stderr[-3000:]
    want, got = root / "straight", root / "resumed"
    assert _losses(got) == _losses(want)  # exactly
    for sub in ("model", "adapters"):
        assert (got / sub).is_dir()
    (_, params), (_, ref) = load_pretrained(got / "model"), load_pretrained(want / "model")
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x),
                                                                  np.asarray(y)), params, ref))


def test_a_lora_checkpoint_resumed_without_lora_is_refused_naming_it(runs):
    refused = runs["refused"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "was written with another model or optimizer setup" in refused.stderr
    assert "LoRA run's adapters" in refused.stderr and "peft/lora.gin" in refused.stderr
    assert "Traceback" not in refused.stderr


def _adapter_leaves(tree):
    if "lora_a" in tree:
        yield tree
        return
    for value in tree.values():
        if isinstance(value, dict):
            yield from _adapter_leaves(value)


def test_a_lora_run_resumed_on_another_base_is_refused_naming_both(runs):
    """Its adapters fit only the base it started from (the killed run's resume, on the same
    base, passes the same check)."""
    refused, root = runs["other_base"], runs["root"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"train.init_from='{root / 'other'}' is not the base model" in refused.stderr
    assert str(root / "base") in refused.stderr and "Traceback" not in refused.stderr
    assert _losses(root / "straight") == _losses(root / "resumed")  # (nothing appended)
    assert json.loads((root / "straight" / "frozen_base.json").read_text())["init_from"] == str(
        root / "base")


def test_a_record_under_its_old_name_is_still_checked(tmp_path):
    """Runs started before the record was renamed (lora_base.json) keep their check."""
    import pytest

    from flan_jax.errors import ConfigError
    from flan_jax.train import loop

    for name, text in (("base", "weights"), ("other", "other weights")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.bin").write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    loop._check_base(run, str(tmp_path / "base"), resuming=False)
    (run / loop.BASE_RECORD).rename(run / loop.OLD_BASE_RECORD)
    loop._check_base(run, str(tmp_path / "base"), resuming=True)  # the same base: fine
    with pytest.raises(ConfigError, match="lora_base.json"):
        loop._check_base(run, str(tmp_path / "other"), resuming=True)
    assert not (run / loop.BASE_RECORD).exists()

