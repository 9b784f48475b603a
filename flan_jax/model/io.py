"""flan-jax model directories (config.json + orbax params) and loading any model directory.

A flan-jax directory holds `config.json` (T5Config fields, `"format": "flan-jax"`) and an
orbax `params/` checkpoint; `load_pretrained` also accepts a Hugging Face T5 directory, so
every entry point can take either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flan_jax.model.config import T5Config
from flan_jax.model.convert import (CheckpointError, Params, atomic_directory,
                                    load_hf_checkpoint)
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
                    overwrite: bool = False) -> Path:
    """Writes a flan-jax model directory atomically."""
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(
            json.dumps({"format": FORMAT, **cfg.to_dict()}, indent=2) + "\n")
        arrays = jax.tree.map(np.asarray, params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "params").absolute(), arrays)
    return Path(path)


def load_flan_jax_dir(path: str | os.PathLike[str],
                      **overrides: Any) -> tuple[T5Config, Params]:
    path = Path(path)
    config_path = path / "config.json"
    raw = json.loads(config_path.read_text())
    raw.pop("format", None)
    try:
        cfg = T5Config.from_dict(raw).replace(**overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    # Restore against the model's own tree so structure, shapes and dtypes are checked.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params_of(abstract_model(cfg)))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore((path / "params").absolute(), target)
    except Exception as e:  # orbax raises many types; say which directory failed
        raise CheckpointError(f"{path / 'params'}: cannot restore parameters ({e})") from e
    return cfg, params


def load_pretrained(path: str | os.PathLike[str], **overrides: Any) -> tuple[T5Config, Params]:
    """(config, params) from a flan-jax or a Hugging Face T5 directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    if is_flan_jax_dir(path):
        return load_flan_jax_dir(path, **overrides)
    return load_hf_checkpoint(path, **overrides)
