"""flan-jax train / eval / infer as users start them: real subprocesses, gin files, orbax
checkpoints on disk. Resume after SIGKILL is exact; 8 devices match 1; bad config stops."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
TINY = [
    "--gin_file=runs/demo.gin",
    "--gin.T5Config.d_model=32", "--gin.T5Config.num_heads=2", "--gin.T5Config.head_dim=16",
    "--gin.T5Config.d_ff=64", "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
    "--gin.DataConfig.batch_size=8",
    "--gin.DataConfig.task_feature_lengths={'inputs': 96, 'targets': 32}",
    "--gin.train.log_every=1", "--gin.train.evaluate=False",
]


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "flan_jax", *args], cwd=ROOT,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout)


def _losses(model_dir):
    """step -> loss from metrics.jsonl; a resumed run's later record of a step wins."""
    out = {}
    for line in (Path(model_dir) / "train" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def _train_args(model_dir, steps, every, extra=()):
    return ["train", *TINY, f"--gin.train.model_dir='{model_dir}'",
            f"--gin.train.total_steps={steps}", f"--gin.train.checkpoint_every={every}",
            *extra]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight") / "run"
    proc = _cli(*_train_args(d, 12, 6))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, proc


def test_a_run_leaves_checkpoints_logs_config_and_a_model(straight_run):
    d, proc = straight_run
    assert "done: step 12" in proc.stdout
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["12", "6"]
    assert (d / "model" / "config.json").exists() and (d / "config.gin").exists()
    assert "train.total_steps = 12" in (d / "config.gin").read_text()
    losses = _losses(d)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]
    rec = json.loads((d / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "z_loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_s"):
        assert key in rec
    assert list((d / "train").glob("events.out.tfevents.*"))


def test_resume_after_sigkill_is_exact(straight_run, tmp_path):
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "flan_jax", *_train_args(d, 12, 6)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (d / "checkpoints" / "6").is_dir():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (d / "checkpoints" / "12").exists()  # killed well before the end
    resumed = _cli(*_train_args(d, 12, 6))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _losses(straight_run[0]), _losses(d)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == pytest.approx(want[step], rel=1e-6), step


def test_resuming_with_another_optimizer_layout_is_refused_naming_the_binding(straight_run,
                                                                              tmp_path):
    """A run written with Adafactor in t5x's shapes (the default), resumed with the old layout:
    refused before any work, naming the binding that wrote it; nothing on disk changes."""
    d = tmp_path / "run"
    shutil.copytree(straight_run[0], d)
    config = (d / "config.gin").read_text()
    proc = _cli(*_train_args(d, 18, 6, ["--gin.make_optimizer.adafactor_factor_like_t5x=False"]))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{d / 'checkpoints' / '12'}: was written with another" in proc.stderr
    assert "--gin.make_optimizer.adafactor_factor_like_t5x=True" in proc.stderr
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["12", "6"]
    assert (d / "config.gin").read_text() == config
    assert max(_losses(d)) == 12


def test_rerunning_a_finished_run_does_nothing(straight_run):
    d, _ = straight_run
    before = _losses(d)
    proc = _cli(*_train_args(d, 12, 6))
    assert proc.returncode == 0 and "step 12" in proc.stdout
    assert _losses(d) == before


def test_eight_devices_give_the_same_losses_as_one(straight_run, tmp_path):
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    d = tmp_path / "run"
    proc = _cli(*_train_args(d, 4, 100, ["--gin_file=mesh/2d.gin"]), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _losses(straight_run[0]), _losses(d)
    for step in range(1, 5):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


@pytest.mark.parametrize("args, match", [
    (["--gin.train.totl_steps=5"], "totl_steps"),
    (["--gin.DataConfig.batch_sise=5"], "batch_sise"),
    (["--gin_file=runs/nope.gin"], "runs/nope.gin"),
    (["--gin.learning_rate_schedule.name='linear'"], "learning_rate_schedule.name='linear'"),
    (["--gin.DataConfig.module_imports=('no_such_tasks',)"], "task module 'no_such_tasks'"),
    (["--gin.DataConfig.mixture_or_task_name='flan_jax_defualt'"], "closest: flan_jax_default"),
    (["--gin.DataConfig.reader='tfdata'"], "DataConfig.reader='tfdata'"),
])
def test_bad_configuration_stops_before_any_work_naming_it(args, match, tmp_path):
    d = tmp_path / "run"
    proc = _cli(*_train_args(d, 5, 5, args))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert match in proc.stderr
    assert not (d / "checkpoints").exists()


def test_missing_required_values_are_named(tmp_path):
    proc = _cli("train", "--gin_file=models/tiny.gin", "--gin.train.total_steps=3")
    assert proc.returncode == 2
    assert "model_dir" in proc.stderr


def test_non_finite_loss_stops_with_the_step_and_last_checkpoint(tmp_path):
    explode = ["--gin.make_optimizer.name='adamw'",
               "--gin.learning_rate_schedule.learning_rate=1e12",
               "--gin.learning_rate_schedule.warmup_steps=0"]
    d = tmp_path / "run"
    proc = _cli(*_train_args(d, 8, 1, explode))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "loss is nan" in proc.stderr or "loss is inf" in proc.stderr
    assert "last good checkpoint is" in proc.stderr or "no checkpoint" in proc.stderr
    skipped = tmp_path / "skip"
    proc = _cli(*_train_args(skipped, 8, 100, explode + ["--gin.train.on_nonfinite='skip'"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in
               (skipped / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["skipped"] == 1.0 for r in records)


def test_infer_and_eval_read_the_trained_run(straight_run, tmp_path):
    d, _ = straight_run
    proc = _cli("infer", "--checkpoint", str(d), "--input", "What is 2 plus 3?",
                "--max_decode_len", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("> What is 2 plus 3?\n")
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"inputs": "Is 7 even or odd?"}\n{"inputs": "Sort 3, 1, 2"}\n')
    out = tmp_path / "out.jsonl"
    for method in ("greedy", "beam", "sample"):
        proc = _cli("infer", "--checkpoint", str(d), "--input_file", str(prompts),
                    "--output", str(out), "--method", method, "--max_decode_len", "8")
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r["inputs"] for r in rows] == ["Is 7 even or odd?", "Sort 3, 1, 2"]
        assert all(isinstance(r["output"], str) for r in rows)
    res = tmp_path / "eval.json"
    proc = _cli("eval", "--checkpoint", str(d), "--output", str(res),
                "--gin.EvalConfig.num_examples=4", "--gin.EvalConfig.batch_size=8",
                "--gin.EvalConfig.task_feature_lengths={'inputs': 96, 'targets': 8}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(res.read_text())
    # No EvalConfig.groups bound: eval follows what the run trained on (read from its
    # config.gin), a seeded sample of EvalConfig.max_tasks of the mixture's tasks.
    import mixtures.default  # noqa: F401
    import seqio
    mixture = "flan_jax_default_zs_only"  # (what demo.gin trains)
    trained = {t.name for t in seqio.get_mixture_or_task(mixture).tasks}
    assert set(results) == {mixture}
    assert len(results[mixture]) == min(32, len(trained))  # (EvalConfig.max_tasks)
    assert set(results[mixture]) <= trained
    assert "mean accuracy" in proc.stdout


def test_infer_errors_are_named(tmp_path):
    proc = _cli("infer", "--checkpoint", str(tmp_path), "--input", "hi")
    assert proc.returncode == 2 and "not a model directory" in proc.stderr


EVAL_AT_END = ["--gin.train.evaluate=True", "--gin.train.eval_at_start=False",
               "--gin.EvalConfig.num_examples=2", "--gin.EvalConfig.batch_size=2",
               "--gin.EvalConfig.groups={'held_out': 'flan_jax_default_held_out'}",
               "--gin.EvalConfig.task_feature_lengths={'inputs': 96, 'targets': 32}"]


@pytest.mark.parametrize("point", ["during_save:2", "before_export", "during_export"])
def test_a_run_killed_at_its_end_is_finished_by_the_rerun(straight_run, tmp_path, point):
    """A real SIGKILL while the last checkpoint is written, after it, or during the model/
    export: the rerun leaves a complete run (model/, final eval, each step logged once, no
    temp dirs) with the losses of an uninterrupted run."""
    d = tmp_path / "run"
    args = _train_args(d, 4, 2, EVAL_AT_END)
    killed = _cli(*args, env={**ENV, "FLAN_JAX_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (d / "model").exists()
    rerun = _cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (d / "model" / "config.json").exists() and (d / "eval" / "step_4.json").exists()
    steps = [json.loads(line)["step"]
             for line in (d / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    evals = [json.loads(line)["step"]
             for line in (d / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert evals == [4]
    want, got = _losses(straight_run[0]), _losses(d)
    for step in range(1, 5):
        assert got[step] == pytest.approx(want[step], rel=1e-6), step
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["2", "4"]
    assert not [p for p in d.rglob("*") if "tmp" in p.name]


ARCH_FEATURES = {"decoder_only": ("decoder_only", "decoder"),
                 "prefix_lm": ("decoder_only", "prefix_lm"),
                 "semi_causal": ("semi_causal", "semi_causal")}


@pytest.mark.parametrize("arch", list(ARCH_FEATURES))
def test_a_decoder_only_model_trains_and_evaluates_on_the_default_mixture(tmp_path, arch):
    """arch/*.gin on the run file: the reader makes that model's features, the step reads
    them, and the final eval prompts the model with the inputs (rank classification too)."""
    d = tmp_path / "run"
    proc = _cli(*_train_args(d, 3, 3, [f"--gin_file=arch/{arch}.gin", *EVAL_AT_END,
                                        "--gin.EvalConfig.groups={'held_in': "
                                        "'flan_jax_default_held_in'}"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads((d / "model" / "config.json").read_text())
    architecture, features = ARCH_FEATURES[arch]
    assert built["architecture"] == architecture
    assert f"DataConfig.feature_converter = '{features}'" in (d / "config.gin").read_text()
    results = json.loads((d / "eval" / "step_3.json").read_text())
    metrics = [m for tasks in results.values() for m in tasks.values()]
    assert metrics and all("accuracy" in m for m in metrics)
    assert any("rank_accuracy" in m for m in metrics)
    assert sorted(_losses(d)) == [1, 2, 3]


def test_a_model_and_reader_that_disagree_are_refused_naming_both(tmp_path):
    proc = _cli(*_train_args(tmp_path / "run", 2, 2,
                             ["--gin.DataConfig.feature_converter='prefix_lm'"]))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ("T5Config.architecture='encoder_decoder' reads the features of "
            "DataConfig.feature_converter in ('enc_dec',), not 'prefix_lm'") in proc.stderr
    assert not (tmp_path / "run").exists()
