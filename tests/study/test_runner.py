"""`flan-jax study` end to end on a 2 x 2 grid of tiny runs: every run a real `flan-jax
train`, then the table, plots and fits; stopped after two runs and started again, it trains
only the other two; a bad binding in any run fails before the first trains."""

import contextlib
import io
import json

import pytest

from flan_jax.cli import main

STUDY = """
import flan_jax.study.runner
Study.name = 'tiny grid'
Study.output_dir = '{out}'
Study.gin_files = ['runs/small.gin']
Study.bindings = [
    'T5Config.num_heads = 2', 'T5Config.head_dim = 16', 'T5Config.num_encoder_layers = 1',
    'T5Config.num_decoder_layers = 1', 'DataConfig.batch_size = 4', 'DataConfig.workers = 0',
    "DataConfig.task_feature_lengths = {{'inputs': 64, 'targets': 16}}",
    "EvalConfig.task_feature_lengths = {{'inputs': 64, 'targets': 16}}",
    'EvalConfig.num_examples = 2', 'EvalConfig.batch_size = 2', 'train.eval_at_start = False',
    'train.log_every = 1', 'train.checkpoint_every = 100',
    # one task per group keeps each run's eval to two seqio pipelines
    "EvalConfig.groups = {{'held_in': 'synth_category:zs_opt', 'held_out': 'synth_weekday:zs_opt'}}"]
Study.axes = {{
    'size': {{'s': ['T5Config.d_model = 32', 'T5Config.d_ff = 64'],
              'm': ['T5Config.d_model = 48', 'T5Config.d_ff = 96']}},
    'steps': {{'2': ['train.total_steps = 2'], '4': ['train.total_steps = 4']}},
}}
Study.loss_batches = 1
Study.loss_groups = {{'held_in': 'synth_category:zs_opt', 'held_out': 'synth_weekday:zs_opt'}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "grid.gin").write_text(STUDY.format(out=root / "out"))
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        first = main(["study", f"--gin_file={root / 'grid.gin'}", "--limit", "2"])
    stamps = {p.parent.name: p.stat().st_mtime_ns
              for p in (root / "out" / "runs").glob("*/study_result.json")}
    partial = json.loads((root / "out" / "results.json").read_text())
    with contextlib.redirect_stderr(log):
        second = main(["study", f"--gin_file={root / 'grid.gin'}"])
    return {"root": root, "out": root / "out", "first": first, "second": second,
            "stamps": stamps, "partial": partial, "log": log.getvalue()}


def test_a_stopped_study_resumes_without_redoing_finished_runs(study):
    assert (study["first"], study["second"]) == (0, 0), study["log"]
    assert sorted(study["stamps"]) == ["size=s,steps=2", "size=s,steps=4"]
    assert not study["partial"]["complete"] and len(study["partial"]["runs"]) == 2
    log = study["log"]
    assert "[3/4] size=m,steps=2: left for the next start (limit 2)" in log
    assert "[1/4] size=s,steps=2: finished, skipped" in log  # (the second start)
    for name, stamp in study["stamps"].items():  # (not trained or written again)
        assert (study["out"] / "runs" / name / "study_result.json").stat().st_mtime_ns == stamp


def test_the_table_plots_and_fits_cover_every_run(study):
    results = json.loads((study["out"] / "results.json").read_text())
    assert results["complete"]
    runs = {r["name"]: r for r in results["runs"]}
    assert sorted(runs) == ["size=m,steps=2", "size=m,steps=4", "size=s,steps=2",
                            "size=s,steps=4"]
    s2, s4, m2 = runs["size=s,steps=2"], runs["size=s,steps=4"], runs["size=m,steps=2"]
    assert s2["params"] == s4["params"] < m2["params"]
    assert s4["tokens"] == 2 * s2["tokens"] == 2 * 2 * 4 * (64 + 16)
    assert s4["compute"] == pytest.approx(2 * s2["compute"]) and m2["compute"] > s2["compute"]
    for r in runs.values():
        assert set(r["accuracy"]) == {"held_in", "held_out"}
        assert set(r["eval_loss"]) == {"held_in", "held_out"}
        assert all(0 < v < 20 for v in r["eval_loss"].values())
        assert (study["out"] / "runs" / r["name"] / "model" / "config.json").is_file()
    for r in runs.values():  # (log_every = 1: every step's training loss)
        assert [s for s, _, _ in r["curve"]] == list(range(1, r["steps"] + 1))
        assert r["curve"][-1][1] == r["tokens"]
    # 4 distinct compute values: L(C) is fitted; params and tokens have only 2 each; and
    # L(D) along the training curve of the largest run.
    assert set(results["fits"]) == {"held_in", "held_out", "train_loss"}
    assert results["fits"]["train_loss"]["tokens"]["run"] == "size=m,steps=4"
    assert [s["config"] for s in results["summary"]] == list(runs)  # (no seed axis: n = 1)
    assert set(results["fits"]["held_in"]) == {"compute"}
    fit = results["fits"]["held_in"]["compute"]
    assert fit["points"] == 4 and fit["text"].startswith("L(C) = ")
    md = (study["out"] / "results.md").read_text()
    assert md.count("| size=") == 4 and "held_in eval loss fits:" in md
    for x in ("params", "tokens", "compute"):
        assert (study["out"] / f"{x}.png").stat().st_size > 10_000


def test_a_bad_binding_in_any_run_fails_before_training(tmp_path, capsys):
    bad = STUDY.format(out=tmp_path / "out").replace("'train.total_steps = 4'",
                                                     "'train.total_stepz = 4'")
    (tmp_path / "bad.gin").write_text(bad)
    assert main(["study", f"--gin_file={tmp_path / 'bad.gin'}"]) == 2
    err = capsys.readouterr().err
    assert "study run size=s,steps=4" in err and "total_stepz" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_eval_loss_scores_a_model_on_its_own_features(tmp_path):
    """The teacher-forced loss of an exported tiny model on each group, with its features."""
    import math

    from flan_jax.model import create_model, get_config, params_of
    from flan_jax.model.io import save_pretrained
    from flan_jax.study.runner import GROUPS, eval_loss

    cfg = get_config("tiny", architecture="semi_causal", num_encoder_layers=1)
    save_pretrained(tmp_path / "model", cfg, params_of(create_model(cfg, seed=0)))
    loss = eval_loss(tmp_path / "model", "semi_causal", {"inputs": 64, "targets": 16}, GROUPS,
                     batches=1, batch_size=2)
    assert set(loss) == set(GROUPS)
    # an untrained model: about the log of the vocabulary (512) per target token
    assert all(0.5 * math.log(512) < v < 2 * math.log(512) for v in loss.values()), loss


def test_groups_written_for_another_mixture_are_refused(tmp_path, capsys):
    """small.gin's groups are for flan_jax_default (groups_of): a run training another
    mixture would quietly score that mixture's tasks, so the study refuses it up front."""
    text = STUDY.format(out=tmp_path / "out").replace(
        "'steps': {'2'",
        "'mix': {'zs': [\"DataConfig.mixture_or_task_name = 'flan_jax_default_zs_only'\"]},"
        " 'steps': {'2'")
    assert "flan_jax_default_zs_only" in text
    (tmp_path / "bad.gin").write_text(text)
    assert main(["study", f"--gin_file={tmp_path / 'bad.gin'}"]) == 2
    err = capsys.readouterr().err
    assert "EvalConfig.groups_of = None" in err and "flan_jax_default_zs_only" in err
    assert not (tmp_path / "out" / "runs").exists()


