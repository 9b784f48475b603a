"""JSONL rows by index: the offset index, blank and skipped lines, threads, many files."""

import json
import threading

import numpy as np
import pytest

from flan_jax.data.rows import ConcatRows, JsonlRows
from flan_jax.errors import SourceError


def write(path, lines):
    path.write_text("".join(lines))
    return path


def test_rows_by_index_skip_blank_lines_and_name_bad_lines(tmp_path):
    path = write(tmp_path / "a.jsonl", ['{"q": "a"}\n', "\n", "  \r\n", '{"q": "b"}\n',
                                        '{"q": 3}\n', '{"q": "c"}'])  # no final newline
    rows = JsonlRows(path, {"q": str})
    assert len(rows) == 4 and rows[0] == {"q": "a"} and rows[1] == {"q": "b"}
    assert rows[3] == {"q": "c"}
    with pytest.raises(SourceError, match=r"a\.jsonl:5: field 'q' should be str"):
        rows[2]
    skipping = JsonlRows(path, {"q": str}, skip_invalid=True)
    assert [skipping[i]["q"] for i in range(len(skipping))] == ["a", "b", "c"]
    with pytest.raises(IndexError):
        rows[4]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"q": "ok"}\n{"q": "\xff"}\n')
    with pytest.raises(SourceError, match=r"u\.jsonl:2: invalid UTF-8"):
        JsonlRows(path, {"q": str})[1]


def test_threads_read_the_rows_they_ask_for(tmp_path):
    files = [write(tmp_path / f"{f}.jsonl", [json.dumps({"q": f"{f}-{i}"}) + "\n"
                                              for i in range(200)]) for f in range(80)]
    rows = ConcatRows([JsonlRows(p, {"q": str}) for p in files])  # 80 files > open-file cap
    wrong = []

    def read(seed):
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, len(rows), 2000).tolist():
            if rows[i]["q"] != f"{i // 200}-{i % 200}":
                wrong.append(i)

    threads = [threading.Thread(target=read, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
