"""Every `flan-jax ...` command in docs/tpu_pods.md, docs/gpus.md and README.md parses: its
flags, its gin files (which must exist) and bindings; the `plan` ones run for real (no
allocation)."""

import re
import shlex
from pathlib import Path

import gin
import pytest

import flan_jax.train.loop  # noqa: F401 - registers every configurable, as the CLI does
from flan_jax import cli, gin_utils

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = ("tpu_pods.md", "gpus.md")
CHECKED = (*DOC_FILES, "../README.md")
_COMMAND = re.compile(r"(?:^|\s)(flan-jax\s+(?:train|eval|infer|plan|show|export|convert)\b.*)")


def doc_commands(name):
    """The `flan-jax` command lines of a doc's fenced code blocks (continuations joined)."""
    text = (DOCS / name).read_text()
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            match = _COMMAND.search(line)
            if match and not line.lstrip().startswith("#") and "--help" not in line:
                out.append(match.group(1).strip())
    return out


COMMANDS = [(name, cmd) for name in CHECKED for cmd in doc_commands(name)]


def test_the_docs_have_train_and_plan_commands():
    for name in DOC_FILES:
        kinds = {shlex.split(cmd)[1] for cmd in doc_commands(name)}
        assert {"train", "plan"} <= kinds, (name, kinds)
    gpu = " ".join(doc_commands("gpus.md"))
    assert "--coordinator_address" in gpu and "--process_id 1" in gpu


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_parses(doc, command, clean_gin, capsys):
    argv = shlex.split(command, comments=True)[1:]
    rest, files, bindings = gin_utils.split_gin_args(argv)
    args = cli.build_parser().parse_args(rest)
    for f in files:
        gin_utils.resolve_gin_file(f)  # raises, naming the file, if it doesn't exist
    gin_utils.parse(files, bindings, finalize=False)
    if args.command == "plan":
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "per device" in out and "total" in out
        if args.device_memory:
            assert "fits" in out or "does NOT fit" in out


def test_a_gs_model_dir_stops_at_once_pointing_to_the_docs(tmp_path):
    """docs/tpu_pods.md promises this: gs:// is refused, not turned into a local `gs:` dir."""
    import subprocess
    import sys

    from tests.train.test_loop import ENV
    proc = subprocess.run(
        [sys.executable, "-m", "flan_jax", "train", "--gin_file=runs/demo.gin",
         "--gin.train.model_dir='gs://my-bucket/run'", "--gin.train.total_steps=1"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.model_dir='gs://my-bucket/run'" in proc.stderr and "gcsfuse" in proc.stderr
    assert not (tmp_path / "gs:").exists()