def _row(mixture, seed, acc, loss):
    return {"name": f"mixture={mixture},seed={seed}", "values": {"mixture": mixture,
                                                               "seed": str(seed)},
            "params": 1000, "tokens": 5000, "compute": 1e9, "steps": 10, "train_seconds": 1.0,
            "accuracy": {"held_out": {"accuracy": acc, "rank_accuracy": acc + 10, "tasks": 2}},
            "eval_loss": {"held_out": loss}}


def test_seeds_are_summarized_per_configuration(tmp_path):
    from flan_jax.study import report

    rows = [_row("a", 0, 10.0, 2.0), _row("a", 1, 20.0, 1.0), _row("b", 0, 50.0, 0.5),
            _row("b", 1, 50.0, 0.5), _row("b", 2, 80.0, 0.5)]
    summary = report.summarize(rows)
    assert [s["config"] for s in summary] == ["mixture=a", "mixture=b"]
    a, b = (s["metrics"] for s in summary)
    assert a["held_out acc"]["mean"] == 15.0 and a["held_out acc"]["n"] == 2
    assert a["held_out acc"]["sd"] == pytest.approx(7.0711, abs=1e-4)
    assert b["held_out rank acc"]["mean"] == 70.0 and b["held_out loss"]["sd"] == 0.0
    assert summary[1]["seeds"] == ["0", "1", "2"]
    results = {"study": "s", "complete": True, "runs": rows, "summary": summary, "fits": {}}
    report.write(tmp_path, results)
    md = (tmp_path / "results.md").read_text()
    assert "| mixture=a | 2 | 15.0 ± 7.1 | 25.0 ± 7.1 | 1.500 ± 0.707 |" in md
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    # nothing varies in params / tokens / compute: no plots against them
    assert not any((tmp_path / f"{x}.png").exists() for x in report.X_AXES)
