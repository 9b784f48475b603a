"""The flan-jax models: T5 encoder-decoder, decoder-only (causal / prefix LM) and METALM's
semi-causal model in Flax NNX, config presets, Hugging Face interop."""

from flan_jax.model.config import T5Config, get_config, preset_names
from flan_jax.model.decoder_only import DecoderOnly
from flan_jax.model.params import create_model, model_from_params, param_axes, params_of
from flan_jax.model.semi_causal import SemiCausal
from flan_jax.model.t5 import T5

__all__ = ["DecoderOnly", "SemiCausal", "T5", "T5Config", "create_model", "get_config", "model_from_params", "param_axes",
           "params_of", "preset_names"]
