"""The README's task-registration example runs as written, with the shipped vocabulary."""

import json
import re
from pathlib import Path

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


def test_own_task_train_eval_infer_runs_as_written_from_a_fresh_directory(tmp_path):
    """The README's my_tasks.py and its three commands, in a new working directory, with
    the installed `flan-jax` script (which, unlike `python -m`, must be told about cwd)."""
    import os
    import shlex
    import subprocess
    import sys

    text = README.read_text()
    section = text[text.index("**Train on it, evaluate it, generate.**"):]
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert module.startswith("# my_tasks.py")
    (tmp_path / "my_tasks.py").write_text(module)
    rows = [{"country": c, "capital": k} for c, k in
            (("France", "Paris"), ("Peru", "Lima"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"))]
    for split in ("capitals_train", "capitals_val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
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
