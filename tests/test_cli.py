"""The `flan-jax` command as users start it: a real subprocess."""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open

from tests.model.hf_reference import make_hf_model, save_hf_model


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "flan_jax", *args], capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_commands_and_convert_explains_itself():
    assert "convert" in run_cli("--help").stdout
    out = run_cli("convert", "--help").stdout
    for flag in ("--to", "--dtype", "--overwrite", "model.safetensors"):
        assert flag in out


def test_convert_hf_to_flan_jax_and_back(tmp_path):
    hf_dir = save_hf_model(make_hf_model("t5_1_1", seed=0), tmp_path / "hf")
    out = run_cli("convert", str(hf_dir), str(tmp_path / "fj")).stdout
    assert "wrote flan-jax model" in out
    assert json.loads((tmp_path / "fj" / "config.json").read_text())["format"] == "flan-jax"
    out = run_cli("convert", str(tmp_path / "fj"), str(tmp_path / "back")).stdout
    assert "wrote hf model" in out
    assert (tmp_path / "back" / "model.safetensors").exists()
    # A second write to the same place is refused without --overwrite.
    proc = run_cli("convert", str(tmp_path / "fj"), str(tmp_path / "back"), check=False)
    assert proc.returncode == 2 and "exists and is not empty" in proc.stderr
    run_cli("convert", str(tmp_path / "fj"), str(tmp_path / "back"), "--overwrite",
            "--dtype", "bfloat16")
    with safe_open(str(tmp_path / "back" / "model.safetensors"), framework="np") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"bfloat16"}


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/dir", "/tmp/x"], "no such model directory"),
])
def test_convert_errors_are_clear(args, message):
    proc = run_cli("convert", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_eval_table_compares_with_step_0():
    from flan_jax.train.printout import eval_table as _eval_table

    now = {"held_in": {"synth_a:zs_opt": {"accuracy": 50.0}, "synth_b:zs_opt": {"accuracy": 10.0}}}
    start = {"held_in": {"synth_a:zs_opt": {"accuracy": 0.0}, "synth_b:zs_opt": {"accuracy": 0.0}}}
    table = _eval_table(now, start).splitlines()
    assert table[0] == "[held_in]"
    assert table[1].split() == ["synth_a:zs_opt", "0.0", "->", "50.0"]
    assert table[-1].split() == ["mean", "accuracy", "0.0", "->", "30.0"]
    assert _eval_table(now).splitlines()[-1].split() == ["mean", "accuracy", "30.0"]


def test_eval_table_shows_rank_classification_against_step_0():
    from flan_jax.train.printout import eval_table as _eval_table

    now = {"held_in": {"a:zs_opt": {"accuracy": 40.0, "rank_accuracy": 60.0},
                       "a:zs_noopt": {"accuracy": 20.0}}}
    start = {"held_in": {"a:zs_opt": {"accuracy": 0.0, "rank_accuracy": 25.0},
                         "a:zs_noopt": {"accuracy": 0.0}}}
    rows = {line.split()[0]: line.split()[1:] for line in _eval_table(now, start).splitlines()[1:]}
    assert rows["a:zs_opt"] == ["0.0", "->", "40.0", "(rank", "classification", "25.0", "->",
                                "60.0)"]
    assert rows["a:zs_noopt"] == ["0.0", "->", "20.0"]
    assert _eval_table(now).splitlines()[2].split()[-2:] == ["classification", "60.0)"]
