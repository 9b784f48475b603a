"""JSONL rows by index: the offset index, blank and skipped lines, threads, many files; bad
bytes, cut lines, unknown fields and empty files named by file:line."""

import json
import logging
import re
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


def test_invalid_utf8_names_line_and_column_when_read(tmp_path):
    path = tmp_path / "u.jsonl"
    # é is one column (two bytes); an encoded surrogate (CESU-8) is not UTF-8 either.
    path.write_bytes(b'{"q": "ok"}\n{"q": "\xc3\xa9\xff"}\n{"q": "\xed\xa0\x80"}\n{"q": "z"}\n')
    rows = JsonlRows(path, {"q": str})
    assert len(rows) == 4 and rows[3] == {"q": "z"}  # indexing never decodes
    with pytest.raises(SourceError, match=r"^\S*u\.jsonl:2: invalid UTF-8 at column 9 "
                                          r"\(byte 0xff: invalid start byte\)$"):
        rows[1]
    with pytest.raises(SourceError, match=r"u\.jsonl:3: invalid UTF-8 at column 8 \(byte 0xed"):
        rows[2]


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"q": "a"}\r\n{"q": "b"}\r\n')
    rows = JsonlRows(path, {"q": str})
    assert [rows[0], rows[1]] == [{"q": "a"}, {"q": "b"}]


@pytest.mark.parametrize("lines,line,message,cut", [
    (['{"q": "a"}\n', '{"q": "b'], 2, "Unterminated string starting at column 7", True),
    (['{"q": "a", "n": [1, 2\r\n', '{"q": "b"}\r\n'], 1, "Expecting ',' delimiter at column 22",
     True),
    (['{"q": "a"}\n', '{"q": "a"; "n": 1}\n'], 2, "Expecting ',' delimiter at column 10", False),
])
def test_bad_json_names_its_column_and_a_cut_line(tmp_path, lines, line, message, cut):
    rows = JsonlRows(write(tmp_path / "cut.jsonl", lines), {"q": str})
    with pytest.raises(SourceError, match=rf"cut\.jsonl:{line}: invalid JSON "
                                          rf"\({re.escape(message)}\)") as e:
        [rows[i] for i in range(len(rows))]
    assert str(e.value).endswith("; the line looks truncated (it ends mid-value)") == cut


def test_unknown_fields_warn_once_per_file_or_fail_when_strict(tmp_path, caplog):
    path = write(tmp_path / "x.jsonl", ['{"q": "a"}\n', "\n", '{"q": "b", "id": 1}\n',
                                        '{"q": "c", "id": 2, "note": "n"}\n'])
    rows = JsonlRows(path, {"q": str})
    with caplog.at_level(logging.WARNING):
        read = [rows[i] for _ in range(2) for i in range(3)]  # every row twice: one warning
    assert read == [{"q": "a"}, {"q": "b"}, {"q": "c"}] * 2
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"{path}:3: field(s) ['id'] not in the schema ['q']: dropped "
                        "(said once per file; strict=True refuses them)"]
    strict = JsonlRows(path, {"q": str}, strict=True)
    assert strict[0] == {"q": "a"}
    with pytest.raises(SourceError, match=r"x\.jsonl:4: field\(s\) \['id', 'note'\] not in "
                                          r"the schema \['q'\]$"):
        strict[2]
    skipping = JsonlRows(path, {"q": str}, strict=True, skip_invalid=True)
    assert len(skipping) == 1 and skipping[0] == {"q": "a"}


@pytest.mark.parametrize("text,why", [("", "the file is empty"),
                                      ("\n  \r\n\n", "the file has only blank lines"),
                                      ("[1]\n{}\n", "all 2 are invalid; skip_invalid=True")])
def test_a_split_file_without_rows_fails_when_counted(tmp_path, text, why):
    path = write(tmp_path / "empty.jsonl", [text])
    rows = JsonlRows(path, {"q": str}, split="train", skip_invalid=True)  # counts lazily
    with pytest.raises(SourceError, match=rf"empty\.jsonl: no rows for the 'train' split "
                                          rf"\({re.escape(why)}"):
        len(rows)
    assert len(JsonlRows(path, {"q": str}, skip_invalid=True)) == 0  # no split: allowed


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


def test_the_same_relative_name_in_two_directories_reads_two_files(tmp_path, monkeypatch):
    """Handles are cached process-wide: a relative path is resolved when the rows are made,
    so a later working directory's file of the same name is never read by mistake."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text(json.dumps({"x": name}) + "\n")
    monkeypatch.chdir(tmp_path / "a")
    first = JsonlRows("train.jsonl", {"x": str})
    assert first[0] == {"x": "a"}
    monkeypatch.chdir(tmp_path / "b")
    second = JsonlRows("train.jsonl", {"x": str})
    assert second[0] == {"x": "b"} and first[0] == {"x": "a"}
    assert str(second.path) == "train.jsonl"  # messages keep the name as given
