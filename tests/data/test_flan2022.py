"""Published Flan 2022 rows: parquet/JSONL checks, per-task Tasks by hand count, capped mixing."""

import json
import logging
import pickle
import re

import numpy as np
import pytest
import seqio

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from flan_jax.data import flan2022 as G  # noqa: E402
from flan_jax.data import mixing as M  # noqa: E402
from flan_jax.data.sources import SourceError, random_access  # noqa: E402

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 64, "targets": 16}
# (task_name, template_type) -> rows. "story/cloze:1.0" has characters seqio names can't hold.
COUNTS = {("anli_r1", "zs_opt"): 12, ("anli_r1", "fs_opt"): 12,
          ("story/cloze:1.0", "zs_opt"): 3, ("story/cloze:1.0", "zs_noopt"): 2,
          ("story/cloze:1.0", "fs_opt"): 3}


def make_rows(counts=COUNTS):
    rows = []
    for (task, ttype), n in counts.items():
        rows += [{"inputs": f"{task} {ttype} q{i}", "targets": f"a{i}", "task_name": task,
                  "template_type": ttype, "task_source": "test"} for i in range(n)]
    return rows


def write_parquet(path, rows, row_group_size=5, **types):
    schema = pa.schema([(k, types.get(k, pa.string())) for k in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path,
                   row_group_size=row_group_size)
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Parquet registration prepares a copy under $FLAN_JAX_CACHE: keep it in tmp."""
    monkeypatch.setenv("FLAN_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def registry():
    """Removes what a test registers."""
    before_tasks, before_mixes = set(seqio.TaskRegistry.names()), set(
        seqio.MixtureRegistry.names())
    yield
    for name in set(seqio.MixtureRegistry.names()) - before_mixes:
        seqio.MixtureRegistry.remove(name)
    for name in set(seqio.TaskRegistry.names()) - before_tasks:
        seqio.TaskRegistry.remove(name)


def examples(name, split="train"):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(LENGTHS, split=split, shuffle=False).as_numpy_iterator())


def test_count_rows_is_the_same_for_parquet_and_jsonl(tmp_path):
    rows = make_rows()
    parquet = write_parquet(tmp_path / "sub.parquet", rows)
    jsonl = write_jsonl(tmp_path / "sub.jsonl", rows)
    assert G.count_rows(parquet) == COUNTS
    assert G.count_rows([parquet, jsonl]) == {k: 2 * n for k, n in COUNTS.items()}


def test_per_task_registration_names_counts_and_values(tmp_path, registry):
    rows = make_rows()
    train = write_parquet(tmp_path / "train.parquet", rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[:2] + rows[-1:])
    names = G.register_flan2022_submix("sub", {"train": train, "validation": dev}, VOCAB)
    assert names == ["sub.anli_r1:fs_opt", "sub.anli_r1:zs_opt", "sub.story_cloze_1.0:fs_opt",
                     "sub.story_cloze_1.0:zs_noopt", "sub.story_cloze_1.0:zs_opt"]
    counts = {n: seqio.get_mixture_or_task(n).num_input_examples("train") for n in names}
    assert counts == {"sub.anli_r1:fs_opt": 12, "sub.anli_r1:zs_opt": 12,
                      "sub.story_cloze_1.0:fs_opt": 3, "sub.story_cloze_1.0:zs_noopt": 2,
                      "sub.story_cloze_1.0:zs_opt": 3}
    assert seqio.get_mixture_or_task("sub.anli_r1:zs_opt").num_input_examples("validation") == 2

    got = examples("sub.story_cloze_1.0:zs_noopt")
    assert len(got) == 2
    ex = got[1]
    assert ex["inputs"].dtype == ex["targets"].dtype == "int32"
    assert VOCAB.decode(ex["inputs"].tolist()) == "story/cloze:1.0 zs_noopt q1"
    assert ex["targets"].tolist()[-1] == 1 and VOCAB.decode(ex["targets"].tolist()) == "a1"
    assert (ex["task"], ex["format"]) == (b"story/cloze:1.0", b"zs_noopt")
    assert len(examples("sub.story_cloze_1.0:fs_opt", "validation")) == 1
    assert len(examples("sub.anli_r1:zs_opt", "validation")) == 2

    with pytest.raises(ValueError,
                       match=r"Tasks 'sub.anli_r1:fs_opt', .* are already registered"):
        G.register_flan2022_submix("sub", {"train": train}, VOCAB)
    assert G.register_flan2022_submix("sub", {"train": train}, VOCAB, replace=True) == names


def test_whole_submix_as_one_task(tmp_path, registry):
    rows = make_rows()
    parquet = write_parquet(tmp_path / "a.parquet", rows[:20])
    jsonl = write_jsonl(tmp_path / "b.jsonl", rows[20:])
    assert G.register_flan2022_submix("whole", {"train": [parquet, jsonl]}, VOCAB,
                                      by="none") == ["whole"]
    assert seqio.get_mixture_or_task("whole").num_input_examples("train") == len(rows)
    got = examples("whole")
    assert [VOCAB.decode(e["inputs"].tolist()) for e in got] == [r["inputs"] for r in rows]
    assert [(e["task"].decode(), e["format"].decode()) for e in got] == [
        (r["task_name"], r["template_type"]) for r in rows]
    shuffled = seqio.get_mixture_or_task("whole").get_dataset(LENGTHS, shuffle=True, seed=1)
    assert sorted(VOCAB.decode(e["inputs"].tolist()) for e in shuffled.as_numpy_iterator()
                  ) == sorted(r["inputs"] for r in rows)
    source = G.flan2022_source({"train": jsonl})
    assert source.num_input_examples("train") == len(rows) - 20


def test_shuffle_files_reorders_row_groups_deterministically(tmp_path):
    rows = make_rows()  # 32 rows sorted by task: 7 row groups of 5 (the last of 2)
    source = G.flan2022_source({"train": write_parquet(tmp_path / "s.parquet", rows)})

    def order(**kw):
        return [e["inputs"].decode() for e in source.get_dataset("train", **kw)
                .as_numpy_iterator()]

    assert order(shuffle=False) == [r["inputs"] for r in rows]
    shuffled = order(shuffle=True, seed=3)
    assert shuffled == order(shuffle=True, seed=3) != order(shuffle=False)
    assert sorted(shuffled) == sorted(order(shuffle=False))
    group_of = {r["inputs"]: i // 5 for i, r in enumerate(rows)}
    runs = [g for i, g in enumerate(map(group_of.get, shuffled))
            if i == 0 or g != group_of[shuffled[i - 1]]]
    assert sorted(runs) == list(range(7)) and runs != sorted(runs)  # whole groups, reordered


def test_capped_mixing_over_registered_tasks(tmp_path, registry):
    names = G.register_flan2022_submix(
        "capped", {"train": write_parquet(tmp_path / "t.parquet", make_rows())}, VOCAB)
    # Sizes come from the registered sources: anli_r1 has 12 per format, story_cloze 3.
    rates = M.task_rates(names, cap=6)
    anli = {n: r for n, r in rates.items() if ".anli_r1:" in n}
    story = {n: r for n, r in rates.items() if ".story_cloze_1.0:" in n}
    assert anli == {"capped.anli_r1:zs_opt": 3.0, "capped.anli_r1:fs_opt": 3.0}  # 12 -> cap 6
    assert story == {"capped.story_cloze_1.0:zs_opt": 0.75,
                     "capped.story_cloze_1.0:zs_noopt": 0.75,
                     "capped.story_cloze_1.0:fs_opt": 1.5}  # 3, under the cap

    recipe = {"flan2021": M.Submixture(weight=0.4, cap=6)}
    mixed = M.recipe_rates({"flan2021": names}, recipe)
    assert sum(mixed.values()) == pytest.approx(0.4)
    assert mixed["capped.anli_r1:zs_opt"] == pytest.approx(0.4 * 3 / 9)
    M.register_mixture("capped_mix", mixed)
    mix = seqio.get_mixture_or_task("capped_mix")
    ds = mix.get_dataset(LENGTHS, shuffle=True, seed=0, passthrough_features=["task"])
    drawn = [e["task"] for e in ds.take(30).as_numpy_iterator()]
    assert len(drawn) == 30 and set(drawn) <= {b"anli_r1", b"story/cloze:1.0"}


def test_cot_submix_formats_and_answer_postprocessor(tmp_path, registry):
    rows = [{"inputs": "Q: 5+7? Let's think.", "targets": "5+7=12. So the answer is 12.",
             "task_name": "cot_gsm8k", "template_type": t} for t in ("zs_opt", "fs_opt")]
    names = G.register_flan2022_submix("cot", {"train": write_jsonl(tmp_path / "c.jsonl", rows)},
                                       VOCAB, template_formats=G.COT_TEMPLATE_FORMATS)
    assert names == ["cot.cot_gsm8k:cot_fs", "cot.cot_gsm8k:cot_zs"]
    task = seqio.get_mixture_or_task("cot.cot_gsm8k:cot_zs")
    assert task.postprocess_fn("It is 5+7=12. So the answer is 12.") == "12"
    # A template_type the mapping lacks is named with its file.
    with pytest.raises(SourceError, match=r"c2\.jsonl: template_type 'zs_noopt' \(1 rows\) is "
                                          r"not in template_formats \['fs_opt', 'zs_opt'\]"):
        G.register_flan2022_submix(
            "cot2", {"train": write_jsonl(tmp_path / "c2.jsonl", [{**rows[0],
                                                                   "template_type": "zs_noopt"}])},
            VOCAB, template_formats=G.COT_TEMPLATE_FORMATS)


def test_parquet_schema_errors_name_file_and_column(tmp_path):
    rows = make_rows()
    no_targets = [{k: v for k, v in r.items() if k != "targets"} for r in rows]
    with pytest.raises(SourceError, match=r"a\.parquet: missing column 'targets' \(has \["):
        G.count_rows(write_parquet(tmp_path / "a.parquet", no_targets))
    int_targets = [{**r, "targets": 1} for r in rows]
    with pytest.raises(SourceError, match=r"b\.parquet: column 'targets' should be string, "
                                          "got int64"):
        G.count_rows(write_parquet(tmp_path / "b.parquet", int_targets, targets=pa.int64()))


def test_parquet_nulls_name_file_row_and_column(tmp_path, registry):
    rows = make_rows()
    rows[7] = {**rows[7], "task_name": None}
    with pytest.raises(SourceError, match=r"keys\.parquet: row 7: column 'task_name' is null"):
        G.count_rows(write_parquet(tmp_path / "keys.parquet", rows))
    rows = make_rows()
    rows[13] = {**rows[13], "inputs": None}
    path = write_parquet(tmp_path / "text.parquet", rows)
    G.register_flan2022_submix("nulls", {"train": path}, VOCAB, by="none")  # keys are fine
    with pytest.raises(Exception, match=r"text\.parquet: row 13: column 'inputs' is null"):
        examples("nulls")


@pytest.mark.parametrize("bad,message", [
    ({"inputs": "q", "targets": "a", "task_name": "t"}, "missing field 'template_type'"),
    ({"inputs": "q", "targets": ["a"], "task_name": "t", "template_type": "zs_opt"},
     "field 'targets' should be str, got list"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", make_rows()[:2] + [bad])
    with pytest.raises(SourceError, match=rf"bad\.jsonl:3: {re.escape(message)}"):
        G.count_rows(path)


def test_file_and_name_errors(tmp_path, registry):
    with pytest.raises(SourceError, match=r"none\.parquet: no such file \(split 'train'\)"):
        G.register_flan2022_submix("x", {"train": tmp_path / "none.parquet"}, VOCAB)
    (tmp_path / "rows.csv").write_text("inputs,targets\n")
    with pytest.raises(SourceError, match=r"rows\.csv: not a \.parquet or \.jsonl file"):
        G.count_rows(tmp_path / "rows.csv")
    clash = make_rows({("a/b", "zs_opt"): 1, ("a:b", "zs_opt"): 1})
    with pytest.raises(SourceError, match="task_name 'a:b' and 'a/b' both make seqio name 'a_b'"):
        G.register_flan2022_submix("clash", {"train": write_jsonl(tmp_path / "c.jsonl", clash)},
                                   VOCAB)
    with pytest.raises(ValueError, match="by='format'"):
        G.register_flan2022_submix("x", {}, VOCAB, by="format")


def test_parquet_is_streamed_in_bounded_batches(tmp_path):
    # 40 row groups of 50 rows with 2 KB inputs: 4 MB of text in all.
    rows = [{"inputs": f"{i:05d}" + "x" * 2000, "targets": "y", "task_name": f"t{i // 500}",
             "template_type": "zs_opt"} for i in range(2000)]
    path = write_parquet(tmp_path / "big.parquet", rows, row_group_size=50)
    assert pq.ParquetFile(path).num_row_groups == 40
    base = pa.total_allocated_bytes()
    peak, seen, sizes = 0, 0, set()
    for batch in G.read_flan2022(path, batch_rows=20):
        peak = max(peak, pa.total_allocated_bytes() - base)
        assert batch["inputs"][0].startswith(f"{seen:05d}")
        seen += len(batch["inputs"])
        sizes.add(len(batch["inputs"]))
    assert seen == 2000 and max(sizes) == 20
    assert peak < 1_000_000, f"held {peak} bytes of Arrow memory at once (file: ~4 MB)"
    only = list(G.read_flan2022(path, keys={("t3", "zs_opt")}))
    assert sum(len(b["inputs"]) for b in only) == 500


def test_per_task_tasks_read_only_their_row_groups(tmp_path, registry):
    # Rows sorted by task: task "b"'s row groups hold a null, which only "b" (and the whole
    # submix) ever read.
    rows = make_rows({("a", "zs_opt"): 10, ("b", "zs_opt"): 10})
    rows[15] = {**rows[15], "inputs": None}
    path = write_parquet(tmp_path / "sorted.parquet", rows, row_group_size=5,
                         task_name=pa.large_string())  # as some writers store it
    G.register_flan2022_submix("rg", {"train": path}, VOCAB)
    assert len(examples("rg.a:zs_opt")) == 10
    with pytest.raises(Exception, match=r"sorted\.parquet: row 15: column 'inputs' is null"):
        examples("rg.b:zs_opt")


def all_rows(rows):
    return [rows[i] for i in range(len(rows))]


def streamed(files, split="train", keys=None):
    """The reference: the streaming source's rows (file order), as plain str dicts."""
    source = G.flan2022_source({split: files})
    got = [{k: v.decode() for k, v in e.items()} for e in
           source.get_dataset(split, shuffle=False).as_numpy_iterator()]
    return [e for e in got if keys is None or (e["task"], e["format"]) in keys]


def test_random_access_rows_equal_the_streamed_rows(tmp_path, registry):
    rows = make_rows()
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # interleaved
    a = write_parquet(tmp_path / "a.parquet", shuffled[:20])
    b = write_jsonl(tmp_path / "b.jsonl", shuffled[20:])
    names = G.register_flan2022_submix("ra", {"train": [a, b], "validation": b}, VOCAB)
    for name in names:
        task, fmt = name[len("ra."):].split(":")
        source = seqio.get_mixture_or_task(name).source
        for split, files in (("train", [a, b]), ("validation", [b])):
            got = all_rows(random_access(source, split))
            want = [e for e in streamed(files, split)
                    if re.sub(r"[^\w.]", "_", e["task"]) == task and e["format"] == fmt]
            assert got == want and len(got) == source.num_input_examples(split)
            # ...and seqio's own read of the source gives the same rows.
            assert [{k: v.decode() for k, v in e.items()} for e in source.get_dataset(
                split, shuffle=False).as_numpy_iterator()] == want
    G.register_flan2022_submix("ra_all", {"train": [a, b]}, VOCAB, by="none")
    whole = random_access(seqio.get_mixture_or_task("ra_all").source, "train")
    assert all_rows(whole) == streamed([a, b])  # several keys: merged back into file order
    assert whole[0]["format"] == shuffled[0]["template_type"]


def test_parquet_is_prepared_once_and_reused(tmp_path, registry, cache, caplog):
    path = write_parquet(tmp_path / "t.parquet", make_rows())
    with caplog.at_level(logging.INFO, logger=G.__name__):
        G.register_flan2022_submix("p1", {"train": path}, VOCAB)
    prepared = [r for r in caplog.records if "prepared 1 parquet file" in r.getMessage()]
    assert len(prepared) == 1 and str(cache / "prepared") in prepared[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=G.__name__):
        G.register_flan2022_submix("p2", {"train": path}, VOCAB)
    assert not [r for r in caplog.records if "prepared" in r.getMessage()]
    assert len(list((cache / "prepared").iterdir())) == 1
    mine = tmp_path / "mine"
    G.register_flan2022_submix("p3", {"train": path}, VOCAB, prepared_dir=mine)
    assert (mine / "index.json").exists()
    rows = random_access(seqio.get_mixture_or_task("p3.anli_r1:fs_opt").source, "train")
    assert all_rows(rows) == streamed([path], keys={("anli_r1", "fs_opt")})


def test_pickled_task_rows_are_small(tmp_path, registry):
    rows = make_rows({("t", "zs_opt"): 500, ("u", "zs_opt"): 500})
    parquet = write_parquet(tmp_path / "t.parquet", rows, row_group_size=100)
    jsonl = write_jsonl(tmp_path / "t.jsonl", rows)
    G.register_flan2022_submix("pk", {"train": parquet, "validation": jsonl}, VOCAB)
    source = seqio.get_mixture_or_task("pk.t:zs_opt").source
    train, dev = random_access(source, "train"), random_access(source, "validation")
    assert train[499]["inputs"] == dev[499]["inputs"] == "t zs_opt q499"
    assert len(pickle.dumps(train)) < 1_000  # a [start, count] range
    assert len(pickle.dumps(dev)) < 1_000 + 8 * 500  # one int64 offset a row
    back = pickle.loads(pickle.dumps(dev))
    assert back[7] == dev[7] == {"inputs": "t zs_opt q7", "targets": "a7", "task": "t",
                                 "format": "zs_opt"}


def test_random_access_errors_name_file_and_line(tmp_path, registry):
    rows = make_rows()
    path = write_jsonl(tmp_path / "j.jsonl", rows)
    G.register_flan2022_submix("err", {"train": path}, VOCAB)
    rows_ = random_access(seqio.get_mixture_or_task("err.anli_r1:zs_opt").source, "train")
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "{" + "x" * (len(lines[2]) - 2) + "\n"  # changed in place since the scan
    path.write_text("".join(lines))
    assert rows_[1]["inputs"] == "anli_r1 zs_opt q1"
    with pytest.raises(SourceError, match=r"j\.jsonl:3: invalid JSON"):
        rows_[2]
