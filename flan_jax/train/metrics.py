"""Training logs: TensorBoard events + a JSONL log, a tqdm progress bar, tokens/s and MFU.

Only process 0 writes or draws (`process_index` defaults to `jax.process_index()`).
The JSONL log is flushed on every write, so a killed run keeps everything up to its last step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp

from flan_jax.atomic import atomic_file
from flan_jax.model.config import T5Config
from flan_jax.model.flops import train_flops

METRICS_FILE = "metrics.jsonl"  # {"step": s, name: value, ...} per write_scalars call
TEXTS_FILE = "texts.jsonl"  # {"step": s, "name": name, "text": text} per write_text call

log = logging.getLogger(__name__)


class MetricsWriter:
    """Scalars and texts (e.g. sample generations) to TensorBoard event files and to JSONL
    files in `logdir`. The JSONL files are appended to, so a resumed run continues the same
    log; TensorBoard gets one more event file per writer and shows them together.

    `resume_step`: the step a resumed run restarts from. The killed run may have logged
    steps after its last checkpoint, which the resumed run logs again; `truncate_after`
    drops them from the JSONL files first, so each step appears once.
    """

    def __init__(self, logdir: str | Path, *, jsonl: bool = True, tensorboard: bool = True,
                 process_index: int | None = None, resume_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.active = (jax.process_index() if process_index is None else process_index) == 0
        self._jsonl = jsonl
        self._files: dict[str, IO[str]] = {}
        self._tb: Any = None
        if not self.active:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)
        if tensorboard:
            self._tb = _tensorflow().summary.create_file_writer(str(self.logdir),
                                                                flush_millis=10_000)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        values = {name: float(value) for name, value in scalars.items()}  # fetches jax scalars
        self._append(METRICS_FILE, {"step": int(step), **values})
        if self._tb is not None:
            tf = _tensorflow()
            with self._tb.as_default(step=int(step)):
                for name, value in values.items():
                    tf.summary.write(name, tf.constant(value, tf.float32),
                                     metadata=_plugin_metadata("scalars"))

    def write_text(self, step: int, name: str, text: str) -> None:
        if not self.active:
            return
        self._append(TEXTS_FILE, {"step": int(step), "name": name, "text": text})
        if self._tb is not None:
            tf = _tensorflow()
            with self._tb.as_default(step=int(step)):
                tf.summary.write(name, tf.constant(text, tf.string),
                                 metadata=_plugin_metadata("text"))

    def truncate_after(self, step: int) -> int:
        """Drops the JSONL records of steps after `step` (and a line torn by a kill), each
        file replaced atomically; returns how many lines were dropped. Process 0 only; call
        it before this writer writes anything. TensorBoard's event files are not rewritten
        (appended protobuf records; the new run writes a new file)."""
        if not self.active or not self._jsonl:
            return 0
        dropped = 0
        for filename in (METRICS_FILE, TEXTS_FILE):
            if filename in self._files:
                raise RuntimeError(f"MetricsWriter.truncate_after after writing {filename}")
            dropped += _truncate_jsonl(self.logdir / filename, step)
        return dropped

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _append(self, filename: str, record: dict[str, Any]) -> None:
        if not self._jsonl:
            return
        f = self._files.get(filename)
        if f is None:
            f = self._files[filename] = open(self.logdir / filename, "a", encoding="utf-8")
        f.write(json.dumps(record) + "\n")  # NaN/Infinity are kept (Python's json reads them)
        f.flush()


class ProgressBar:
    """A tqdm bar on stderr: step, loss, tokens/s, MFU and the ETA. Resumed runs pass
    `initial_step`, so the rate and ETA count only this run's steps. When stderr is not a
    terminal (a log file), it redraws at most every 30 s instead of every half second."""

    def __init__(self, total_steps: int, *, initial_step: int = 0, disable: bool = False,
                 process_index: int | None = None, file: IO[str] | None = None) -> None:
        from tqdm import tqdm

        file = sys.stderr if file is None else file
        is_tty = hasattr(file, "isatty") and file.isatty()
        not_first = (jax.process_index() if process_index is None else process_index) != 0
        self._bar = tqdm(total=total_steps, initial=initial_step, file=file, unit="step",
                         dynamic_ncols=True, mininterval=0.5 if is_tty else 30.0,
                         disable=disable or not_first)

    @property
    def step(self) -> int:
        return self._bar.n

    def update(self, step: int, *, loss: float | None = None,
               tokens_per_s: float | None = None, mfu: float | None = None) -> None:
        postfix = {}
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4g}"
        if tokens_per_s is not None:
            postfix["tok/s"] = f"{tokens_per_s:,.0f}"
        if mfu is not None:
            postfix["mfu"] = f"{mfu:.1%}"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Throughput:
    """tokens/s and model FLOPs utilization of the whole job.

    `flops_per_step`: model FLOPs of one train step on the global batch (see
    `flan_jax.model.flops.train_flops`, or `Throughput.for_model`).
    `peak_flops_per_device`: FLOP/s one device can do (a datasheet number for the dtype in
    use, or `measure_peak_flops()`); MFU is left out when it is None.
    """

    flops_per_step: float
    peak_flops_per_device: float | None = None
    num_devices: int = 1

    @classmethod
    def for_model(cls, cfg: T5Config, batch_size: int, inputs_length: int,
                  targets_length: int, *, peak_flops_per_device: float | None = None,
                  num_devices: int | None = None, lora: Any = None,
                  frozen_base: bool = False) -> "Throughput":
        """`batch_size` is global; lengths are the (packed) feature lengths; `lora`: the
        run's LoraConfig, `frozen_base`: only adapters train (no base weight gradients)."""
        return cls(train_flops(cfg, batch_size, inputs_length, targets_length, lora,
                               frozen_base=frozen_base),
                   peak_flops_per_device,
                   jax.device_count() if num_devices is None else num_devices)

    def __call__(self, *, steps: int, tokens: int, seconds: float) -> dict[str, float]:
        """Rates over `steps` steps that processed `tokens` tokens in `seconds` of wall time.
        Time steps by a value the host waits for (e.g. the loss), not by dispatch."""
        if seconds <= 0:
            raise ValueError(f"Throughput: seconds={seconds} must be > 0")
        flops_per_s = self.flops_per_step * steps / seconds
        rates = {"steps_per_s": steps / seconds, "tokens_per_s": tokens / seconds,
                 "model_flops_per_s": flops_per_s}
        if self.peak_flops_per_device:
            rates["mfu"] = flops_per_s / (self.peak_flops_per_device * self.num_devices)
        return rates


