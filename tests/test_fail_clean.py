"""Bad input fails clean: exit 2, one line naming the culprit, no traceback, and nothing on
disk created or changed, because it is caught before the model is built (each case below
would otherwise have cost a model, a step-0 eval or a checkpoint restore first).

The cases run `cli.main` in this process (what the `flan-jax` script calls), each with its own
task module in a fresh working directory; `test_a_bad_row_mid_run...` runs a real training
subprocess with Grain workers, where the error crosses a process boundary.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import seqio

from flan_jax import cli

ROOT = Path(__file__).resolve().parents[1]
GOOD = "".join(json.dumps({"country": f"C{i}", "capital": f"K{i}"}) + "\n" for i in range(40))
MODULE = '''
from flan_jax.data.flan import FlanTask, register_flan_task
from flan_jax.data.sources import jsonl_source
from flan_jax.data.templates import Template
from flan_jax.data.vocab import default_vocabulary

source = jsonl_source({{"train": {train!r}, "validation": "validation.jsonl"}},
                      schema={{"country": str, "capital": str}})
register_flan_task(FlanTask(name={name!r}, source=source, templates=[
    Template("What is the capital of {{country}}?", "{{capital}}"),
    Template({template!r}, "{{capital}}")]), default_vocabulary(), replace=True)
'''
TINY = ["--gin_file=runs/demo.gin", "--gin.T5Config.d_model=16", "--gin.T5Config.num_heads=2",
        "--gin.T5Config.head_dim=8", "--gin.T5Config.d_ff=32",
        "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
        "--gin.DataConfig.batch_size=4", "--gin.DataConfig.workers=0",
        "--gin.train.total_steps=4",
        "--gin.DataConfig.task_feature_lengths={'inputs': 32, 'targets': 8}"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with a task module writer; gin and seqio cleaned after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "validation.jsonl").write_text(GOOD)
    names = []

    def task(name, *, train=GOOD.encode(), train_file="train.jsonl",
             template="Capital of {country}?"):
        if train is not None:
            (tmp_path / train_file).write_bytes(train)
        (tmp_path / f"{name}.py").write_text(MODULE.format(name=name, train=train_file,
                                                           template=template))
        names.append(name)
        return [f"--gin.DataConfig.mixture_or_task_name='{name}:zs_noopt'",
                f"--gin.DataConfig.module_imports=('{name}',)"]

    gin.clear_config()
    yield tmp_path, task
    gin.clear_config()
    for name in names:
        sys.modules.pop(name, None)
        for registered in [n for n in seqio.TaskRegistry.names() if n.split(":")[0] == name]:
            seqio.TaskRegistry.remove(registered)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


CASES = {
    # name: (setup(task) -> extra argv, the message the one line must hold)
    "wrong type on an existing run": (
        lambda task: ["--gin.train.total_steps='abc'", *task("fc_type")],
        "--gin.train.total_steps='abc': expected int, got str"),
    "misspelt mixture": (
        lambda task: [*task("fc_mix")[1:], "--gin.DataConfig.mixture_or_task_name="
                                             "'fc_mix:zs_noop'"],
        "'fc_mix:zs_noop' is not a registered seqio Mixture or Task (closest: fc_mix:zs_noopt"),
    "JSONL path that doesn't exist": (
        lambda task: task("fc_nofile", train=None, train_file="missing.jsonl"),
        "missing.jsonl: no such file (split 'train')"),
    "template naming a missing field": (
        lambda task: task("fc_field", template="Capital of {contry}?"),
        "task 'fc_field', template zs_noopt/1: field 'contry' is missing from the example"),
    "empty train file": (
        lambda task: task("fc_empty", train=b""),
        "train.jsonl: no rows for the 'train' split (the file is empty)"),
    "invalid UTF-8 in the first rows": (
        lambda task: task("fc_utf8", train=b'{"country": "\xff", "capital": "x"}\n'),
        "train.jsonl:1: invalid UTF-8 at column 14"),
    "invalid JSON in the first rows": (
        lambda task: task("fc_json", train=b'{"country": "A", "capital": "B"\n'),
        "train.jsonl:1: invalid JSON"),
    "a field of the wrong type": (
        lambda task: task("fc_ftype", train=b'{"country": "A", "capital": 5}\n' +
                          GOOD.encode()),
        "train.jsonl:1: field 'capital' should be str, got int 5"),
    "model_dir under a file": (
        lambda task: ["--gin.train.model_dir='afile/run'", *task("fc_dir")],
        "train.model_dir='afile/run': afile is a file, not a directory"),
    "%gin.REQUIRED left unset": (
        lambda task: ["--gin_file=runs/finetune.gin", *task("fc_req")],
        "train.init_from set to `%gin.REQUIRED` but not subsequently overridden. Give it "
        "with --gin.train.init_from=VALUE"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_to_train_fails_before_any_work_in_one_line(workdir, capsys, case):
    root, task = workdir
    (root / "afile").write_text("a file")
    (root / "run").mkdir()  # an existing run: its config.gin must survive
    (root / "run" / "config.gin").write_text("train.total_steps = 4\n")
    setup, message = CASES[case]
    extra = setup(task)
    before = _snapshot(root)
    argv = ["train", *TINY, "--gin.train.model_dir='run'", *extra]
    if case == "misspelt mixture" or case == "model_dir under a file":
        argv = ["train", *TINY, *extra]
    if case != "wrong type on an existing run":
        argv = [a for a in argv if a != "--gin.train.model_dir='run'"] + (
            [] if "model_dir" in " ".join(extra) else ["--gin.train.model_dir='new_run'"])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("flan-jax train: error: ") and message in lines[-1], err
    assert "Traceback" not in err
    assert _snapshot(root) == before  # config.gin unchanged, nothing written
    assert not (root / "new_run").exists()


def test_convert_to_a_regular_file_is_refused_before_reading_the_model(tmp_path, capsys):
    dst = tmp_path / "afile"
    dst.write_text("keep me")
    assert cli.main(["convert", str(tmp_path / "no-model"), str(dst)]) == 2
    # (the destination is checked first: the missing source is not even looked at)
    err = capsys.readouterr().err
    assert f"{dst} exists and is a file, not a directory" in err and "Traceback" not in err
    assert dst.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [dst]


def test_verbose_adds_the_traceback(workdir, capsys):
    _, task = workdir
    assert cli.main(["train", *TINY, "--gin.train.model_dir='r'", "--verbose",
                     *task("fc_verbose", train=b"")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(
        "flan-jax train: error: ")


@pytest.mark.parametrize("reader", ["grain", "seqio"])
def test_a_bad_row_mid_run_stops_the_run_once_with_its_line(tmp_path, reader):
    """Row 30 is bad: the first rows pass the check, training starts, and the row's error
    crosses from a Grain worker process (or a tf.data thread) to one line of the CLI."""
    rows = GOOD.splitlines(keepends=True)
    rows[29] = '{"country": "X", "capital": 5}\n'
    (tmp_path / "train.jsonl").write_text("".join(rows))
    (tmp_path / "validation.jsonl").write_text(GOOD)
    (tmp_path / "fc_mid.py").write_text(MODULE.format(name="fc_mid", train="train.jsonl",
                                                      template="Capital of {country}?"))
    argv = [a for a in TINY if "workers" not in a] + [
        "--gin.DataConfig.workers=2", "--gin.train.evaluate=False",
        "--gin.train.model_dir='run'", "--gin.DataConfig.shuffle=False",
        "--gin.DataConfig.mixture_or_task_name='fc_mid:zs_noopt'",
        "--gin.DataConfig.module_imports=('fc_mid',)", "--gin.train.total_steps=40",
        f"--gin.DataConfig.reader='{reader}'"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "flan_jax", "train", *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("flan-jax train: error: train.jsonl:30: field 'capital' should be str, "
                    "got int 5"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
