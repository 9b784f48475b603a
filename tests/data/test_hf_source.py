"""hf_source over local JSONL, CSV, parquet and save_to_disk data, offline: types and errors."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before `datasets` reads its config

import json
import subprocess
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from flan_jax.data.hf_source import hf_source  # noqa: E402
from flan_jax.data.sources import SourceError  # noqa: E402

ROWS = [
    {"question": "2+2?", "answer": 4, "scores": [0.5, 1.0], "ok": True, "tags": ["math"]},
    {"question": "capital of France?", "answer": 7, "scores": [], "ok": False, "tags": []},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows_of(source, split="train"):
    return list(source.get_dataset(split, shuffle=False).as_numpy_iterator())


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


def test_jsonl_splits_values_and_dtypes(tmp_path, cache):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    dev = write_jsonl(tmp_path / "dev.jsonl", ROWS[:1])
    source = hf_source("json", data_files={"train": train, "validation": [dev, dev]},
                       cache_dir=cache)
    assert sorted(source.splits) == ["train", "validation"]
    assert source.num_input_examples("train") == 2
    assert source.num_input_examples("validation") == 2
    first, second = rows_of(source)
    assert first["question"] == b"2+2?" and first["answer"].dtype == np.int64
    assert first["answer"] == 4 and first["ok"].dtype == np.bool_ and bool(first["ok"])
    assert first["scores"].dtype == np.float32 and list(first["scores"]) == [0.5, 1.0]
    assert list(first["tags"]) == [b"math"]
    assert second["scores"].shape == (0,) and second["question"] == b"capital of France?"
    assert len(rows_of(source, "validation")) == 2
    # splits= keeps only those; an unknown one is named with what exists.
    assert hf_source("json", data_files={"train": train, "validation": dev},
                     splits=["validation"], cache_dir=cache).splits == ("validation",)
    with pytest.raises(SourceError, match=r"no split\(s\) \['test'\] \(has \['train'\]\)"):
        hf_source("json", data_files=train, splits=["test"], cache_dir=cache)


def test_csv_and_parquet_files(tmp_path, cache):
    csv = tmp_path / "t.csv"
    csv.write_text("text,label,weight\nhello,1,0.5\nbye,0,2\n")
    rows = rows_of(hf_source("csv", data_files=str(csv), cache_dir=cache))
    assert [(r["text"], r["label"], r["weight"]) for r in rows] == [
        (b"hello", 1, np.float32(0.5)), (b"bye", 0, np.float32(2.0))]

    table = pa.table({"text": ["a", "b", "c"], "ids": [[1, 2], [3], []],
                      "small": pa.array([1, 2, 3], pa.int8())})
    pq.write_table(table, tmp_path / "t.parquet")
    source = hf_source("parquet", data_files={"test": str(tmp_path / "t.parquet")},
                       cache_dir=cache)
    assert list(source.splits) == ["test"] and source.num_input_examples("test") == 3
    rows = rows_of(source, "test")
    assert [list(r["ids"]) for r in rows] == [[1, 2], [3], []]
    assert rows[0]["small"].dtype == np.int64 and rows[2]["text"] == b"c"


def test_save_to_disk_dirs_with_class_labels(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [0, 1, 1]},
                                            features=features),
        "validation": datasets.Dataset.from_dict({"text": ["w"], "label": [1]},
                                                 features=features)})
    dd.save_to_disk(str(tmp_path / "dict"))
    source = hf_source(tmp_path / "dict")
    assert sorted(source.splits) == ["train", "validation"]
    assert source.num_input_examples("train") == 3
    assert [(r["text"], r["label"]) for r in rows_of(source)] == [(b"x", 0), (b"y", 1), (b"z", 1)]

    # A single saved Dataset is one split, named as recorded ("train" if it has none).
    datasets.Dataset.from_dict({"text": ["w"], "label": [1]}, features=features,
                               split="validation").save_to_disk(str(tmp_path / "one"))
    one = hf_source(str(tmp_path / "one"))
    assert list(one.splits) == ["validation"] and rows_of(one, "validation")[0]["label"] == 1
    with pytest.raises(SourceError, match="save_to_disk directory takes no data_files"):
        hf_source(str(tmp_path / "one"), streaming=True)


def test_schema_selects_and_widens_columns(tmp_path, cache):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    source = hf_source("json", data_files=path, schema={"answer": float, "question": str},
                       cache_dir=cache)
    rows = rows_of(source)
    assert set(rows[0]) == {"answer", "question"}
    assert rows[0]["answer"].dtype == np.float32 and rows[1]["answer"] == 7.0
    with pytest.raises(SourceError, match=r"a\.jsonl.*split 'train': no column 'missing'"):
        hf_source("json", data_files=path, schema={"missing": str}, cache_dir=cache)
    with pytest.raises(SourceError, match=r"column 'question' is str but the schema wants int"):
        hf_source("json", data_files=path, schema={"question": int}, cache_dir=cache)


def test_unsupported_column_types_are_named(tmp_path, cache):
    path = write_jsonl(tmp_path / "n.jsonl", [{"q": "x", "meta": {"source": "web"}}])
    with pytest.raises(SourceError, match=r"n\.jsonl.*split 'train': column 'meta' has type "
                                          r"\{'source': Value\('string'\)\}"):
        hf_source("json", data_files=path, cache_dir=cache)
    # ...and a schema that leaves it out works.
    assert rows_of(hf_source("json", data_files=path, schema={"q": str}, cache_dir=cache)) == [
        {"q": b"x"}]


def test_nulls_name_split_row_and_column(tmp_path, cache):
    path = write_jsonl(tmp_path / "gaps.jsonl", [{"q": "a", "n": 1}, {"q": "b"}])
    ds = hf_source("json", data_files={"dev": path}, cache_dir=cache).get_dataset(
        "dev", shuffle=False)
    with pytest.raises(Exception, match=r"gaps\.jsonl.* split 'dev': row 1: column 'n' is null"):
        list(ds.as_numpy_iterator())


def test_streaming_has_no_counts_but_the_same_rows(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", ROWS)
    source = hf_source("json", data_files=path, streaming=True)
    assert source.num_input_examples("train") is None
    assert [r["question"] for r in rows_of(source)] == [b"2+2?", b"capital of France?"]
    shuffled = source.get_dataset("train", shuffle=True, seed=0)
    assert sorted(r["answer"] for r in shuffled.as_numpy_iterator()) == [4, 7]


def test_load_errors_name_the_files(tmp_path, cache):
    with pytest.raises(SourceError, match=r"json \(data_files='.*nope\.jsonl'\): cannot load"):
        hf_source("json", data_files=str(tmp_path / "nope.jsonl"), cache_dir=cache)


def test_missing_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'flan-jax\[hf\]'"):
        hf_source("json", data_files="x.jsonl")


def test_importing_flan_jax_does_not_import_datasets():
    code = ("import sys, flan_jax, flan_jax.data, flan_jax.data.hf_source; "
            "print('datasets' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_random_access_rows_are_the_streamed_rows_as_python(tmp_path, cache):
    import pickle

    from flan_jax.data.sources import random_access

    path = write_jsonl(tmp_path / "r.jsonl", ROWS)
    source = hf_source("json", data_files=path, cache_dir=cache,
                       schema={"question": str, "answer": float, "scores": list[float],
                               "ok": bool, "tags": list[str]})
    rows = random_access(source, "train")
    got = [rows[i] for i in range(len(rows))]
    assert got == [{**r, "answer": float(r["answer"])} for r in ROWS]
    assert type(got[0]["answer"]) is float and type(got[0]["ok"]) is bool
    streamed = hf_source("json", data_files=path, streaming=True).get_dataset("train",
                                                                              shuffle=False)
    assert [r["question"].decode() for r in streamed.as_numpy_iterator()] == [
        g["question"] for g in got]
    # The dataset is memory-mapped from its Arrow cache file: pickles by reference.
    big = write_jsonl(tmp_path / "big.jsonl", [{"q": "x" * 1000, "n": i} for i in range(2000)])
    big_rows = random_access(hf_source("json", data_files=big, cache_dir=cache), "train")
    blob = pickle.dumps(big_rows)
    assert len(blob) < 10_000 < os.path.getsize(big) and pickle.loads(blob)[1999]["n"] == 1999
    with pytest.raises(IndexError):
        rows[2]


def test_random_access_nulls_name_split_row_and_column(tmp_path, cache):
    from flan_jax.data.sources import random_access

    path = write_jsonl(tmp_path / "gaps.jsonl", [{"q": "a", "n": 1}, {"q": "b"}])
    rows = random_access(hf_source("json", data_files={"dev": path}, cache_dir=cache), "dev")
    assert rows[0] == {"q": "a", "n": 1}
    with pytest.raises(SourceError, match=r"gaps\.jsonl.* split 'dev': row 1: column 'n' is null"):
        rows[1]
