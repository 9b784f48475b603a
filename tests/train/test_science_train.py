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
            "--gin.EvalConfig.task_feature_lengths={'inputs': 96, 'targets': 48}",
            "--generations", "1"]
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
    # The export keeps the Galactica vocabulary it trained with; infer decodes with it, and
    # the sample generations come from the science mixture, not the default one.
    from flan_jax.data.vocab import CharSplitVocabulary
    from flan_jax.train import infer

    assert (d / "model" / "spiece.model").is_file()
    _, vocab = infer.load(d)
    assert isinstance(vocab, CharSplitVocabulary) and vocab.vocab_size == 494
    generations = proc.stdout[proc.stdout.index("sample generations"):]
    assert f"[chain of thought] {WORK_TASK}" in generations
    assert "synth_word_problem" not in generations


def test_sample_kinds_come_from_the_trained_mixture():
    from flan_jax.data import export
    from flan_jax.train.printout import DEFAULT_KINDS, sample_kinds

    export.import_modules()
    assert sample_kinds("flan_jax_default_zs_only") == list(DEFAULT_KINDS)
    kinds = dict(sample_kinds("flan_jax_science"))
    assert kinds["chain of thought"] == WORK_TASK  # (cot_work before cot_zs)
    assert kinds["zero-shot"].startswith("synth_sci_") and kinds["zero-shot"].endswith(
        ":zs_noopt")
    assert sample_kinds("no_such_mixture") == list(DEFAULT_KINDS)
