"""Hugging Face T5 / Flan-T5 / t5-v1_1 checkpoints <-> flan-jax config and params.

Reads `config.json` plus `model.safetensors` (or a sharded `model.safetensors.index.json`)
and writes the same layout back, so `transformers` loads what we export. Safetensors only:
no pickle is ever loaded. Every error names the file and the tensor or config field at fault.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from flan_jax.atomic import atomic_directory  # noqa: F401  (re-exported: io.py, train)
from flan_jax.model.config import T5Config

Params = dict[str, Any]  # nested dict of arrays, as `nnx.to_pure_dict` gives

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# HF keeps these as aliases of `shared.weight`; some checkpoints store them anyway.
_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Original T5 1.0 checkpoints carry a cross-attention bias table that T5 never uses;
# transformers ignores it on load, and so do we.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class CheckpointError(ValueError):
    """A checkpoint directory, config field or tensor that flan-jax can't use."""


# ---------------------------------------------------------------------------------------------
# Config


def config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json",
                   tie_embeddings: bool, **overrides: Any) -> T5Config:
    """T5Config from an HF T5 config dict (transformers v4 or v5 field names).

    `tie_embeddings` is decided by the weights (is there a distinct `lm_head.weight`?), since
    transformers v5 writes `tie_word_embeddings: true` for every T5.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type={model_type!r} is not supported; flan-jax reads "
            f"{SUPPORTED_MODEL_TYPES} encoder-decoders")
    if hf.get("is_encoder_decoder") is False:
        raise CheckpointError(f"{source}: is_encoder_decoder=false; flan-jax needs the "
                              "full encoder-decoder (T5ForConditionalGeneration)")
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in ("relu", "gated-gelu"):
        raise CheckpointError(
            f"{source}: feed_forward_proj={ff!r} is not supported (use 'relu' or 'gated-gelu')")
    if "scale_decoder_outputs" in hf:  # transformers v5
        scale = bool(hf["scale_decoder_outputs"])
    else:  # transformers v4: tie_word_embeddings also meant "scale the decoder output"
        scale = bool(hf.get("tie_word_embeddings", True))

    def field(name: str, default: Any = None) -> Any:
        if name in hf and hf[name] is not None:
            return hf[name]
        if default is None:
            raise CheckpointError(f"{source}: required field {name!r} is missing")
        return default

    num_layers = field("num_layers")
    kwargs = dict(
        vocab_size=field("vocab_size"),
        d_model=field("d_model"),
        num_heads=field("num_heads"),
        head_dim=field("d_kv"),
        d_ff=field("d_ff"),
        num_encoder_layers=num_layers,
        num_decoder_layers=field("num_decoder_layers", num_layers),
        feed_forward=ff,
        tie_embeddings=tie_embeddings,
        scale_decoder_outputs=scale,
        relative_attention_num_buckets=field("relative_attention_num_buckets", 32),
        relative_attention_max_distance=field("relative_attention_max_distance", 128),
        dropout_rate=float(field("dropout_rate", 0.1)),
        layer_norm_eps=float(field("layer_norm_epsilon", 1e-6)),
        pad_id=field("pad_token_id", 0),
        eos_id=_first(field("eos_token_id", 1)),
        decoder_start_id=field("decoder_start_token_id", 0),
    )
    kwargs.update(overrides)
    try:
        return T5Config(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (list, tuple)) else x


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
    """An HF config dict that transformers v4 and v5 both read as this model."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "num_heads": cfg.num_heads,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "feed_forward_proj": cfg.feed_forward,
        # v4 reads this as "tie and scale"; v5 reads scale_decoder_outputs. An untied model
        # always ships its own lm_head.weight, so both versions load the same numbers.
        "tie_word_embeddings": cfg.scale_decoder_outputs,
        "scale_decoder_outputs": cfg.scale_decoder_outputs,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_factor": 1.0,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------------
# Tensor mapping: (our path, HF name, to_ours, to_hf)

Transform = Callable[[np.ndarray], np.ndarray]


