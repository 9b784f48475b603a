"""The Grain training reader against the seqio reader: same rates, same text, same features;
exact O(1) resume; disjoint hosts; errors that name the row; workers that fail loudly."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import mixtures.default  # noqa: F401  (registers the default mixture)
import seqio
from flan_jax.data import formats as F
from flan_jax.data import mixing
from flan_jax.data.flan import FlanTask, register_flan_task
from flan_jax.data.reader.build import UnsupportedMixture, grain_reader, leaf_tasks, resolve
from flan_jax.data.reader.mixture import IndexMixture
from flan_jax.data.reader.packing import CONVERTERS
from flan_jax.data.reader.permutation import key, permute
from flan_jax.data.sources import jsonl_source
from flan_jax.data.templates import Template
from flan_jax.errors import ReaderError, SourceError
from flan_jax.train.data import DataConfig, make_reader, reader_position, stream_settings

LENGTHS = {"inputs": 96, "targets": 32}
PACKED = CONVERTERS["enc_dec"].features(pack=True)


def cfg(**kw) -> DataConfig:
    base = dict(batch_size=8, task_feature_lengths=LENGTHS, workers=0, chunk_examples=64,
                module_imports=())
    return DataConfig(**{**base, **kw})


def take(reader, n):
    try:
        return [next(reader) for _ in range(n)]
    finally:
        reader.close()


def segments(batch):
    """Each packed row's examples as (inputs tokens, targets tokens), in order."""
    out = []
    for r in range(len(batch["encoder_input_tokens"])):
        for seg in range(1, int(batch["encoder_segment_ids"][r].max()) + 1):
            enc = batch["encoder_input_tokens"][r][batch["encoder_segment_ids"][r] == seg]
            dec = batch["decoder_target_tokens"][r][batch["decoder_segment_ids"][r] == seg]
            out.append((tuple(enc.tolist()), tuple(dec.tolist())))
    return out


# -- permutations and mixing by index ---------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1024, 1025])
def test_permutations_are_bijections_and_differ_by_key(n):
    a = permute(np.arange(n), n, key(1, 2))
    assert sorted(a.tolist()) == list(range(n))
    if n > 20:
        assert (a != permute(np.arange(n), n, key(1, 3))).mean() > 0.5


def test_mixing_by_index_matches_the_rates_and_reshuffles_each_epoch():
    rates = [3.0, 1.0, 0.5, 0.05]
    m = IndexMixture(list("abcd"), rates, [50, 7, 1000, 3], seed=1)
    tasks, rows = m.lookup_many(np.arange(20_000))
    shares = np.bincount(tasks, minlength=4) / len(tasks)
    want = np.asarray(rates) / sum(rates)
    # i.i.d. draws would stray by ~2 sigma = 2 sqrt(p(1-p)/n); stratified blocks stay closer
    assert np.all(np.abs(shares - want) <= 2 * np.sqrt(want * (1 - want) / len(tasks)))
    for t, n in enumerate(m.sizes):
        assert rows[tasks == t].max() < n
    epochs = m.rows(np.full(100, 0), np.arange(100)).reshape(2, 50)  # task a: 2 epochs
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(50))
    assert (epochs[0] != epochs[1]).any()
    assert m.lookup(12_345) == (int(tasks[12_345]), int(rows[12_345]))
    far = m.lookup_many(np.arange(10**12, 10**12 + 5))  # O(tasks) at any index
    assert len(far[0]) == 5
    unshuffled = IndexMixture(["a"], [1.0], [5], seed=0, shuffle=False)
    assert unshuffled.lookup_many(np.arange(7))[1].tolist() == [0, 1, 2, 3, 4, 0, 1]


