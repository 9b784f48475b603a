"""The Grain reader's stream: chunks of examples rendered in workers, batches per host.

The global example stream is split into `shards` interleaved shards (shard s owns global
indices s, s + shards, ...); each shard is cut into chunks of `chunk` examples, and one
chunk is one Grain element: its examples are looked up in the mixture, read, rendered,
tokenized and packed in a worker process (`ChunkMaker`, picklable and free of TensorFlow
and seqio). A host reads only its own shards' chunks and takes `batch_size / shards` rows
from each shard per batch, in shard order, so the global batch does not depend on how many
hosts or workers there are. Its state is (chunk, row) per shard: restoring it re-renders at
most one chunk per shard, whatever the step. `StreamSettings.feature_converter` picks the
features a chunk is packed into (`packing.CONVERTERS`: enc-dec, decoder-only, prefix LM).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from flan_jax.data.reader.mixture import IndexMixture
from flan_jax.data.reader.packing import converter, pack, pad, trim_eos
from flan_jax.data.rows import Rows
from flan_jax.errors import ReaderError

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
_ENDLESS = 1 << 62
# Settings added after streams were first saved: what a stream saved without them used.
SAVED_DEFAULTS = {"feature_converter": "enc_dec"}


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """Everything that fixes the stream: a resume must match all of it (see `check`)."""

    mixture: str
    split: str
    seed: int
    shuffle: bool
    batch_size: int
    inputs_length: int
    targets_length: int
    pack: bool
    shards: int
    chunk: int
    feature_converter: str = "enc_dec"

    def __post_init__(self) -> None:
        converter(self.feature_converter)  # an unknown name fails here, naming the setting
        if self.batch_size % self.shards:
            raise ReaderError(f"DataConfig.batch_size={self.batch_size} must divide evenly "
                              f"over {self.shards} shards (DataConfig.shards)")
        if self.chunk < 1:
            raise ReaderError(f"DataConfig.chunk_examples={self.chunk} must be >= 1")

    @property
    def rows_per_shard(self) -> int:
        return self.batch_size // self.shards

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, saved: Mapping[str, Any]) -> None:
        """Refuses a saved stream whose settings differ, naming the DataConfig field."""
        names = {"inputs_length": "task_feature_lengths['inputs']",
                 "targets_length": "task_feature_lengths['targets']",
                 "mixture": "mixture_or_task_name", "chunk": "chunk_examples"}
        saved = {**SAVED_DEFAULTS, **saved}
        for key, now in self.to_dict().items():
            if key in saved and saved[key] != now:
                raise ReaderError(
                    f"the checkpoint's data stream used DataConfig.{names.get(key, key)}="
                    f"{saved[key]!r}, this run has {now!r}: resuming would not continue the "
                    f"same stream (bind it back, or train in a fresh model_dir)")


class ChunkMaker:
    """Grain element (a chunk of one shard) -> its packed rows. Runs in worker processes."""

    def __init__(self, names: Sequence[str], rows: Sequence[Rows], mixture: IndexMixture,
                 tokenizer: Any, settings: StreamSettings, local_shards: Sequence[int]):
        self.names, self.rows, self.mixture = list(names), list(rows), mixture
        self.tokenizer, self.settings = tokenizer, settings
        self.local_shards = tuple(local_shards)

    def element(self, chunk: int, shard: int) -> int:
        return chunk * len(self.local_shards) + self.local_shards.index(shard)

    def examples(self, chunk: int, shard: int) -> np.ndarray:
        """The global example indices of one chunk of one shard."""
        s = self.settings
        return (np.arange(chunk * s.chunk, (chunk + 1) * s.chunk) * s.shards + shard)

    def __call__(self, element: int) -> dict[str, Any]:
        chunk, i = divmod(int(element), len(self.local_shards))
        shard = self.local_shards[i]
        s, tok = self.settings, self.tokenizer
        tasks, rows = self.mixture.lookup_many(self.examples(chunk, shard))
        tokens = []
        for t, r in zip(tasks.tolist(), rows.tolist()):
            ex = self.rows[t][r]
            tokens.append((trim_eos(tok.encode(ex["inputs"]), s.inputs_length, tok.eos_id),
                           trim_eos(tok.encode(ex["targets"]), s.targets_length, tok.eos_id)))
        features = (pack if s.pack else pad)(tokens, s.inputs_length, s.targets_length,
                                             s.feature_converter)
        return {"chunk": chunk, "shard": shard, "features": features}


class GrainReader:
    """This host's batches: `next(reader)` is a dict of [rows, length] int32 arrays.

    `workers` > 0: Grain worker processes make chunks; 0: a thread of this process does,
    `prefetch` chunks ahead (prefetch=0: only when asked, in the caller's thread).

    `state()` is {shard: [chunk, row]} of the next row each local shard will give; pass it
    back (merged over hosts, see `train.data`) to continue the very same stream.
    """

    def __init__(self, maker: ChunkMaker, *, workers: int = 0,
                 state: Mapping[str, Sequence[int]] | None = None, prefetch: int = 2):
        self.maker, self.settings = maker, maker.settings
        self._pos = {s: tuple(state.get(str(s), (0, 0))) if state else (0, 0)
                     for s in maker.local_shards}
        self._queues: dict[int, collections.deque] = {s: collections.deque()
                                                      for s in maker.local_shards}
        first = min(c for c, _ in self._pos.values())
        self._iter = _grain_iterator(maker, maker.element(first, maker.local_shards[0]),
                                     workers, prefetch)

    def __iter__(self) -> "GrainReader":
        return self

    def __next__(self) -> Batch:
        n = self.settings.rows_per_shard
        parts = [self._take(s, n) for s in self.maker.local_shards]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def state(self) -> dict[str, list[int]]:
        return {str(s): list(self._pos[s]) for s in self.maker.local_shards}

    def close(self) -> None:
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def _take(self, shard: int, n: int) -> Batch:
        out: list[Batch] = []
        queue = self._queues[shard]
        while n:
            while not queue:
                self._pull()
            entry = queue[0]  # [chunk, features, next row]
            chunk, features, row = entry
            total = len(features["decoder_target_tokens"])
            m = min(n, total - row)
            out.append({k: v[row:row + m] for k, v in features.items()})
            entry[2] = row + m
            n -= m
            if entry[2] == total:
                queue.popleft()
            nxt = queue[0] if queue else None
            self._pos[shard] = (nxt[0], nxt[2]) if nxt else (chunk + 1, 0)
        return {k: np.concatenate([b[k] for b in out]) for k in out[0]}

    def _pull(self) -> None:
        if self._iter is None:
            raise ReaderError("the data reader is closed")
        try:
            element = next(self._iter)
        except RuntimeError as e:
            if "terminated unexpectedly" in str(e):
                raise ReaderError(f"a data worker process died ({e}); see its output above "
                                  "(out of memory?), or set DataConfig.workers=0 to read in "
                                  "this process") from e
            raise
        shard, chunk = element["shard"], element["chunk"]
        want_chunk, want_row = self._pos[shard]
        if chunk < want_chunk:  # restored: this shard is past that chunk
            return
        row = want_row if chunk == want_chunk and not self._queues[shard] else 0
        # Copies: a worker's arrays live in shared memory that Grain frees when released.
        features = {k: np.array(v) for k, v in element["features"].items()}
        self._queues[shard].append([chunk, features, row])


def _grain_iterator(maker: ChunkMaker, first: int, workers: int,
                    prefetch: int) -> Iterator[dict[str, Any]]:
    import grain

    _absl_flags_parsed()  # Grain reads absl flags; a library can't rely on app.run
    # No read threads: chunks are CPU-bound Python (threads only contend for the GIL), and
    # Grain's default read-ahead of 500 elements would hold ~500 chunks in memory.
    ds = grain.MapDataset.range(first, _ENDLESS).map(maker).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=prefetch),
                            worker_init_fn=_exit_with_parent)
    elif prefetch > 0:  # a thread renders ahead while the trainer steps
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return iter(ds)


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """In each worker: exit when the trainer is gone (killed by SIGKILL or OOM, it can't
    stop its workers, which would otherwise live on holding memory and cores)."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="flan_jax-parent-watch", daemon=True).start()


def _absl_flags_parsed() -> None:
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
