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
    """What the trainer reads. `batch_size` is global (all hosts together)."""

    mixture_or_task_name: str = "flan_jax_default"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 64})
    batch_size: int = 32
    split: str = "train"
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    module_imports: tuple[str, ...] = ("mixtures",)


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
    """Endless (or `num_epochs`) numpy batches of this host's share, from batch `start`."""
    import seqio
    import tensorflow as tf

    import_task_modules(cfg)
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
        dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs,
        feature_converter=seqio.EncDecFeatureConverter(pack=cfg.pack), seed=cfg.seed,
        use_cached=False, shard_info=seqio.ShardInfo(process_index, process_count))
    ds = ds.batch(per_host_batch_size(cfg.batch_size, process_count), drop_remainder=True)
    if start:
        ds = ds.skip(start)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    for batch in ds.as_numpy_iterator():
        yield {k: np.asarray(v) for k, v in batch.items()}


def position(batches_drawn: int, cfg: DataConfig) -> dict[str, Any]:
    """The data state saved with a checkpoint; `check_position` refuses a mismatch."""
    return {"batches": int(batches_drawn), "mixture": cfg.mixture_or_task_name,
            "seed": cfg.seed, "batch_size": cfg.batch_size}


def check_position(saved: Mapping[str, Any], cfg: DataConfig) -> int:
    for key, now in (("mixture", cfg.mixture_or_task_name), ("seed", cfg.seed),
                     ("batch_size", cfg.batch_size)):
        if key in saved and saved[key] != now:
            raise ValueError(
                f"the checkpoint's data pipeline used {key}={saved[key]!r}, this run "
                f"DataConfig has {now!r}: resuming would not continue the same data stream")
    return int(saved.get("batches", 0))
