"""Training batches from a registered seqio mixture, per host, by one of two readers.

`DataConfig.reader`: "grain" (default) reads every example by index through
`flan_jax.data.reader` (cost independent of the number of tasks and of the step resumed
from; state: a few numbers per shard). "seqio" is the reference tf.data pipeline
(`seqio.get_dataset` + the seqio converter of `DataConfig.feature_converter`); its position
is the number of batches drawn, and a resume re-reads them. Both give the same features for
the same registrations; a mixture the Grain reader can't read (Tasks with TF preprocessors
of their own) is read by seqio, with a warning naming them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import gin
import numpy as np

from flan_jax.data.reader.packing import converter
from flan_jax.errors import ReaderError

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]
READERS = ("grain", "seqio")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the trainer reads. `batch_size` is global (all hosts together).

    `shards`: the mixture is read in this many disjoint shards, each process reading
    `shards / process_count` of them (default: one per process). Fixing it makes the global
    batches the same whatever the number of processes (a run can resume on fewer hosts).
    `reader`: "grain" or "seqio" (see the module). `workers`: Grain worker processes
    (None: one per core beyond the trainer's, at most 8; 0: a thread of this process).
    `chunk_examples`: examples rendered and packed together (a resume re-renders at most
    one chunk per shard; packing is first-fit within a chunk).
    `feature_converter`: the features of a batch, as seqio's converters make them:
    "enc_dec" (`EncDecFeatureConverter`: encoder_input_tokens + decoder_* features),
    "decoder" (decoder-only: inputs + targets as one decoder sequence of
    inputs + targets tokens, loss on the targets only; `DecoderFeatureConverter` without
    `decoder_causal_attention`) or "prefix_lm" (`PrefixLMFeatureConverter`: the same plus
    `decoder_causal_attention`, 1 on the inputs and the position after them).
    `task_feature_lengths` trims each task's inputs and targets in every case.
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
    reader: str = "grain"
    workers: int | None = None
    chunk_examples: int = 512
    feature_converter: str = "enc_dec"

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ReaderError(f"DataConfig.reader={self.reader!r}: choose one of {READERS}")
        if self.workers is not None and self.workers < 0:
            raise ReaderError(f"DataConfig.workers={self.workers} must be >= 0 (or None)")
        if self.chunk_examples < 1:
            raise ReaderError(f"DataConfig.chunk_examples={self.chunk_examples} must be >= 1")
        converter(self.feature_converter)  # names DataConfig.feature_converter and the choices
        missing = {"inputs", "targets"} - set(self.task_feature_lengths)
        if missing:
            raise ReaderError(f"DataConfig.task_feature_lengths needs {sorted(missing)}")

    def model_feature_lengths(self) -> dict[str, int]:
        """Each batch feature's length (seqio's `get_model_feature_lengths`), e.g.
        decoder_target_tokens: inputs + targets for "decoder" and "prefix_lm"."""
        return converter(self.feature_converter).lengths(
            int(self.task_feature_lengths["inputs"]), int(self.task_feature_lengths["targets"]),
            self.pack)

    def num_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(0, min(8, (os.cpu_count() or 1) - 1))

    def shards_for(self, process_count: int) -> int:
        shards = self.shards or process_count
        if shards < 1 or shards % process_count:
            raise ValueError(f"DataConfig.shards={self.shards} must be a positive multiple of "
                             f"the {process_count} processes")
        return shards


def import_task_modules(cfg: DataConfig) -> None:
    """Imports the task modules and checks the mixture is registered (naming the closest)."""
    from flan_jax.data.export import import_modules
    from flan_jax.data.reader.build import leaf_tasks

    import_modules(cfg.module_imports)
    leaf_tasks(cfg.mixture_or_task_name)


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
    conv = converter(cfg.feature_converter)
    names = conv.features(cfg.pack)

    def shard(index: int):
        ds = seqio.get_dataset(
            cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
            dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs,
            feature_converter=getattr(seqio, conv.seqio_class)(pack=cfg.pack), seed=cfg.seed,
            use_cached=False, shard_info=seqio.ShardInfo(index, shards))
        if conv.encoded_span:
            ds = ds.map(_encoded_span_from_prefix_lm)
        missing = set(names) - set(ds.element_spec)
        if missing:
            raise ReaderError(f"seqio's {conv.seqio_class} gave no {sorted(missing)} for "
                              f"DataConfig.feature_converter={cfg.feature_converter!r}")
        # Only the converter's features ("decoder" and "semi_causal" drop seqio's
        # decoder_causal_attention).
        ds = ds.map(lambda ex: {n: ex[n] for n in names})
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


class SeqioReader:
    """`batches` with a position (batches drawn) and a state, like GrainReader's."""

    def __init__(self, cfg: DataConfig, start: int, process_index: int, process_count: int):
        self.cfg, self.process_count, self.drawn = cfg, process_count, start
        self._it = batches(cfg, start=start, process_index=process_index,
                           process_count=process_count)

    def __iter__(self) -> "SeqioReader":
        return self

    def __next__(self) -> Batch:
        from flan_jax.data.sources import user_errors_from_tf
        with user_errors_from_tf():  # a bad row: its file:line error, not TF's wrapper
            batch = next(self._it)
        self.drawn += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"batches": self.drawn}

    def close(self) -> None:
        self._it.close()