def test_the_default_mixture_is_read_with_seqios_own_rates():
    names, rates, rows, _ = resolve(mixtures.default.TRAIN_MIXTURE, "train")
    mixture = seqio.get_mixture_or_task(mixtures.default.TRAIN_MIXTURE)
    assert dict(zip(names, rates)) == {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert all(len(r) == 5000 for r in rows)
    with pytest.raises(ReaderError, match="rate"):
        IndexMixture(["a"], [0.0], [3], seed=0)
    with pytest.raises(ReaderError, match="'a': its split has no examples"):
        IndexMixture(["a"], [1.0], [0], seed=0)


# -- same text and features as seqio ----------------------------------------------------

@pytest.mark.parametrize("task", ["synth_arithmetic:fs_noopt", "synth_weekday:zs_opt",
                                  "synth_arithmetic:cot_zs", "synth_category:inv"])
def test_each_example_renders_to_the_same_text_as_through_seqio(task):
    source = seqio.get_mixture_or_task(task).source
    rows = source.random_access("validation")
    streamed = source.get_dataset("validation", shuffle=False).take(12).as_numpy_iterator()
    for i, ex in enumerate(streamed):
        assert rows[i]["inputs"] == ex["inputs"].decode()
        assert rows[i]["targets"] == ex["targets"].decode()


def test_few_shot_exemplars_come_from_the_whole_split_never_the_query():
    source = seqio.get_mixture_or_task("synth_arithmetic:fs_noopt").source
    renderer, raw = source.renderer, source.spec.source.random_access("train")
    exemplars = renderer.exemplars()
    seen = set()
    for i in range(200):
        query = renderer.fields(raw[i])
        picked = exemplars.candidates(renderer.seed, F.example_key(query), 3)
        keys = [F.example_key(e) for e in picked]
        assert F.example_key(query) not in keys and len(set(keys)) == len(keys) == 3
        seen.update(keys)
    train_keys = [F.example_key(renderer.fields(raw[i])) for i in range(len(raw))]
    positions = sorted(train_keys.index(k) for k in seen)
    assert positions[-1] > 2000  # not the first pool_size (64) rows of the split


def _seqio_features(task, pack, n):
    ds = seqio.get_dataset(task, task_feature_lengths=LENGTHS, dataset_split="train",
                           shuffle=False, use_cached=False,
                           feature_converter=seqio.EncDecFeatureConverter(pack=pack))
    return list(ds.take(n).as_numpy_iterator())


def test_features_are_exactly_seqios():
    """Unshuffled, pack=False: row i is example i, so every feature must equal seqio's
    EncDecFeatureConverter output; packed rows hold the same tokens per segment, and three
    examples that seqio packs into two rows come out exactly as seqio packs them."""
    import tensorflow as tf

    from flan_jax.data.reader.packing import pack

    task = "synth_weekday:zs_opt"
    ours = take(make_reader(cfg(mixture_or_task_name=task, shuffle=False, pack=False,
                                chunk_examples=4)), 3)
    got = {k: np.concatenate([b[k] for b in ours]) for k in ours[0]}
    theirs = _seqio_features(task, pack=False, n=24)
    assert set(got) == set(theirs[0])
    for i, ex in enumerate(theirs):
        for k, v in ex.items():
            assert got[k][i].tolist() == v.tolist(), (i, k)

    packed = take(make_reader(cfg(mixture_or_task_name=task, shuffle=False)), 3)
    assert set(packed[0]) == set(PACKED)
    unpacked = {(tuple(r[r > 0].tolist()), tuple(t[t > 0].tolist()))
                for r, t in zip(got["encoder_input_tokens"], got["decoder_target_tokens"])}
    assert unpacked <= {s for b in packed for s in segments(b)} | unpacked
    assert len({s for b in packed for s in segments(b)} & unpacked) >= 12

    exs = [([5, 6, 7, 1], [8, 9, 1]), ([3, 1], [4, 4, 4, 1]), ([2, 2, 2, 2, 2, 1], [7, 1])]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.array(a, np.int32), "targets": np.array(b, np.int32)}
                 for a, b in exs),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
    seqio_rows = list(seqio.EncDecFeatureConverter(pack=True)(
        ds, {"inputs": 8, "targets": 8}).as_numpy_iterator())
    mine = pack(exs, 8, 8)
    for k in PACKED:
        assert mine[k].tolist() == [r[k].tolist() for r in seqio_rows], k


