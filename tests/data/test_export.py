"""flan-jax show / export: rendered text, atomic JSONL, bounded memory, --stats."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flan_jax import cli
from flan_jax.data import export, synthetic

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
TASK = "synth_arithmetic:cot_zs"
MIXTURE = "flan_jax_default"


@pytest.fixture(scope="module", autouse=True)
def _registered():
    export.import_modules()


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_show_prints_examples_with_task_format_and_template(capsys):
    assert cli.main(["show", TASK, "--n", "3", "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"] {TASK} | template ") == 3
    assert out.count("INPUTS:") == 3 and out.count("So the answer is") == 3


def test_export_of_a_task_writes_its_whole_split(tmp_path, capsys):
    out = tmp_path / "val.jsonl"
    assert cli.main(["export", TASK, "--split", "validation", "--out", str(out),
                     "--quiet"]) == 0
    rows = _lines(out)
    assert len(rows) == synthetic.SPLIT_SIZES["validation"]
    assert set(rows[0]) == {"inputs", "targets", "task", "format", "template_id"}
    assert {r["format"] for r in rows} == {"cot_zs"} and {r["task"] for r in rows} == {
        "synth_arithmetic"}
    assert "wrote 200 examples" in capsys.readouterr().out


def test_mixture_export_is_deterministic_and_stats_match_rates(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        assert cli.main(["export", MIXTURE, "--n", "3000", "--seed", "7", "--out", str(path),
                         "--stats", "--quiet"]) == 0
    assert a.read_bytes() == b.read_bytes()
    stats = capsys.readouterr().out
    assert "rate share" in stats and "exported" in stats and "49 tasks" in stats
    rows = _lines(a)
    assert len({r["task"] for r in rows}) == 12  # every training family, no held-out ones
    c = tmp_path / "c.jsonl"
    cli.main(["export", MIXTURE, "--n", "3000", "--seed", "8", "--out", str(c), "--quiet"])
    assert c.read_bytes() != a.read_bytes()


def test_stats_alone_prints_the_shares(capsys):
    assert cli.main(["export", "flan_jax_default_held_out", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "synth_weekday:zs_opt" in out and "16.67%" in out and "6 tasks" in out


@pytest.mark.parametrize("argv, match", [
    (["export", "nope", "--n", "1", "--out", "{d}/x.jsonl"], "no seqio task or mixture named 'nope'"),
    (["export", MIXTURE, "--out", "{d}/x.jsonl"], "is a mixture .* give --n"),
    (["export", MIXTURE, "--n", "1"], "give --out"),
    (["export", MIXTURE, "--n", "1", "--out", "{d}/missing/x.jsonl"], "no such directory"),
    (["show", TASK, "--split", "dev"], "has no split 'dev'"),
    (["show", TASK, "--module", "no_such_module"], "can't import task module"),
])
def test_bad_requests_are_named(argv, match, tmp_path, capsys):
    argv = [a.format(d=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    assert re.search(match, capsys.readouterr().err)


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    out.write_text("keep me\n")
    assert cli.main(["export", TASK, "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me\n"


def test_a_failing_export_leaves_nothing_behind_without_o_tmpfile(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    out = tmp_path / "x.jsonl"
    with pytest.raises(RuntimeError, match="boom"):
        def progress(count):
            if count == 50:
                raise RuntimeError("boom")
        export.export_jsonl(TASK, out, split="validation", progress=progress)
    assert list(tmp_path.iterdir()) == []
    export.export_jsonl(TASK, out, split="validation")
    assert len(_lines(out)) == 200 and list(tmp_path.iterdir()) == [out]


_MEASURE = """
import json, sys
from flan_jax.data import export
export.import_modules()
rss = {}
def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
def progress(count):
    if count in (10_000, 100_000):
        rss[count] = current_rss_mb()
r = export.export_jsonl("flan_jax_default", sys.argv[1], n=100_000, progress=progress)
print(json.dumps({"count": r.count, "rss": rss}))
"""


def test_export_of_100k_examples_keeps_memory_flat(tmp_path):
    out = tmp_path / "big.jsonl"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(out)], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["count"] == 100_000
    with out.open() as f:
        assert sum(1 for _ in f) == 100_000
    growth = result["rss"]["100000"] - result["rss"]["10000"]
    # 90k more examples (~30 MB of JSON) written: resident memory must not follow them.
    assert growth < 25, result


def _writing(pid, directory):
    """True once the exporter holds an (anonymous or temp) file open in `directory`."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(str(directory) in os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir))
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_export_leaves_no_partial_file(tmp_path, sig):
    out = tmp_path / "x.jsonl"
    out.write_text("previous export\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flan_jax", "export", MIXTURE, "--n", "10000000", "--out",
         str(out), "--overwrite", "--quiet"], env=ENV, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _writing(proc.pid, tmp_path):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.1)
        time.sleep(1.0)  # let it write a good part
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    if sig == signal.SIGTERM:
        assert "interrupted" in proc.stderr.read().decode()
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
    assert out.read_text() == "previous export\n"
