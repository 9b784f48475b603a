"""runs/science_tiny.gin end to end: a tiny model trains on the science mixture and the eval
report scores unit arithmetic's `<work>` format on its extracted answer."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
STEPS = 8
WORK_TASK = "synth_sci_unit_arithmetic:cot_work"


def test_science_tiny_trains_and_reports_work_answer_accuracy(tmp_path):
    d = tmp_path / "run"
    args = ["train", "--gin_file=runs/science_tiny.gin", f"--gin.train.model_dir='{d}'",
            f"--gin.train.total_steps={STEPS}", f"--gin.train.checkpoint_every={STEPS}",
            "--gin.train.eval_at_start=False", "--gin.train.log_every=1",
            "--gin.T5Config.d_model=32", "--gin.T5Config.num_heads=2",
            "--gin.T5Config.head_dim=16", "--gin.T5Config.d_ff=64",
            "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
            "--gin.DataConfig.batch_size=4",
            "--gin.DataConfig.task_feature_lengths={'inputs': 96, 'targets': 48}",
            "--gin.EvalConfig.num_examples=2", "--gin.EvalConfig.batch_size=2",
            "--gin.EvalConfig.task_feature_lengths={'inputs': 96, 'targets': 48}"]
    proc = subprocess.run([sys.executable, "-m", "flan_jax", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"done: step {STEPS}" in proc.stdout
    results = json.loads((d / "eval" / f"step_{STEPS}.json").read_text())
    assert set(results) == {"held_in", "held_out"}
    assert "synth_sci_amino_count:zs_noopt" in results["held_out"]
    # The answer accuracy after `extract_work_answer`, in percent (seqio's `accuracy`).
    accuracy = results["held_in"][WORK_TASK]["accuracy"]
    assert 0.0 <= accuracy <= 100.0
    assert WORK_TASK in proc.stdout  # the printed eval table has it too
