"""Training batches: a seqio mixture, packed by EncDecFeatureConverter, batched per host.

The pipeline is deterministic for a given seed, so its position is just the number of
batches drawn; a resumed run rebuilds it and skips that many (exact, at the cost of
re-reading them; tf.data can't checkpoint the Python generators our sources use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import gin
import numpy as np

Batch = dict[str, np.ndarray]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the trainer reads. `batch_size` is global (all hosts together).

    `shards`: the mixture is read in this many disjoint seqio shards, each process reading
    `shards / process_count` of them (default: one per process). Fixing it makes the global
    batches the same whatever the number of processes (a run can resume on fewer hosts).
    """

    mixture_or_task_name: str = "flan_jax_default"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 64})
    batch_size: int = 32
    split: str = "train"
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    module_imports: tuple[str, ...] = ("mixtures",)
    shards: int | None = None

    def shards_for(self, process_count: int) -> int:
        shards = self.shards or process_count
        if shards < 1 or shards % process_count:
            raise ValueError(f"DataConfig.shards={self.shards} must be a positive multiple of "
                             f"the {process_count} processes")
        return shards


def import_task_modules(cfg: DataConfig) -> None:
    from flan_jax.data.export import import_modules
    import_modules(cfg.module_imports)


def per_host_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"DataConfig.batch_size={global_batch} must divide evenly over "
                         f"{process_count} processes")
    return global_batch // process_count


def batches(cfg: DataConfig, *, start: int = 0, process_index: int = 0,
            process_count: int = 1, num_epochs: int | None = None) -> Iterator[Batch]:
    """Endless (or `num_epochs`) numpy batches of this host's share, from batch `start`.

    Process `i` reads seqio shards `i * k .. (i + 1) * k - 1` (k = shards / process_count),
    `batch_size / shards` rows from each, concatenated in shard order; the same seed on
    every process, so the global batch is the shards' rows in shard order.
    """
    import seqio
    import tensorflow as tf

    import_task_modules(cfg)
    shards = cfg.shards_for(process_count)
    rows = per_host_batch_size(cfg.batch_size, shards)
    k = shards // process_count

    def shard(index: int):
        ds = seqio.get_dataset(
            cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
            dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs,
            feature_converter=seqio.EncDecFeatureConverter(pack=cfg.pack), seed=cfg.seed,
            use_cached=False, shard_info=seqio.ShardInfo(index, shards))
        return ds.batch(rows, drop_remainder=True)

    ds = shard(process_index * k)
    if k > 1:
        parts = tuple(shard(process_index * k + j) for j in range(k))
        ds = tf.data.Dataset.zip(parts).map(
            lambda *bs: {name: tf.concat([b[name] for b in bs], 0) for name in bs[0]})
    if start:
        ds = ds.skip(start)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    for batch in ds.as_numpy_iterator():
        yield {k: np.asarray(v) for k, v in batch.items()}


def position(batches_drawn: int, cfg: DataConfig, process_count: int = 1) -> dict[str, Any]:
    """The data state saved with a checkpoint; `check_position` refuses a mismatch."""
    return {"batches": int(batches_drawn), "mixture": cfg.mixture_or_task_name,
            "seed": cfg.seed, "batch_size": cfg.batch_size,
            "shards": cfg.shards_for(process_count)}


def check_position(saved: Mapping[str, Any], cfg: DataConfig, process_count: int = 1) -> int:
    for key, now in (("mixture", cfg.mixture_or_task_name), ("seed", cfg.seed),
                     ("batch_size", cfg.batch_size),
                     ("shards", cfg.shards_for(process_count))):
        if key in saved and saved[key] != now:
            raise ValueError(
                f"the checkpoint's data pipeline used {key}={saved[key]!r}, this run "
                f"DataConfig has {now!r}: resuming would not continue the same data stream")
    return int(saved.get("batches", 0))
