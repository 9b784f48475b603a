"""MetricsWriter (TensorBoard events read back by TF, JSONL), ProgressBar, Throughput / MFU."""

import io
import json
import math
import os

import jax.numpy as jnp
import pytest

from flan_jax.model.config import T5Config
from flan_jax.model.flops import train_flops
from flan_jax.train.metrics import (MetricsWriter, ProgressBar, Throughput,
                                    measure_peak_flops)


def read_events(logdir):
    """{tag: [(step, value)]} from every TensorBoard event file in `logdir`."""
    import tensorflow as tf

    events = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name in ("scalars", "text")
                array = tf.make_ndarray(value.tensor)
                item = array.item() if array.ndim == 0 else array.reshape(-1)[0]
                events.setdefault(value.tag, []).append((event.step, item))
    return events


def test_scalars_and_texts_reach_tensorboard_and_jsonl(tmp_path):
    with MetricsWriter(tmp_path, process_index=0) as writer:
        writer.write_scalars(10, {"loss": 2.5, "learning_rate": jnp.float32(0.01)})
        writer.write_scalars(20, {"loss": 1.25, "accuracy": 0.5})
        writer.write_text(20, "generation", "Answer: yes")
        # Every line is on disk before close: a killed run keeps its log.
        lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == [
            {"step": 10, "loss": 2.5, "learning_rate": pytest.approx(0.01)},
            {"step": 20, "loss": 1.25, "accuracy": 0.5}]
        assert json.loads((tmp_path / "texts.jsonl").read_text()) == {
            "step": 20, "name": "generation", "text": "Answer: yes"}

    events = read_events(tmp_path)
    assert events["loss"] == [(10, 2.5), (20, 1.25)]
    assert events["learning_rate"] == [(10, pytest.approx(0.01))]
    assert events["accuracy"] == [(20, 0.5)]
    assert events["generation"] == [(20, b"Answer: yes")]


def test_a_resumed_run_appends_and_nan_is_logged(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as writer:
        writer.write_scalars(1, {"loss": 3.0})
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as writer:
        writer.write_scalars(2, {"loss": float("nan")})
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 1, "loss": 3.0}
    assert records[1]["step"] == 2 and math.isnan(records[1]["loss"])
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    assert not (tmp_path / "texts.jsonl").exists()  # files appear with their first line


def test_only_process_zero_writes(tmp_path):
    logdir = tmp_path / "logs"
    with MetricsWriter(logdir, process_index=1) as writer:
        assert not writer.active
        writer.write_scalars(1, {"loss": 1.0})
        writer.write_text(1, "generation", "text")
        writer.flush()
    assert not logdir.exists()
    out = io.StringIO()
    with ProgressBar(10, process_index=1, file=out) as bar:
        bar.update(5, loss=1.0)
    assert out.getvalue() == ""


def test_progress_bar_shows_step_loss_rate_and_mfu():
    out = io.StringIO()  # not a terminal, like a log file
    with ProgressBar(1000, initial_step=100, process_index=0, file=out) as bar:
        bar.update(150, loss=1.5, tokens_per_s=12345.6, mfu=0.4321)
        assert bar.step == 150
    text = out.getvalue()
    for piece in ("150/1000", "loss=1.5", "tok/s=12,346", "mfu=43.2%"):
        assert piece in text, (piece, text)


def test_throughput_and_mfu_arithmetic():
    # 4 steps of 1e12 FLOPs and 8192 tokens each in 2 s, on 2 devices of 5e12 FLOP/s.
    rates = Throughput(flops_per_step=1e12, peak_flops_per_device=5e12, num_devices=2)(
        steps=4, tokens=4 * 8192, seconds=2.0)
    assert rates == {"steps_per_s": 2.0, "tokens_per_s": 16384.0,
                     "model_flops_per_s": 2e12, "mfu": pytest.approx(0.2)}
    assert "mfu" not in Throughput(1e12)(steps=1, tokens=1, seconds=1.0)
    with pytest.raises(ValueError, match="seconds=0"):
        Throughput(1e12)(steps=1, tokens=1, seconds=0)


def test_throughput_for_model_uses_train_flops():
    cfg = T5Config(vocab_size=128, d_model=32, d_ff=64, num_heads=2, head_dim=16,
                   num_encoder_layers=2, num_decoder_layers=2)
    meter = Throughput.for_model(cfg, 8, 64, 16, peak_flops_per_device=1e9, num_devices=1)
    assert meter.flops_per_step == train_flops(cfg, 8, 64, 16) > 0
    rates = meter(steps=1, tokens=8 * 80, seconds=0.5)
    assert rates["mfu"] == pytest.approx(train_flops(cfg, 8, 64, 16) / 0.5 / 1e9)


def test_measure_peak_flops_is_positive():
    assert measure_peak_flops(sizes=(128, 256), steps=2, warmup=1) > 0


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    # The killed run logged steps 1-5 (and a text at 4) but its last checkpoint is step 3;
    # the kill cut its last line short.
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as writer:
        for step in range(1, 6):
            writer.write_scalars(step, {"loss": float(step)})
        writer.write_text(2, "generation", "two")
        writer.write_text(4, "generation", "four")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    inode = (tmp_path / "metrics.jsonl").stat().st_ino

    with MetricsWriter(tmp_path, tensorboard=False, process_index=0,
                       resume_step=3) as writer:
        for step in range(4, 7):
            writer.write_scalars(step, {"loss": 10.0 * step})
    assert _jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
        {"step": 4, "loss": 40.0}, {"step": 5, "loss": 50.0}, {"step": 6, "loss": 60.0}]
    assert _jsonl(tmp_path / "texts.jsonl") == [
        {"step": 2, "name": "generation", "text": "two"}]
    # Replaced by a new file (atomically), with the umask's permissions.
    assert (tmp_path / "metrics.jsonl").stat().st_ino != inode
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncate_after_leaves_a_clean_log_alone(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    inode = (tmp_path / "metrics.jsonl").stat().st_ino
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as writer:
        assert writer.truncate_after(1) == 0
        assert writer.truncate_after(0) == 1  # a fresh start: nothing of the old run stays
        writer.write_scalars(1, {"loss": 2.0})
        with pytest.raises(RuntimeError, match="after writing metrics.jsonl"):
            writer.truncate_after(0)
    assert _jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
    with MetricsWriter(tmp_path, tensorboard=False, process_index=0, resume_step=5):
        pass
    assert (tmp_path / "metrics.jsonl").stat().st_ino != inode  # (rewritten once, above)
    # Other processes never touch the file.
    with MetricsWriter(tmp_path, tensorboard=False, process_index=1, resume_step=0) as w:
        assert w.truncate_after(0) == 0
    assert _jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
