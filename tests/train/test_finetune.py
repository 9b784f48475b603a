"""Finetuning a Hugging Face directory: the checkpoint decides the architecture, gin the run
settings (dropout, dtypes, remat, backend); a shape binding against it is refused by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "tests" / "model"))
    from hf_reference import make_hf_model

    d = tmp_path_factory.mktemp("hf") / "tiny-t5"
    # vocab 512: room for the default vocabulary's 484 ids
    make_hf_model("t5_1_1", vocab_size=512, dropout_rate=0.1).save_pretrained(
        d, safe_serialization=True)
    return d


def _train(hf_dir, model_dir, *bindings):
    args = ["train", "--gin_file=runs/finetune.gin", f"--gin.train.init_from='{hf_dir}'",
            f"--gin.train.model_dir='{model_dir}'", "--gin.train.total_steps=2",
            "--gin.train.evaluate=False", "--gin.DataConfig.batch_size=4",
            "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}",
            "--gin.DataConfig.workers=0", *bindings]
    return subprocess.run([sys.executable, "-m", "flan_jax", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_a_finetune_runs_with_the_run_settings_gin_gives(hf_dir, tmp_path):
    d = tmp_path / "ft"
    proc = _train(hf_dir, d, "--gin.T5Config.dropout_rate=0.07", "--gin.T5Config.remat='full'",
                  "--gin.T5Config.dtype='bfloat16'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads((d / "model" / "config.json").read_text())
    assert (built["dropout_rate"], built["remat"], built["dtype"]) == (0.07, "full", "bfloat16")
    assert (built["d_model"], built["num_decoder_layers"], built["vocab_size"]) == (32, 3, 512)
    config_gin = (d / "config.gin").read_text()
    assert "T5Config.dropout_rate = 0.07" in config_gin and "T5Config.remat = 'full'" in config_gin


def test_a_shape_binding_against_a_checkpoint_is_refused_by_name(hf_dir, tmp_path):
    proc = _train(hf_dir, tmp_path / "ft", "--gin.T5Config.d_model=64")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--gin.T5Config.d_model=64" in proc.stderr and "d_model=32" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ft").exists()  # stopped before any work


def test_plan_of_a_finetune_sizes_the_checkpoints_architecture(hf_dir):
    import jax

    from hf_reference import make_hf_model
    want = sum(p.numel() for p in make_hf_model("t5_1_1", vocab_size=512).parameters())
    proc = subprocess.run(
        [sys.executable, "-m", "flan_jax", "plan", "--gin_file=runs/finetune.gin",
         f"--gin.train.init_from='{hf_dir}'", "--gin.train.model_dir='/unused'",
         "--devices", "8", "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["param_count"] == want  # the checkpoint's shapes, not models/*.gin's
    assert plan["mesh"]["data"] * plan["mesh"]["fsdp"] * plan["mesh"]["model"] == 8
    del jax