def test_packing_is_at_least_as_tight_as_seqios_on_the_default_mixture():
    c = cfg(batch_size=32, task_feature_lengths={"inputs": 512, "targets": 128},
            chunk_examples=512)
    batches = take(make_reader(c), 8)
    enc = np.mean([np.mean(b["encoder_input_tokens"] > 0) for b in batches])
    dec = np.mean([np.mean(b["decoder_target_tokens"] > 0) for b in batches])
    assert enc >= 0.83 and dec >= 0.62, (enc, dec)  # seqio: 83% and 62%


def test_packed_batches_give_the_same_per_example_loss_as_unpacked():
    import jax
    import jax.numpy as jnp

    from flan_jax.model.config import get_config
    from flan_jax.model.params import create_model

    model = create_model(get_config("t5_1_1-tiny").replace(
        d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
        num_decoder_layers=1, vocab_size=512), seed=0)

    def token_losses(b):
        extra = {k: jnp.asarray(b[k]) for k in ("encoder_segment_ids", "decoder_segment_ids",
                                                "encoder_positions", "decoder_positions")
                 if k in b}
        logits = model(jnp.asarray(b["encoder_input_tokens"]),
                       jnp.asarray(b["decoder_input_tokens"]), **extra)
        lp = jax.nn.log_softmax(logits.astype(jnp.float32))
        tgt = jnp.asarray(b["decoder_target_tokens"])
        return np.asarray(-jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0])

    c = cfg(mixture_or_task_name="synth_arithmetic:zs_noopt", shuffle=False)
    packed = take(make_reader(c), 1)[0]
    unpacked = take(make_reader(cfg(mixture_or_task_name="synth_arithmetic:zs_noopt",
                                    shuffle=False, pack=False, batch_size=64)), 1)[0]
    lp, lu = token_losses(packed), token_losses(unpacked)
    per_packed = {}  # (inputs, targets) tokens -> summed loss
    keys = iter(segments(packed))
    for r in range(len(lp)):
        seg_ids = packed["decoder_segment_ids"][r]
        for s in range(1, seg_ids.max() + 1):
            per_packed[next(keys)] = lp[r][seg_ids == s].sum()
    assert len(per_packed) >= 16  # several examples per row
    compared = set()
    for r in range(len(lu)):
        enc, tgt = unpacked["encoder_input_tokens"][r], unpacked["decoder_target_tokens"][r]
        k = (tuple(enc[enc > 0].tolist()), tuple(tgt[tgt > 0].tolist()))
        if k in per_packed:
            want = (lu[r] * unpacked["decoder_loss_weights"][r]).sum()
            np.testing.assert_allclose(per_packed[k], want, rtol=1e-5)
            compared.add(k)
    assert len(compared) == len(per_packed)


# -- state, resume, hosts ---------------------------------------------------------------

def test_a_restored_state_continues_the_very_same_stream():
    c = cfg()
    straight = take(make_reader(c), 9)
    first = make_reader(c)
    for _ in range(4):
        next(first)
    saved = reader_position(first, c)
    first.close()
    assert saved["reader"] == "grain" and saved["inputs_length"] == 96
    json.dumps(saved)  # goes into the checkpoint as JSON
    resumed = take(make_reader(c, saved=saved), 5)
    for a, b in zip(straight[4:], resumed):
        for k in a:
            assert np.array_equal(a[k], b[k]), k


