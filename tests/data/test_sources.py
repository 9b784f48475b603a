"""JSONL sources: typed rows, errors that name file:line, opt-in skipping, seqio streaming."""

import json
import logging
import re

import pytest

from flan_jax.data.sources import SourceError, jsonl_source, read_jsonl

SCHEMA = {"question": str, "options": list[str], "answer": str, "score": float}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"question": "2+2?", "options": ["3", "4"], "answer": "4", "score": 1, "extra": "x"}


def test_rows_are_typed_and_trimmed_to_the_schema_saying_so_once(tmp_path, caplog):
    path = write(tmp_path / "a.jsonl", [GOOD, "", GOOD])
    with caplog.at_level(logging.WARNING):
        rows = list(read_jsonl(path, SCHEMA))
    assert rows == [{k: v for k, v in GOOD.items() if k != "extra"}] * 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:1: field(s) ['extra'] not in the schema ['answer', 'options', 'question', "
        "'score']: dropped (said once per file; strict=True refuses them)"]


def test_strict_refuses_fields_the_schema_lacks(tmp_path):
    trimmed = {k: v for k, v in GOOD.items() if k != "extra"}
    path = write(tmp_path / "a.jsonl", [trimmed, GOOD])
    with pytest.raises(SourceError, match=r"a\.jsonl:2: field\(s\) \['extra'\] not in the schema"):
        list(read_jsonl(path, SCHEMA, strict=True))
    assert list(read_jsonl(path, SCHEMA, strict=True, skip_invalid=True)) == [trimmed]
    rows = jsonl_source({"train": path}, SCHEMA, strict=True).random_access("train")
    assert rows[0] == trimmed
    with pytest.raises(SourceError, match=r"a\.jsonl:2: field\(s\) \['extra'\] not in the schema"):
        rows[1]


@pytest.mark.parametrize("bad,message", [
    ('{"question": "q",', "invalid JSON (Expecting property name enclosed in double quotes at "
                          "column 18); the line looks truncated"),  # json: "line 2 column 1"
    ('{"question": "q"; "answer": "a"}', "invalid JSON (Expecting ',' delimiter at column 17)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ({"question": "q", "options": ["a"], "score": 1.0}, "missing field 'answer'"),
    ({**GOOD, "options": "a, b"}, "field 'options' should be list[str], got str"),
    ({**GOOD, "score": True}, "field 'score' should be float, got bool"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "bad.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(SourceError, match=rf"bad\.jsonl:3: {re.escape(message)}"):
        list(read_jsonl(path, SCHEMA))


def test_skip_invalid_is_opt_in_and_logged(tmp_path, caplog):
    path = write(tmp_path / "mixed.jsonl", [GOOD, "[1]", GOOD, "{"])
    with caplog.at_level(logging.WARNING):
        assert len(list(read_jsonl(path, SCHEMA, skip_invalid=True))) == 2
    assert "skipped 2 invalid row(s)" in caplog.text


def test_schema_and_file_errors(tmp_path):
    with pytest.raises(SourceError, match="type dict is not one of"):
        list(read_jsonl(write(tmp_path / "x.jsonl", [GOOD]), {"q": dict}))
    with pytest.raises(SourceError, match="missing.jsonl: cannot open"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    with pytest.raises(SourceError, match=r"missing.jsonl: no such file \(split 'train'\)"):
        jsonl_source({"train": tmp_path / "missing.jsonl"}, SCHEMA)


@pytest.mark.parametrize("text,why", [("", "the file is empty"), ("\n \n", "only blank lines")])
def test_a_split_without_rows_is_named_when_counted(tmp_path, text, why):
    (tmp_path / "train.jsonl").write_text(text)
    source = jsonl_source({"train": tmp_path / "train.jsonl"}, SCHEMA)  # reads nothing yet
    with pytest.raises(SourceError, match=rf"train\.jsonl: no rows for the 'train' split "
                                          rf"\(.*{why}\)$"):
        source.num_input_examples("train")


def test_seqio_source_streams_typed_tensors(tmp_path):
    train = write(tmp_path / "train.jsonl", [GOOD] * 3)
    source = jsonl_source({"train": train, "validation": [train, train]}, SCHEMA)
    assert sorted(source.splits) == ["train", "validation"]
    rows = list(source.get_dataset("validation", shuffle=False).as_numpy_iterator())
    assert len(rows) == 6
    assert rows[0]["question"] == b"2+2?" and list(rows[0]["options"]) == [b"3", b"4"]
    assert rows[0]["score"] == pytest.approx(1.0)


def test_seqio_source_surfaces_the_bad_line(tmp_path):
    train = write(tmp_path / "train.jsonl", [GOOD, {"question": 1}])
    ds = jsonl_source({"train": train}, SCHEMA).get_dataset("train", shuffle=False)
    # tf.data wraps the error, but its text keeps file:line and the reason.
    with pytest.raises(Exception, match=r"train\.jsonl:2: field 'question' should be str"):
        list(ds.as_numpy_iterator())


def test_a_remembered_row_error_never_stands_in_for_an_unrelated_tf_error():
    """user_errors_from_tf re-raises our error only out of TF's wrapper of it."""
    import tensorflow as tf

    from flan_jax.data import sources

    def bad():
        raise SourceError("rows.jsonl:3: field 'x' is missing")
        yield  # (a generator)

    ds = sources.from_generator(bad, tf.TensorSpec((), tf.int32))
    with pytest.raises(SourceError, match="rows.jsonl:3"):
        with sources.user_errors_from_tf():
            next(iter(ds))
    ds = sources.from_generator(bad, tf.TensorSpec((), tf.int32))
    with pytest.raises(Exception):  # remembered again, then an unrelated TF error
        next(iter(ds))
    with pytest.raises(tf.errors.InvalidArgumentError, match="unrelated"):
        with sources.user_errors_from_tf():
            tf.debugging.assert_equal(1, 2, message="unrelated")
