"""flan-jax model directories (config.json + orbax params) and loading any model directory.

A flan-jax directory holds `config.json` (T5Config fields, `"format": "flan-jax"`) and an
orbax `params/` checkpoint; `load_pretrained` also accepts a Hugging Face T5 directory, so
every entry point can take either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flan_jax.model.config import T5Config
from flan_jax.errors import CheckpointError
from flan_jax.faults import kill_point
from flan_jax.model.convert import (HFCheckpoint, Params, atomic_directory, get_path,
                                    load_hf_checkpoint, set_path)
from flan_jax.model.params import abstract_model, params_of

FORMAT = "flan-jax"


def is_flan_jax_dir(path: str | os.PathLike[str]) -> bool:
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def save_pretrained(path: str | os.PathLike[str], cfg: T5Config, params: Params, *,
                    overwrite: bool = False, alone: bool = False,
                    extra: Callable[[Path], Any] | None = None) -> Path:
    """Writes a flan-jax model directory atomically (config.json + orbax params/).

    `alone`: only this process saves (process 0 of several, host params gathered): orbax's
    default checkpointer would wait at barriers for every process. `extra(tmp)` writes more
    files into the directory before its one rename (train's `trained_on.json`).
    """
    options = {}
    if alone:
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(
            json.dumps({"format": FORMAT, **cfg.to_dict()}, indent=2) + "\n")
        arrays = jax.tree.map(np.asarray, params)
        with ocp.StandardCheckpointer(**options) as ckptr:
            ckptr.save((tmp / "params").absolute(), arrays)
        if extra is not None:
            extra(tmp)
        kill_point("during_export")  # (tests: a real SIGKILL before the rename)
    return Path(path)


def _flan_jax_config(path: Path, overrides: dict[str, Any]) -> T5Config:
    config_path = path / "config.json"
    raw = json.loads(config_path.read_text())
    raw.pop("format", None)
    try:
        return T5Config.from_dict(raw).replace(**overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: {e}") from e


def _restore_flan_jax(path: Path, cfg: T5Config, shardings: Params | None) -> Params:
    # Restored against the model's own tree, so structure, shapes and dtypes are checked;
    # with shardings, orbax reads into each device only the blocks it holds.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params_of(abstract_model(cfg)))
    if shardings is not None:
        target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                              target, shardings)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore((path / "params").absolute(), target)
    except Exception as e:  # orbax raises many types; say which directory failed
        raise CheckpointError(f"{path / 'params'}: cannot restore parameters ({e})") from e


def load_flan_jax_dir(path: str | os.PathLike[str],
                      **overrides: Any) -> tuple[T5Config, Params]:
    path = Path(path)
    cfg = _flan_jax_config(path, overrides)
    return cfg, _restore_flan_jax(path, cfg, None)


def _model_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    return path


def load_pretrained(path: str | os.PathLike[str], **overrides: Any) -> tuple[T5Config, Params]:
    """(config, params) from a flan-jax or a Hugging Face T5 directory, in host memory."""
    path = _model_dir(path)
    if is_flan_jax_dir(path):
        return load_flan_jax_dir(path, **overrides)
    return load_hf_checkpoint(path, **overrides)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> T5Config:
    """The config of a flan-jax or Hugging Face directory, without reading its weights (so a
    run can check it against gin before loading anything)."""
    path = _model_dir(path)
    if is_flan_jax_dir(path):
        return _flan_jax_config(path, overrides)
    return HFCheckpoint(path).config(**overrides)


def load_sharded(path: str | os.PathLike[str], cfg: T5Config, shardings: Params) -> Params:
    """`cfg`'s parameters from `path`, each array placed straight into its sharding.

    Every process reads only the blocks its own devices hold (orbax for a flan-jax dir,
    memory-mapped safetensors slices for a Hugging Face one), cast to `cfg.param_dtype`: no
    host ever holds the full model, and nothing is closed over by a `jit`. `cfg` comes from
    `load_config` (with the run's settings); `shardings` is shaped like the params tree.
    """
    path = _model_dir(path)
    if is_flan_jax_dir(path):
        return _restore_flan_jax(path, cfg, shardings)
    checkpoint = HFCheckpoint(path)
    checkpoint.check(cfg)
    params: Params = {}
    for name, shape, read in checkpoint.tensors(cfg):
        blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

        def block(index: tuple[slice, ...], read=read, blocks=blocks,
                  shape=shape) -> np.ndarray:
            key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
            if key not in blocks:  # devices holding the same block (replicas) share a read
                blocks[key] = read(index)
            return blocks[key]

        sharding = get_path(shardings, name)
        set_path(params, name, jax.make_array_from_callback(shape, sharding, block))
    return params

