"""The README's task-registration example runs as written, with the shipped vocabulary."""

import json
import re
from pathlib import Path

import pytest
import seqio

README = Path(__file__).resolve().parents[1] / "README.md"


def test_register_your_own_task_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Register your own task"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    rows = [{"country": c, "capital": k} for c, k in
            (("France", "Paris"), ("Peru", "Lima"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"))]
    for split in ("capitals_train", "capitals_val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        scope = {}
        exec(compile(code, "README.md", "exec"), scope)
        assert "['capitals:zs_noopt', 'capitals:fs_noopt', 'capitals:inv']" in capsys.readouterr().out
        first = next(scope["ds"].as_numpy_iterator())
        assert first["targets_pretokenized"].decode() in {r["country"] for r in rows}
        ds = seqio.get_mixture_or_task("capitals:inv").get_dataset(
            {"inputs": 64, "targets": 16}, split="validation", shuffle=False, use_cached=False)
        first = next(ds.as_numpy_iterator())
        assert first["inputs_pretokenized"] == b"Paris is the capital of which country?"
        vocab = seqio.get_mixture_or_task("capitals:inv").output_features["inputs"].vocabulary
        assert vocab.decode(first["inputs"].tolist()) == "Paris is the capital of which country?"
    finally:
        for name in ("capitals:zs_noopt", "capitals:fs_noopt", "capitals:inv"):
            seqio.TaskRegistry.remove(name)


def _own_task_dir(tmp_path):
    """The README's my_tasks.py and its JSONL files in tmp_path; returns its bash commands."""
    text = README.read_text()
    section = text[text.index("**Train on it, evaluate it, generate.**"):]
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert module.startswith("# my_tasks.py")
    (tmp_path / "my_tasks.py").write_text(module)
    rows = [{"country": c, "capital": k} for c, k in
            (("France", "Paris"), ("Peru", "Lima"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"))]
    for split in ("capitals_train", "capitals_val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "semi_causal"])
def test_own_task_trains_every_architecture_with_its_gin_file(tmp_path, arch):
    """The README's train command on the user's JSONL task plus `--gin_file=arch/*.gin`
    (2 steps), then its infer command on the run: the model is that architecture's."""
    import shlex
    import subprocess
    import sys

    commands = _own_task_dir(tmp_path).replace("\\\n", " ").strip().splitlines()
    run_dir = tmp_path / "run"
    train = shlex.split(commands[0].replace("/tmp/capitals", str(run_dir)))
    train = [*train[1:], f"--gin_file=arch/{arch}.gin", "--gin.train.total_steps=2",
             "--gin.train.evaluate=False"]
    infer = shlex.split(commands[2].replace("/tmp/capitals", str(run_dir)))[1:]
    for argv in (train, infer):
        proc = subprocess.run([sys.executable, "-m", "flan_jax", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    built = json.loads((run_dir / "model" / "config.json").read_text())
    assert built["architecture"] == ("semi_causal" if arch == "semi_causal" else "decoder_only")
    assert "> What is the capital of Peru?" in proc.stdout


def test_own_task_train_eval_infer_runs_as_written_from_a_fresh_directory(tmp_path):
    """The README's my_tasks.py and its three commands, in a new working directory, with
    the installed `flan-jax` script (which, unlike `python -m`, must be told about cwd)."""
    import os
    import shlex
    import subprocess
    import sys

    commands = _own_task_dir(tmp_path)
    run_dir = tmp_path / "run"
    script = Path(sys.executable).parent / "flan-jax"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    outputs = []
    for line in commands.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line.replace("/tmp/capitals", str(run_dir)))
        assert argv[0] == "flan-jax"
        proc = subprocess.run([str(script), *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
        outputs.append(proc.stdout)
    final = json.loads((run_dir / "eval" / "step_20.json").read_text())
    assert set(final) == {"capitals"}
    assert set(final["capitals"]) == {"capitals:zs_noopt", "capitals:fs_noopt"}
    assert "capitals:fs_noopt" in outputs[0] and "synth_" not in outputs[0]
    assert "capitals:zs_noopt" in outputs[1] and "synth_" not in outputs[1]
    assert "> What is the capital of Peru?" in outputs[2]


def test_evaluation_follows_the_run_plus_configured_groups_only():
    import gin

    import mixtures.default  # noqa: F401
    from flan_jax.train.evaluate import EvalConfig, follow_the_run

    try:
        gin.parse_config(["import flan_jax.train.loop",
                          "EvalConfig.max_tasks = 3", "EvalConfig.seed = 1"])
        cfg = EvalConfig()
        groups = follow_the_run(cfg, "flan_jax_default")
        assert list(groups) == ["flan_jax_default"]
        def sample():
            name = follow_the_run(cfg, "flan_jax_default")["flan_jax_default"]
            return sorted(t.name for t in seqio.get_mixture_or_task(name).tasks)

        tasks = sample()
        trained = {t.name for t in seqio.get_mixture_or_task("flan_jax_default").tasks}
        assert len(tasks) == 3 and set(tasks) <= trained and sample() == tasks  # seeded
        assert follow_the_run(cfg, "synth_weekday:zs_opt") == {
            "synth_weekday:zs_opt": "synth_weekday:zs_opt"}
        assert not cfg.extra_groups  # nothing held out unless configured
    finally:
        gin.clear_config()


def test_galactica_registration_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("### Scientific formats (Galactica)"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    rows = [{"smiles": s, "name": n} for s, n in
            (("CCO", "ethanol"), ("C(=O)O", "formic acid"), ("CC(=O)C", "acetone"))]
    for split in ("mols_train", "mols_val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        exec(compile(code, "README.md", "exec"), {})
        out = capsys.readouterr().out.splitlines()
        assert out == ["['molecules:zs_noopt', 'molecules:fs_noopt']",
                       "▁ [START_SMILES] C C ( = O ) C [END_SMILES]"]
        assert f"# {out[1]}" in code  # the README shows what it prints
        ds = seqio.get_mixture_or_task("molecules:zs_noopt").get_dataset(
            {"inputs": 64, "targets": 16}, split="validation", shuffle=False, use_cached=False)
        first = next(ds.as_numpy_iterator())
        vocab = seqio.get_mixture_or_task("molecules:zs_noopt").output_features[
            "inputs"].vocabulary
        assert vocab.decode(first["inputs"].tolist()) == first["inputs_pretokenized"].decode()
        smiles = re.search(r"\[START_SMILES\](.*)\[END_SMILES\]",
                           first["inputs_pretokenized"].decode()).group(1)
        pieces = [vocab.tokenizer.id_to_piece(int(i)) for i in first["inputs"]]
        start = pieces.index("[START_SMILES]")
        assert pieces[start + 1:start + 1 + len(smiles)] == list(smiles)
    finally:
        for name in ("molecules:zs_noopt", "molecules:fs_noopt"):
            seqio.TaskRegistry.remove(name)
