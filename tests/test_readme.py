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