def stream_settings(cfg: DataConfig, process_count: int = 1):
    from flan_jax.data.reader.pipeline import StreamSettings

    return StreamSettings(
        mixture=cfg.mixture_or_task_name, split=cfg.split, seed=cfg.seed, shuffle=cfg.shuffle,
        batch_size=cfg.batch_size, inputs_length=int(cfg.task_feature_lengths["inputs"]),
        targets_length=int(cfg.task_feature_lengths["targets"]), pack=cfg.pack,
        shards=cfg.shards_for(process_count), chunk=cfg.chunk_examples,
        feature_converter=cfg.feature_converter)


def make_reader(cfg: DataConfig, *, saved: Mapping[str, Any] | None = None,
                process_index: int = 0, process_count: int = 1):
    """This host's batch iterator (GrainReader or SeqioReader), continuing `saved` (the data
    position of a checkpoint: refused, naming the setting, if it was another stream)."""
    import_task_modules(cfg)  # a misspelt name fails here, naming the closest
    kind = cfg.reader
    if kind == "grain":
        from flan_jax.data.reader.build import UnsupportedMixture, resolve
        try:
            resolved = resolve(cfg.mixture_or_task_name, cfg.split)
        except UnsupportedMixture as e:
            log.warning("%s; reading the mixture with seqio (DataConfig.reader='seqio')", e)
            kind = "seqio"
    if saved:
        saved_kind = saved.get("reader", "seqio")  # (positions before readers had names)
        if saved_kind != kind:
            raise ReaderError(f"the checkpoint's data stream was read by the {saved_kind!r} "
                              f"reader, this run uses {kind!r}: resume with "
                              f"DataConfig.reader={saved_kind!r} (or train in a fresh "
                              "model_dir)")
    if kind == "seqio":
        start = check_position(saved, cfg, process_count) if saved else 0
        return SeqioReader(cfg, start, process_index, process_count)
    from flan_jax.data.reader.build import grain_reader
    settings = stream_settings(cfg, process_count)
    if saved:
        settings.check(saved)
    return grain_reader(settings, process_index=process_index, process_count=process_count,
                        workers=cfg.num_workers(), resolved=resolved,
                        state=saved.get("shards_state") if saved else None)


def reader_position(reader, cfg: DataConfig, process_count: int = 1) -> dict[str, Any]:
    """The data state saved with a checkpoint: the reader's (merged over hosts) + settings.
    Every process must call it at the same step (it gathers the hosts' shard states)."""
    if isinstance(reader, SeqioReader):
        return {"reader": "seqio", **position(reader.drawn, cfg, process_count)}
    state = reader.state()
    if process_count > 1:
        state = _gather_shard_states(state, cfg.shards_for(process_count))
    return {"reader": "grain", **stream_settings(cfg, process_count).to_dict(),
            "shards_state": state}


def _gather_shard_states(local: Mapping[str, list[int]], shards: int) -> dict[str, list[int]]:
    from jax.experimental import multihost_utils

    table = np.full((shards, 2), -1, np.int64)
    for s, (chunk, row) in local.items():
        table[int(s)] = (chunk, row)
    every = np.asarray(multihost_utils.process_allgather(table))  # [processes, shards, 2]
    merged = every.max(axis=0)
    return {str(s): [int(c), int(r)] for s, (c, r) in enumerate(merged)}


def position(batches_drawn: int, cfg: DataConfig, process_count: int = 1) -> dict[str, Any]:
    """The data state saved with a checkpoint; `check_position` refuses a mismatch."""
    return {"batches": int(batches_drawn), "mixture": cfg.mixture_or_task_name,
            "seed": cfg.seed, "batch_size": cfg.batch_size,
            "shards": cfg.shards_for(process_count),
            "lengths": {k: int(v) for k, v in cfg.task_feature_lengths.items()},
            "pack": cfg.pack, "feature_converter": cfg.feature_converter}


def check_position(saved: Mapping[str, Any], cfg: DataConfig, process_count: int = 1) -> int:
    """Batches drawn of a seqio-reader position; refuses another stream, naming the field."""
    from flan_jax.data.reader.pipeline import SAVED_DEFAULTS

    saved = {**SAVED_DEFAULTS, **saved}  # (positions saved before those settings existed)
    for key, now in (("mixture", cfg.mixture_or_task_name), ("seed", cfg.seed),
                     ("batch_size", cfg.batch_size),
                     ("shards", cfg.shards_for(process_count)),
                     ("lengths", dict(cfg.task_feature_lengths)), ("pack", cfg.pack),
                     ("feature_converter", cfg.feature_converter)):
        if key in saved and saved[key] != now:
            raise ReaderError(
                f"the checkpoint's data pipeline used {key}={saved[key]!r}, this run "
                f"DataConfig has {now!r}: resuming would not continue the same data stream")
    return int(saved.get("batches", 0))


def _encoded_span_from_prefix_lm(ex: dict) -> dict:
    """seqio's prefix-LM example + `decoder_encoded_span`: its decoder_causal_attention less
    each segment's first position (the BOS), i.e. where decoder_input_tokens holds the inputs
    (what reader.packing writes for "semi_causal")."""
    import tensorflow as tf

    dca = ex["decoder_causal_attention"]
    if "decoder_positions" in ex:
        start = tf.equal(ex["decoder_positions"], 0)
    else:
        start = tf.equal(tf.range(tf.shape(dca)[0]), 0)
    return {**ex, "decoder_encoded_span": dca * tf.cast(~start, dca.dtype)}