def measure_peak_flops(dtype: Any = jnp.float32, sizes: Sequence[int] | None = None, *,
                       steps: int = 5, warmup: int = 2) -> float:
    """FLOP/s of the best square matmul under `jit` on the default device: the practical
    ceiling MFU is measured against when no datasheet peak is given. `sizes` default to
    1024-3072 on CPU and 4096-16384 on accelerators (small ones don't fill a GPU)."""
    if sizes is None:
        on_cpu = jax.default_backend() == "cpu"
        sizes = (1024, 2048, 3072) if on_cpu else (4096, 8192, 16384)
    matmul = jax.jit(jnp.matmul)
    best = 0.0
    for n in sizes:
        ka, kb = jax.random.split(jax.random.key(n))
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), steps, warmup)
        best = max(best, 2.0 * n**3 / seconds)
    return best


def median_seconds(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    """Median seconds per call of `fn` (which must block until its work is done), after
    `warmup` calls: the one timer of the MFU peak and the benchmarks."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _truncate_jsonl(path: Path, step: int) -> int:
    """Rewrites `path` without the records of steps > `step` and without a last line cut
    off by a kill; streamed (two passes, constant memory), untouched when nothing goes."""
    if not path.exists():
        return 0

    def keep(line: str) -> bool:
        if not line.endswith("\n"):  # cut off mid-write (even if what is there parses)
            return False
        try:
            record = json.loads(line)
        except ValueError:
            return False
        try:
            return int(record.get("step", step)) <= step
        except (AttributeError, TypeError, ValueError):  # not ours: kept as it is
            return True

    with open(path, encoding="utf-8") as f:
        dropped = sum(not keep(line) for line in f)
    if dropped:
        with open(path, encoding="utf-8") as f, atomic_file(path) as out:
            out.writelines(line for line in f if keep(line))
        log.info("%s: dropped %d lines after step %d (the resumed run writes those steps "
                 "again)", path, dropped, step)
    return dropped


def _plugin_metadata(plugin: str) -> Any:
    """What `tf.summary.scalar` / `tf.summary.text` attach, without needing the `tensorboard`
    package (TF 2.21 moved those two into it; `tf.summary.write` stays in TF): the plugin
    name, and empty content (= the plugins' version-0 `*PluginData`)."""
    tf = _tensorflow()
    return tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin))


_tf_gpus_hidden = False


def _tensorflow() -> Any:
    """TensorFlow for summaries only: imported on first use, quietly, with its GPUs hidden
    (so it never takes accelerator memory from JAX)."""
    global _tf_gpus_hidden
    from flan_jax.quiet import import_tensorflow
    import_tensorflow()
    import tensorflow as tf
    if not _tf_gpus_hidden:
        _tf_gpus_hidden = True
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as e:  # TF already initialized its devices elsewhere
            log.warning("could not hide GPUs from TensorFlow: %s", e)
    return tf
