"""prepare_flan2022: grouped ArrayRecord + index against the parquet rows, atomic, reused, CLI."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("array_record")

from flan_jax.data import prepare as P  # noqa: E402
from flan_jax.errors import SourceError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEYS = [("anli_r1", "zs_opt"), ("story/cloze", "fs_opt"), ("anli_r1", "fs_noopt")]


def make_rows(n=30, interleaved=True):
    """n rows over KEYS: round robin (interleaved) or each key one run (sorted)."""
    keys = [KEYS[i % 3] for i in range(n)] if interleaved else sorted(KEYS * (n // 3))
    return [{"inputs": f"{t} {tt} q{i}", "targets": f"a{i}", "task_name": t,
             "template_type": tt, "task_source": "x"} for i, (t, tt) in enumerate(keys)]


def write_parquet(path, rows, row_group_size=7):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def columns(rows):
    return [{k: r[k] for k in P.COLUMNS} for r in rows]


@pytest.mark.parametrize("interleaved", [True, False])
def test_rows_by_key_and_all_rows_match_the_file(tmp_path, interleaved):
    rows = make_rows(interleaved=interleaved)
    path = write_parquet(tmp_path / "s.parquet", rows)
    result = P.prepare_flan2022(path, tmp_path / "out", progress=False)
    assert result.num_rows == 30 and result.counts(path) == {k: 10 for k in KEYS}
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    # Grouped by key in order of first appearance: one [start, count] range per key.
    assert index["files"][0]["keys"] == (
        {"anli_r1": {"zs_opt": [0, 10], "fs_noopt": [20, 10]}, "story/cloze": {"fs_opt": [10, 10]}}
        if interleaved else
        {"anli_r1": {"fs_noopt": [0, 10], "zs_opt": [10, 10]}, "story/cloze": {"fs_opt": [20, 10]}})
    assert (index["files"][0]["positions"] is None) == (not interleaved)  # sorted: one pass
    for key in KEYS:
        got = result.rows(path, [key])
        assert [got[i] for i in range(len(got))] == columns(
            r for r in rows if (r["task_name"], r["template_type"]) == key)
    for keys in (None, KEYS[:2]):  # several keys: merged back into file order
        got = result.rows(path, keys)
        want = [r for r in rows if keys is None or (r["task_name"], r["template_type"]) in keys]
        assert [got[i] for i in range(len(got))] == columns(want)
    with pytest.raises(IndexError):
        result.rows(path, [KEYS[0]])[10]
    assert len(result.rows(path, [("nope", "zs_opt")])) == 0


def test_pickled_rows_are_small_and_load_without_tensorflow(tmp_path):
    rows = make_rows(300)
    path = write_parquet(tmp_path / "s.parquet", rows, row_group_size=50)
    result = P.prepare_flan2022(path, tmp_path / "out", progress=False)
    one = result.rows(path, [KEYS[1]])
    one[0]  # opens the (shared) reader: it must not travel
    assert len(pickle.dumps(one)) < 1000
    merged = result.rows(path, KEYS[:2])  # 200 record numbers, int64
    assert len(pickle.dumps(merged)) < 1000 + 8 * 200
    wrapped = P.Flan2022Rows(one, {"fs_opt": "fs_opt"})
    blob = tmp_path / "rows.pkl"
    blob.write_bytes(pickle.dumps(wrapped))
    code = ("import pickle, sys; r = pickle.load(open(sys.argv[1], 'rb')); "
            "print(len(r), r[3]['inputs'], r[3]['format'], "
            "any(m in sys.modules for m in ('tensorflow', 'seqio')))")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split()
    assert out == ["100", "story/cloze", "fs_opt", "q10", "fs_opt", "False"]


def test_an_interrupted_prepare_leaves_nothing_and_the_next_succeeds(tmp_path, monkeypatch):
    a = write_parquet(tmp_path / "a.parquet", make_rows())
    b = write_parquet(tmp_path / "b.parquet", make_rows(12))
    real = P._write_one

    def fail_on_b(path, *args):
        if path.name == "b.parquet":
            raise KeyboardInterrupt  # as a Ctrl-C midway would
        return real(path, *args)

    monkeypatch.setattr(P, "_write_one", fail_on_b)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_flan2022([a, b], tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a.parquet", "b.parquet"]  # no dir, no temp
    monkeypatch.setattr(P, "_write_one", real)
    result = P.prepare_flan2022([a, b], tmp_path / "out", progress=False)
    assert result.num_rows == 42 and P.load_prepared(tmp_path / "out", [b, a]) is not None


def test_a_result_is_reused_until_an_input_changes(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "s.parquet", make_rows())
    P.prepare_flan2022(path, tmp_path / "out", progress=False)
    monkeypatch.setattr(P, "_write_one", lambda *a: pytest.fail("prepared again"))
    assert P.prepare_flan2022(path, tmp_path / "out", progress=False).num_rows == 30
    monkeypatch.undo()
    write_parquet(path, make_rows(9))  # new size and mtime: out of date
    assert P.load_prepared(tmp_path / "out", [path]) is None
    result = P.prepare_flan2022(path, tmp_path / "out", progress=False)
    assert result.num_rows == 9 and len(result.rows(path, [KEYS[0]])) == 3
    # The default directory depends on the inputs and moves with $FLAN_JAX_CACHE.
    monkeypatch.setenv("FLAN_JAX_CACHE", str(tmp_path / "cache"))
    first = P.default_prepared_dir([path])
    assert first.parent == tmp_path / "cache" / "prepared"
    write_parquet(path, make_rows(12))
    assert P.default_prepared_dir([path]) != first


def test_errors_name_the_file_and_row(tmp_path):
    rows = make_rows()
    rows[9] = {**rows[9], "template_type": None}
    with pytest.raises(SourceError, match=r"keys\.parquet: row 9: column 'template_type' is "
                                          "null"):
        P.prepare_flan2022(write_parquet(tmp_path / "keys.parquet", rows), tmp_path / "o1",
                           progress=False)
    assert not (tmp_path / "o1").exists()
    rows = make_rows()
    rows[16] = {**rows[16], "targets": None}  # kept; fails where it is read
    path = write_parquet(tmp_path / "text.parquet", rows)
    got = P.prepare_flan2022(path, tmp_path / "o2", progress=False).rows(path, [KEYS[1]])
    assert got[4]["inputs"] == "story/cloze fs_opt q13"
    with pytest.raises(SourceError, match=r"text\.parquet: row 16: column 'targets' is null"):
        got[5]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SourceError, match=r"mine: exists, is not empty and holds no index"):
        P.prepare_flan2022(path, tmp_path / "mine", progress=False)
    with pytest.raises(SourceError, match=r"rows\.jsonl: not a \.parquet file"):
        P.prepare_flan2022(write_jsonl(tmp_path / "rows.jsonl"), tmp_path / "o3")


def write_jsonl(path):
    path.write_text("")
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flan_jax", "prepare", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_cli_prepares_into_out(tmp_path):
    path = write_parquet(tmp_path / "s.parquet", make_rows())
    proc = run_cli("--flan2022", path, "--out", tmp_path / "out", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"wrote: 30 rows of 1 file(s), 3 (task_name, template_type) "
                                   f"groups, in {tmp_path / 'out'}")
    assert P.load_prepared(tmp_path / "out", [path]).counts(path) == {k: 10 for k in KEYS}


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    proc = run_cli("--flan2022", tmp_path / "none.parquet", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"flan-jax prepare: error: {tmp_path / 'none.parquet'}: no such file")
    assert not (tmp_path / "out").exists()
