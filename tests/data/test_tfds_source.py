"""tfds_source over a tiny ArrayRecord dataset built here: rows by index, types, pickling."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from flan_jax.data.sources import SourceError, random_access  # noqa: E402
from flan_jax.data.tfds_source import tfds_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class FlanJaxTinyQa(tfds.core.GeneratorBasedBuilder):
    # A one-part module name: for a class inside a package, tfds 4.9's `code_path` needs
    # the `importlib_resources` backport, which tfds doesn't install.
    __module__ = "flan_jax_tiny_qa"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(), "answer": np.int64, "score": np.float32,
            "ok": np.bool_, "label": tfds.features.ClassLabel(names=["no", "yes"]),
            "tags": tfds.features.Sequence(tfds.features.Text()),
            "image": tfds.features.Tensor(shape=(2, 2), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"question": f"q{i}", "answer": i, "score": i / 2, "ok": i % 2 == 0,
                      "label": i % 2, "tags": [f"t{j}" for j in range(i)],
                      "image": np.full((2, 2), i, np.uint8)}


SCHEMA = {"question": str, "answer": int, "score": float, "ok": bool, "label": int,
          "tags": list[str]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    FlanJaxTinyQa(data_dir=str(path), file_format="array_record").download_and_prepare()
    return str(path)


def expected(i):
    return {"question": f"q{i}", "answer": i, "score": i / 2, "ok": i % 2 == 0,
            "label": i % 2, "tags": [f"t{j}" for j in range(i)]}


def test_rows_by_index_are_python_and_match_the_stream(data_dir):
    source = tfds_source("flan_jax_tiny_qa", data_dir=data_dir, schema=SCHEMA)
    assert sorted(source.splits) == ["test", "train"] and source.num_input_examples("train") == 6
    rows = random_access(source, "train")
    got = [rows[i] for i in range(len(rows))]
    assert sorted(got, key=lambda r: r["answer"]) == [expected(i) for i in range(6)]
    assert {type(v) for r in got for k, v in r.items() if k != "tags"} <= {str, int, float,
                                                                           bool}
    streamed = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    assert [s["question"].decode() for s in streamed] == [g["question"] for g in got]
    assert [list(s["tags"]) for s in streamed] == [[t.encode() for t in g["tags"]] for g in got]
    assert streamed[0]["score"].dtype == np.float32
    with pytest.raises(IndexError):
        rows[6]


def test_schema_selects_widens_and_names_what_it_cannot(data_dir):
    source = tfds_source("flan_jax_tiny_qa", data_dir=data_dir, splits=["test"],
                         schema={"answer": float, "question": str})
    assert list(source.splits) == ["test"]
    assert sorted(random_access(source, "test")[i]["answer"] for i in range(2)) == [0.0, 1.0]
    with pytest.raises(SourceError, match=r"flan_jax_tiny_qa .*field 'image' is Tensor"):
        tfds_source("flan_jax_tiny_qa", data_dir=data_dir)
    with pytest.raises(SourceError, match=r"field 'question' is str but the schema wants int"):
        tfds_source("flan_jax_tiny_qa", data_dir=data_dir, schema={"question": int})
    with pytest.raises(SourceError, match=r"no field 'nope'"):
        tfds_source("flan_jax_tiny_qa", data_dir=data_dir, schema={"nope": str})
    with pytest.raises(SourceError, match=r"no_such_set .*: cannot load"):
        tfds_source("no_such_set", data_dir=data_dir)


def test_pickled_rows_are_small_and_reopen_in_a_fresh_process(data_dir, tmp_path):
    rows = random_access(tfds_source("flan_jax_tiny_qa", data_dir=data_dir, schema=SCHEMA),
                         "train")
    first = rows[0]
    blob = pickle.dumps(rows)
    assert len(blob) < 1_000  # (name, data_dir, split, types): not the TFDS builder
    (tmp_path / "rows.pkl").write_bytes(blob)
    # A fresh process has no FlanJaxTinyQa class: TFDS reads the prepared files by name.
    code = ("import pickle, sys; r = pickle.load(open(sys.argv[1], 'rb')); "
            "print(r[0]['question'], len(r), 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.pkl")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == [first["question"], "6", "False"]