class CountingRows:
    """A test source that counts reads (the work a restore does)."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return {"inputs": f"question {i}", "targets": f"answer {i}"}


def test_restoring_a_state_from_batch_100000_does_no_work_proportional_to_it():
    from flan_jax.data.reader.pipeline import ChunkMaker, GrainReader, StreamSettings
    from flan_jax.data.tokenizer import ByteTokenizer

    settings = StreamSettings(mixture="m", split="train", seed=0, shuffle=True, batch_size=8,
                              inputs_length=64, targets_length=16, pack=True, shards=2,
                              chunk=32)
    rows = CountingRows(10**6)
    mixture = IndexMixture(["t"], [1.0], [len(rows)], seed=0)
    maker = ChunkMaker(["t"], [rows], mixture, ByteTokenizer(), settings, [0, 1])
    # ~100,000 batches in: 8 rows a batch, ~3 examples a row, 32 examples a chunk.
    state = {"0": [37_500, 3], "1": [37_499, 5]}
    reader = GrainReader(maker, state=state, prefetch=0)  # no read-ahead: count the work
    batch = next(reader)
    reader.close()
    assert len(batch["encoder_input_tokens"]) == 8
    assert rows.reads <= 6 * settings.chunk  # a few chunks, never 100,000 batches' worth
    assert reader.state()["0"][0] == 37_500  # continued where the state said


def test_four_hosts_read_disjoint_rows_whose_union_is_the_single_host_stream():
    c = cfg(shards=4, batch_size=8)
    single = take(make_reader(c), 3)
    hosts = [take(make_reader(c, process_index=i, process_count=4), 3) for i in range(4)]
    for step in range(3):
        joined = {k: np.concatenate([h[step][k] for h in hosts]) for k in single[step]}
        for k in joined:
            assert np.array_equal(joined[k], single[step][k]), (step, k)
    per_host = [set(s for b in h for s in segments(b)) for h in hosts]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not per_host[i] & per_host[j] - {((), ())}


def test_a_resume_with_other_stream_settings_is_refused_naming_the_field():
    c = cfg()
    r = make_reader(c)
    next(r)
    saved = reader_position(r, c)
    r.close()
    for other, name in ((cfg(task_feature_lengths={"inputs": 64, "targets": 32}),
                         r"task_feature_lengths\['inputs'\]=96"),
                        (cfg(pack=False), "DataConfig.pack=True"),
                        (cfg(seed=3), "DataConfig.seed=0"),
                        (cfg(batch_size=16), "DataConfig.batch_size=8"),
                        (cfg(reader="seqio"), "reader='grain'")):
        with pytest.raises(ReaderError, match=name):
            make_reader(other, saved=saved)


def test_a_misspelt_mixture_is_named_with_the_closest_names():
    with pytest.raises(ReaderError, match=r"mixture_or_task_name='flan_jax_defualt' is not a "
                                          r"registered .*closest: flan_jax_default"):
        make_reader(cfg(mixture_or_task_name="flan_jax_defualt"))
    with pytest.raises(ReaderError, match="is not a registered"):
        make_reader(cfg(mixture_or_task_name="flan_jax_defualt", reader="seqio"))


def test_data_config_values_are_checked():
    with pytest.raises(ReaderError, match="DataConfig.reader='tfdata'"):
        DataConfig(reader="tfdata")
    with pytest.raises(ReaderError, match="DataConfig.workers=-1"):
        DataConfig(workers=-1)
    with pytest.raises(ReaderError, match="batch_size=6 must divide evenly over 4 shards"):
        stream_settings(cfg(batch_size=6, shards=4))


# -- user tasks, bad input, workers -----------------------------------------------------

def _jsonl_task(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    spec = FlanTask(name=name, source=jsonl_source({"train": path}, {"q": str, "a": str}),
                    templates=[Template("Q: {q}", "{a}"), Template("{q}?", "{a}")],
                    few_shot=None)
    return register_flan_task(spec, seqio.ByteVocabulary(), replace=True), path


def test_user_jsonl_tasks_mix_by_counted_sizes(tmp_path):
    a, _ = _jsonl_task(tmp_path, "user_a", [{"q": f"a{i}", "a": "x"} for i in range(30)])
    b, _ = _jsonl_task(tmp_path, "user_b", [{"q": f"b{i}", "a": "y"} for i in range(10)])
    rates = mixing.task_rates(a + b, cap=100)  # JSONL sources count their rows now
    assert rates == {"user_a:zs_noopt": 30.0, "user_b:zs_noopt": 10.0}
    mixing.register_mixture("user_ab", rates, replace=True)
    batch = take(make_reader(cfg(mixture_or_task_name="user_ab", batch_size=4)), 1)[0]
    texts = [bytes(t - 3 for t in enc if t > 2).decode() for enc, _ in segments(batch)]
    assert texts and all(t.startswith(("Q: a", "Q: b", "a", "b")) for t in texts)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_row_stops_the_reader_with_file_and_line(tmp_path, workers):
    rows = [{"q": f"q{i}", "a": "x"} for i in range(5)] + ['{"q": 3, "a": "x"}']
    names, path = _jsonl_task(tmp_path, "user_bad", rows)
    reader = make_reader(cfg(mixture_or_task_name=names[0], workers=workers, batch_size=2))
    try:
        with pytest.raises(SourceError, match=rf"{path.name}:6: field 'q' should be str"):
            for _ in range(20):
                next(reader)
    finally:
        reader.close()


def test_a_dying_worker_stops_training_with_an_error_not_a_hang(tmp_path):
    from flan_jax.data.reader import pipeline

    class Dies:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            os._exit(7)

    c = cfg(mixture_or_task_name="synth_weekday:zs_opt", workers=1)
    settings = stream_settings(c)
    maker = pipeline.ChunkMaker(["x"], [Dies()], IndexMixture(["x"], [1.0], [10], seed=0),
                                None, settings, [0])
    reader = pipeline.GrainReader(maker, workers=1)
    try:
        with pytest.raises(ReaderError, match="data worker process died"):
            next(reader)
    finally:
        reader.close()


def test_tasks_the_grain_reader_cant_read_fall_back_to_seqio_with_a_warning(caplog):
    name = "user_tf_preprocessed"
    if name not in seqio.TaskRegistry.names():
        base = seqio.get_mixture_or_task("synth_weekday:zs_opt")
        seqio.TaskRegistry.add(name, source=base.source, output_features=base.output_features,
                               preprocessors=[seqio.preprocessors.tokenize,
                                              seqio.CacheDatasetPlaceholder(),
                                              seqio.preprocessors.append_eos_after_trim])
    with pytest.raises(UnsupportedMixture, match="user_tf_preprocessed: has preprocessors"):
        resolve(name, "train")
    with caplog.at_level("WARNING"):
        reader = make_reader(cfg(mixture_or_task_name=name))
    assert type(reader).__name__ == "SeqioReader" and "reading the mixture with seqio" in \
        caplog.text
    assert len(take(reader, 1)[0]["encoder_input_tokens"]) == 8
    assert leaf_tasks(name)[0][1] == 1.0


def test_show_and_export_read_a_mixture_through_the_readers_mixing():
    from flan_jax.data import export

    names, rates, rows, _ = resolve(mixtures.default.TRAIN_MIXTURE, "train")
    m = IndexMixture(names, rates, [len(r) for r in rows], seed=5)
    tasks, picks = m.lookup_many(np.arange(40))
    got = [r for _, r in zip(range(40), export.rows(mixtures.default.TRAIN_MIXTURE, seed=5))]
    for row, t, p in zip(got, tasks, picks):
        want = rows[t][p]
        assert (row["inputs"], row["targets"], row["task"]) == (
            want["inputs"], want["targets"], want["task"])
    shuffled = [r["inputs"] for r in export.rows("synth_arithmetic:zs_noopt", "validation",
                                                 seed=1)]
    ordered = [r["inputs"] for r in export.rows("synth_arithmetic:zs_noopt", "validation",
                                                shuffle=False)]
    assert len(shuffled) == 200 and sorted(shuffled) == sorted(ordered)  # each row once
    assert shuffled != ordered


def test_workers_exit_when_the_trainer_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(
        "import os, time\n"
        "def main():\n"
        "    from flan_jax.train.data import DataConfig, make_reader\n"
        "    r = make_reader(DataConfig(batch_size=4, workers=1, chunk_examples=16,\n"
        "                               task_feature_lengths={'inputs': 64, 'targets': 16}))\n"
        "    next(r)\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(300)\n"
        "if __name__ == '__main__':\n"
        "    main()\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, str(script)], cwd=root, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(root)}, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"],
                                  capture_output=True, text=True).stdout.split()
        assert children, "no worker process"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{c}").exists() for c in children):
            assert time.monotonic() < deadline, "a worker outlived its trainer"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_all_tasks_over_one_vocabulary_share_one_tokenizer():
    names, _, rows, tokenizer = resolve(mixtures.default.TRAIN_MIXTURE, "train")
    counters = {id(r.renderer.count_tokens.tokenizer) for r in rows}
    assert counters == {id(tokenizer)}  # a worker loads the SentencePiece model once
