"""gin bindings for the model: `gin/models/*.gin` set `T5Config.<field>`; `model_config()`
returns the bound config. A misspelt field fails when the gin file is parsed, naming it.
"""

from __future__ import annotations

import dataclasses

import gin

from flan_jax.model.config import T5Config

_GinT5Config = gin.external_configurable(T5Config, name="T5Config", module="flan_jax.model")


def model_config() -> T5Config:
    """The T5Config that the parsed gin files describe (defaults: Flan-T5 small shapes)."""
    bound = _GinT5Config()
    return T5Config(**{f.name: getattr(bound, f.name) for f in dataclasses.fields(T5Config)})