def _mapping(cfg: T5Config) -> Iterator[tuple[tuple[Any, ...], str, Transform, Transform]]:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.head_dim

    same: tuple[Transform, Transform] = (lambda x: x, lambda x: x)
    transpose: tuple[Transform, Transform] = (lambda x: x.T, lambda x: x.T)
    # nn.Linear weight [out, in] <-> our [embed, heads, kv] and [heads, kv, embed] kernels.
    qkv = (lambda x: x.T.reshape(e, h, d), lambda x: x.reshape(e, h * d).T)
    out = (lambda x: x.T.reshape(h, d, e), lambda x: x.reshape(h * d, e).T)

    yield ("token_embedder", "embedding"), "shared.weight", *same
    if not cfg.tie_embeddings:
        yield ("logits_dense",), "lm_head.weight", *transpose

    def attention(ours: tuple[Any, ...], hf: str):
        for name in "qkv":
            yield (*ours, name), f"{hf}.{name}.weight", *qkv
        yield (*ours, "o"), f"{hf}.o.weight", *out

    def mlp(ours: tuple[Any, ...], hf: str):
        names = ("wi_0", "wi_1") if cfg.gated else ("wi",)
        for name in names:
            yield (*ours, name), f"{hf}.DenseReluDense.{name}.weight", *transpose
        yield (*ours, "wo"), f"{hf}.DenseReluDense.wo.weight", *transpose

    for stack, n_layers in (("encoder", cfg.num_encoder_layers),
                            ("decoder", cfg.num_decoder_layers)):
        yield ((stack, "relpos", "embedding"),
               f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               *transpose)
        yield (stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", *same
        for i in range(n_layers):
            ours, hf = (stack, "layers", i), f"{stack}.block.{i}.layer"
            yield (*ours, "self_attn_norm", "scale"), f"{hf}.0.layer_norm.weight", *same
            yield from attention((*ours, "self_attn"), f"{hf}.0.SelfAttention")
            mlp_idx = 1
            if stack == "decoder":
                yield (*ours, "cross_attn_norm", "scale"), f"{hf}.1.layer_norm.weight", *same
                yield from attention((*ours, "cross_attn"), f"{hf}.1.EncDecAttention")
                mlp_idx = 2
            yield (*ours, "mlp_norm", "scale"), f"{hf}.{mlp_idx}.layer_norm.weight", *same
            yield from mlp((*ours, "mlp"), f"{hf}.{mlp_idx}")


def _set(tree: Params, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Params, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf_tensors(tensors: Mapping[str, np.ndarray], cfg: T5Config, *,
                           source: str = "checkpoint") -> Params:
    """HF tensor dict -> flan-jax params (numpy, cast to cfg.param_dtype)."""
    expected = {hf for _, hf, _, _ in _mapping(cfg)}
    unexpected = sorted(set(tensors) - expected - set(_EMBED_ALIASES) - set(_IGNORED)
                        - ({"lm_head.weight"} if cfg.tie_embeddings else set()))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s) for a {cfg.num_encoder_layers}+"
            f"{cfg.num_decoder_layers}-layer {cfg.feed_forward} T5: {unexpected[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    if "shared.weight" not in tensors:
        alias = next((a for a in _EMBED_ALIASES if a in tensors), None)
        if alias is not None:
            tensors = {**tensors, "shared.weight": tensors[alias]}
    for alias in _EMBED_ALIASES:  # T5 shares one embedding; a differing copy is a broken file
        if alias in tensors and "shared.weight" in tensors and not np.array_equal(
                tensors[alias], tensors["shared.weight"]):
            raise CheckpointError(f"{source}: tensor {alias!r} differs from 'shared.weight'; "
                                  "T5 uses one shared token embedding")
    params: Params = {}
    dtype = cfg.jnp_param_dtype
    for path, hf, to_ours, to_hf in _mapping(cfg):
        if hf not in tensors:
            raise CheckpointError(f"{source}: missing tensor {hf!r}")
        value = np.asarray(tensors[hf])
        want = to_hf(np.empty(_our_shape(cfg, path), np.float32)).shape
        if value.shape != want:
            raise CheckpointError(
                f"{source}: tensor {hf!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(want)} from the config (d_model={cfg.d_model}, "
                f"num_heads={cfg.num_heads}, d_kv={cfg.head_dim}, d_ff={cfg.d_ff}, "
                f"vocab_size={cfg.vocab_size})")
        _set(params, path, np.ascontiguousarray(to_ours(value)).astype(dtype))
    return params


def params_to_hf_tensors(params: Params, cfg: T5Config) -> dict[str, np.ndarray]:
    """flan-jax params -> HF tensor dict; an untied or tied model both get `lm_head.weight`."""
    out: dict[str, np.ndarray] = {}
    for path, hf, _, to_hf in _mapping(cfg):
        try:
            value = np.asarray(_get(params, path))
        except KeyError as e:
            raise CheckpointError(f"params: missing {'/'.join(map(str, path))}") from e
        out[hf] = np.ascontiguousarray(to_hf(value))
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["shared.weight"].copy()
    return out


def _our_shape(cfg: T5Config, path: tuple[Any, ...]) -> tuple[int, ...]:
    e, h, d, f, v = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    leaf, parent = path[-1], path[-2] if len(path) > 1 else None
    if path == ("token_embedder", "embedding"):
        return (v, e)
    if path == ("logits_dense",):
        return (e, v)
    if parent == "relpos":
        return (h, cfg.relative_attention_num_buckets)
    if leaf == "scale":
        return (e,)
    if leaf in ("q", "k", "v"):
        return (e, h, d)
    if leaf == "o":
        return (h, d, e)
    if leaf in ("wi", "wi_0", "wi_1"):
        return (e, f)
    if leaf == "wo":
        return (f, e)
    raise AssertionError(path)


# ---------------------------------------------------------------------------------------------
# Directories


def read_safetensors_dir(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of every shard named by its index."""
    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index}: names shard {f.name!r}, which is missing")
    else:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        hint = (f" (found {pickled}; flan-jax never loads pickle: re-save with "
                "`save_pretrained(..., safe_serialization=True)`)" if pickled else "")
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json"
                              + hint)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="np") as st:
                for name in st.keys():
                    tensors[name] = st.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from e
    return tensors


def load_hf_checkpoint(path: str | os.PathLike[str],
                       **overrides: Any) -> tuple[T5Config, Params]:
    """(config, params) from an HF T5 directory; `overrides` set T5Config fields."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face model dir?)")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e
    tensors = read_safetensors_dir(path)
    shared, lm_head = tensors.get("shared.weight"), tensors.get("lm_head.weight")
    tied = lm_head is None or (shared is not None and np.array_equal(lm_head, shared))
    cfg = config_from_hf(hf, source=str(config_path), tie_embeddings=tied, **overrides)
    return cfg, params_from_hf_tensors(tensors, cfg, source=str(path))


def save_hf_checkpoint(path: str | os.PathLike[str], cfg: T5Config, params: Params, *,
                       overwrite: bool = False) -> Path:
    """Writes config.json + model.safetensors atomically (a temp dir renamed into place)."""
    tensors = params_to_hf_tensors(params, cfg)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({
            "decoder_start_token_id": cfg.decoder_start_id, "eos_token_id": cfg.eos_id,
            "pad_token_id": cfg.pad_id}, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return Path(path)
