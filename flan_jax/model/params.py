"""Building a model from its config (`T5`, `DecoderOnly` or `SemiCausal`), and moving between it and a
plain nested dict of parameter arrays.

The dict form (what `nnx.to_pure_dict` gives) is what converters, checkpoints and the
functional train step exchange; `param_axes` gives the matching tree of logical axis names.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from flan_jax.model.config import T5Config
from flan_jax.model.decoder_only import DecoderOnly
from flan_jax.model.layers import shapes_only
from flan_jax.model.semi_causal import SemiCausal
from flan_jax.model.t5 import T5

Params = dict[str, Any]
Model = T5 | DecoderOnly  # SemiCausal is a DecoderOnly
MODEL_CLASSES: dict[str, type[Model]] = {"encoder_decoder": T5, "decoder_only": DecoderOnly,
                                         "semi_causal": SemiCausal}


def create_model(cfg: T5Config, seed: int = 0) -> Model:
    """A freshly initialised model of `cfg.architecture` (parameters from `seed`)."""
    return MODEL_CLASSES[cfg.architecture](cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: T5Config) -> Model:
    """Shapes and dtypes only; nothing is allocated (what `nnx.eval_shape` of `create_model`
    gives, built without tracing: see `layers.shapes_only`)."""
    with shapes_only():
        return MODEL_CLASSES[cfg.architecture](cfg, rngs=nnx.Rngs(params=0))


def params_of(model: Model) -> Params:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def param_axes(model: Model) -> Params:
    """Tree of logical axis-name tuples, shaped like `params_of(model)`."""
    state = nnx.state(model, nnx.Param)
    axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(axes)


def model_from_params(cfg: T5Config, params: Params) -> Model:
    """A model holding `params` (arrays or numpy); shapes and dtypes are checked."""
    model = abstract_model(cfg)
    expected = params_of(model)
    flat_want = dict(_flatten(expected))
    flat_got = dict(_flatten(params))
    missing = sorted(set(flat_want) - set(flat_got))
    extra = sorted(set(flat_got) - set(flat_want))
    if missing or extra:
        raise ValueError(f"params do not fit {cfg}: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, want in flat_want.items():
        got = flat_got[key]
        if tuple(np.shape(got)) != tuple(want.shape):
            raise ValueError(f"param {key}: shape {tuple(np.shape(got))}, expected {want.shape}")
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda w, x: jax.numpy.asarray(x, dtype=w.dtype), expected, params))
    nnx.update(model, state)
    return model


def _flatten(tree: Params, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.extend(_flatten(v, key) if isinstance(v, dict) else [(key, v)])
    return out
