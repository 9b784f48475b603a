"""gin bindings for the model: `gin/models/*.gin` set `T5Config.<field>`; `model_config()`
returns the bound config. A misspelt field fails when the gin file is parsed, naming it.

Finetuning a checkpoint, its config decides the architecture and gin the run settings
(`config.RUN_FIELDS`: dropout, dtypes, remat, attention backend): `run_settings()` are
those, and `check_architecture(cfg)` refuses a binding that would change a shape field.
"""

from __future__ import annotations

import dataclasses

import gin

from flan_jax.errors import ConfigError
from flan_jax.model.config import RUN_FIELDS, T5Config

_GinT5Config = gin.external_configurable(T5Config, name="T5Config", module="flan_jax.model")


def model_config() -> T5Config:
    """The T5Config that the parsed gin files describe (defaults: Flan-T5 small shapes)."""
    bound = _GinT5Config()
    return T5Config(**{f.name: getattr(bound, f.name) for f in dataclasses.fields(T5Config)})


def run_settings() -> dict[str, object]:
    """The run fields of the gin-bound config (bound or default): what a finetune uses."""
    cfg = model_config()
    return {name: getattr(cfg, name) for name in RUN_FIELDS}


def check_architecture(cfg: T5Config, source: str) -> None:
    """Refuses gin bindings of architecture fields that differ from a checkpoint's config."""
    for name, value in sorted(gin.get_bindings("T5Config").items()):
        if name not in RUN_FIELDS and value != getattr(cfg, name):
            raise ConfigError(
                f"--gin.T5Config.{name}={value!r}, but the checkpoint {source} has "
                f"{name}={getattr(cfg, name)!r}: a checkpoint decides the architecture (only "
                f"{', '.join(RUN_FIELDS)} are the run's); drop the binding or the models/*.gin "
                "file that sets it")
