"""Hugging Face T5 / Flan-T5 / t5-v1_1 checkpoints <-> flan-jax config and params.

Reads `config.json` plus `model.safetensors` (or a sharded `model.safetensors.index.json`)
and writes the same layout back, so `transformers` loads what we export. Safetensors only:
no pickle is ever loaded. Every error names the file and the tensor or config field at fault.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from flan_jax.atomic import atomic_directory  # noqa: F401  (re-exported: io.py, train)
from flan_jax.errors import CheckpointError
from flan_jax.model.config import T5Config

Params = dict[str, Any]  # nested dict of arrays, as `nnx.to_pure_dict` gives

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# HF keeps these as aliases of `shared.weight`; some checkpoints store them anyway.
_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Original T5 1.0 checkpoints carry a cross-attention bias table that T5 never uses;
# transformers ignores it on load, and so do we.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


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
    if cfg.architecture != "encoder_decoder":
        raise CheckpointError(
            f"T5Config.architecture={cfg.architecture!r}: Hugging Face's T5 layout is an "
            "encoder-decoder; keep this model as a flan-jax directory")
    if cfg.prompt_length:
        raise CheckpointError(
            f"T5Config.prompt_length={cfg.prompt_length}: Hugging Face's T5 has no soft "
            "prompt, so the export would drop it; keep this model as a flan-jax directory")
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
# Tensor mapping: (our path, HF name, layout). A layout says how an HF tensor's elements sit
# in ours, so any slice of ours can be read from the matching block of the HF file.

SAME, TRANSPOSE, QKV, OUT = "same", "transpose", "qkv", "out"
# nn.Linear weight [out, in] <-> our [embed, heads, kv] (QKV) and [heads, kv, embed] (OUT).


def hf_mapping(cfg: T5Config) -> Iterator[tuple[tuple[Any, ...], str, str]]:
    """(our path, HF tensor name, layout) of every weight: the one table of names, which
    PEFT adapters (`peft_format`) use too."""
    yield ("token_embedder", "embedding"), "shared.weight", SAME
    if not cfg.tie_embeddings:
        yield ("logits_dense",), "lm_head.weight", TRANSPOSE

    def attention(ours: tuple[Any, ...], hf: str):
        for name in "qkv":
            yield (*ours, name), f"{hf}.{name}.weight", QKV
        yield (*ours, "o"), f"{hf}.o.weight", OUT

    def mlp(ours: tuple[Any, ...], hf: str):
        names = ("wi_0", "wi_1") if cfg.gated else ("wi",)
        for name in names:
            yield (*ours, name), f"{hf}.DenseReluDense.{name}.weight", TRANSPOSE
        yield (*ours, "wo"), f"{hf}.DenseReluDense.wo.weight", TRANSPOSE

    for stack, n_layers in (("encoder", cfg.num_encoder_layers),
                            ("decoder", cfg.num_decoder_layers)):
        yield ((stack, "relpos", "embedding"),
               f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               TRANSPOSE)
        yield (stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", SAME
        for i in range(n_layers):
            ours, hf = (stack, "layers", i), f"{stack}.block.{i}.layer"
            yield (*ours, "self_attn_norm", "scale"), f"{hf}.0.layer_norm.weight", SAME
            yield from attention((*ours, "self_attn"), f"{hf}.0.SelfAttention")
            mlp_idx = 1
            if stack == "decoder":
                yield (*ours, "cross_attn_norm", "scale"), f"{hf}.1.layer_norm.weight", SAME
                yield from attention((*ours, "cross_attn"), f"{hf}.1.EncDecAttention")
                mlp_idx = 2
            yield (*ours, "mlp_norm", "scale"), f"{hf}.{mlp_idx}.layer_norm.weight", SAME
            yield from mlp((*ours, "mlp"), f"{hf}.{mlp_idx}")


def _to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    if layout == SAME:
        return x
    if layout == TRANSPOSE:
        return x.T
    if layout == QKV:
        e, h, d = x.shape
        return x.reshape(e, h * d).T
    h, d, e = x.shape  # OUT
    return x.reshape(h * d, e).T


def _hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if layout == SAME:
        return shape
    if layout == TRANSPOSE:
        return shape[::-1]
    if layout == QKV:
        e, h, d = shape
        return (h * d, e)
    h, d, e = shape
    return (e, h * d)


def read_ours(tensor: Any, layout: str, shape: tuple[int, ...],
              index: tuple[slice, ...] | None = None) -> np.ndarray:
    """The block `index` of our-layout array `shape`, read from HF `tensor` (an ndarray or
    a safetensors slice: only the rows and columns that block needs are read)."""
    index = tuple(slice(*s.indices(n)) for s, n in
                  zip(index or (slice(None),) * len(shape), shape))
    if any(s.step != 1 for s in index):
        raise ValueError(f"strided index {index}")
    if layout == SAME:
        return np.asarray(tensor[index])
    if layout == TRANSPOSE:
        rows, cols = index
        return np.asarray(tensor[cols, rows]).T
    if layout == QKV:  # ours [e, h, d] = hf[h*d, e].T
        es, hs, ds = index
        d = shape[2]
        block = np.asarray(tensor[hs.start * d:hs.stop * d, es])
        return block.T.reshape(es.stop - es.start, hs.stop - hs.start, d)[:, :, ds]
    hs, ds, es = index  # OUT: ours [h, d, e] = hf[e, h*d].T
    d = shape[1]
    block = np.asarray(tensor[es, hs.start * d:hs.stop * d])
    return block.T.reshape(hs.stop - hs.start, d, es.stop - es.start)[:, ds, :]


def set_path(tree: Params, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Params, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def params_to_hf_tensors(params: Params, cfg: T5Config) -> dict[str, np.ndarray]:
    """flan-jax params -> HF tensor dict; an untied or tied model both get `lm_head.weight`."""
    out: dict[str, np.ndarray] = {}
    for path, hf, layout in hf_mapping(cfg):
        try:
            value = np.asarray(get_path(params, path))
        except KeyError as e:
            raise CheckpointError(f"params: missing {'/'.join(map(str, path))}") from e
        out[hf] = np.ascontiguousarray(_to_hf(layout, value))
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


class HFCheckpoint:
    """A Hugging Face T5 directory opened lazily: `config.json` and the safetensors headers
    at once, tensor blocks on demand (memory-mapped), so that a process of a sharded run reads
    only the slices it owns and no process ever holds a second full copy of the model.

    Every check (config fields, tensor names, shapes, the shared embedding) happens in
    `config()` and `check()`, before any tensor is read for the model."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        config_path = self.path / "config.json"
        if not config_path.exists():
            raise CheckpointError(f"{self.path}: no config.json (is this a Hugging Face "
                                  "model dir?)")
        try:
            self.hf_config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e
        self._handles: dict[Path, Any] = {}
        self._file_of = self._index()
        self._shapes = {name: tuple(self._slice(name).get_shape()) for name in self._file_of}

    def _index(self) -> dict[str, Path]:
        single = self.path / "model.safetensors"
        index = self.path / "model.safetensors.index.json"
        if single.exists():
            return {name: single for name in self._handle(single).keys()}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
            files = {name: self.path / shard for name, shard in weight_map.items()}
            for f in sorted(set(files.values())):
                if not f.exists():
                    raise CheckpointError(f"{index}: names shard {f.name!r}, which is missing")
            return files
        pickled = [p.name for p in self.path.glob("*.bin")] + [
            p.name for p in self.path.glob("*.pt*")]
        hint = (f" (found {pickled}; flan-jax never loads pickle: re-save with "
                "`save_pretrained(..., safe_serialization=True)`)" if pickled else "")
        raise CheckpointError(f"{self.path}: no model.safetensors or "
                              "model.safetensors.index.json" + hint)

    def _handle(self, f: Path) -> Any:
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="np")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{f}: cannot read safetensors ({e})") from e
        return self._handles[f]

    def _slice(self, name: str) -> Any:
        f = self._file_of[name]
        try:
            return self._handle(f).get_slice(name)
        except Exception as e:
            raise CheckpointError(f"{f}: cannot read tensor {name!r} ({e})") from e

    @property
    def _embedding(self) -> str | None:
        return next((n for n in ("shared.weight", *_EMBED_ALIASES) if n in self._shapes), None)

    def _equal(self, a: str, b: str) -> bool:
        """Two tensors compared block by block (never two full copies in memory)."""
        if self._shapes[a] != self._shapes[b]:
            return False
        rows = self._shapes[a][0]
        row_bytes = max(math.prod(self._shapes[a][1:]), 1) * 4
        step = max(1, (64 << 20) // row_bytes)
        ta, tb = self._slice(a), self._slice(b)
        blocks = ((i, min(i + step, rows)) for i in range(0, rows, step))  # (slices don't clamp)
        return all(np.array_equal(ta[i:j], tb[i:j]) for i, j in blocks)

    def config(self, **overrides: Any) -> T5Config:
        """T5Config from config.json; `overrides` set fields (the run's settings)."""
        embedding = self._embedding
        tied = "lm_head.weight" not in self._shapes or (
            embedding is not None and self._equal("lm_head.weight", embedding))
        return config_from_hf(self.hf_config, source=str(self.path / "config.json"),
                              tie_embeddings=tied, **overrides)

    def check(self, cfg: T5Config) -> None:
        """Every tensor `cfg` needs is there with its shape; nothing unexpected; one embedding."""
        source = str(self.path)
        expected = {hf for _, hf, _ in hf_mapping(cfg)}
        unexpected = sorted(set(self._shapes) - expected - set(_EMBED_ALIASES) - set(_IGNORED)
                            - ({"lm_head.weight"} if cfg.tie_embeddings else set()))
        if unexpected:
            raise CheckpointError(
                f"{source}: unexpected tensor(s) for a {cfg.num_encoder_layers}+"
                f"{cfg.num_decoder_layers}-layer {cfg.feed_forward} T5: {unexpected[:5]}"
                + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        embedding = self._embedding
        for alias in _EMBED_ALIASES:  # T5 shares one embedding; a differing copy is broken
            if alias != embedding and alias in self._shapes and not self._equal(alias,
                                                                                embedding):
                raise CheckpointError(f"{source}: tensor {alias!r} differs from "
                                      f"{embedding!r}; T5 uses one shared token embedding")
        for path, hf, layout in hf_mapping(cfg):
            name = embedding if hf == "shared.weight" and embedding else hf
            if name not in self._shapes:
                raise CheckpointError(f"{source}: missing tensor {hf!r}")
            want = _hf_shape(layout, _our_shape(cfg, path))
            if self._shapes[name] != want:
                raise CheckpointError(
                    f"{source}: tensor {hf!r} has shape {self._shapes[name]}, expected "
                    f"{want} from the config (d_model={cfg.d_model}, "
                    f"num_heads={cfg.num_heads}, d_kv={cfg.head_dim}, d_ff={cfg.d_ff}, "
                    f"vocab_size={cfg.vocab_size})")

    def tensors(self, cfg: T5Config) -> Iterator[tuple[tuple[Any, ...], tuple[int, ...],
                                                       Callable[..., np.ndarray]]]:
        """(our path, our shape, read(index=None) -> that block as cfg.param_dtype) for every
        parameter; call `check(cfg)` first."""
        dtype = cfg.jnp_param_dtype
        embedding = self._embedding
        for path, hf, layout in hf_mapping(cfg):
            name = embedding if hf == "shared.weight" else hf
            shape = _our_shape(cfg, path)

            def read(index: tuple[slice, ...] | None = None, *, name: str = name,
                     layout: str = layout, shape: tuple[int, ...] = shape) -> np.ndarray:
                block = read_ours(self._slice(name), layout, shape, index)
                return np.ascontiguousarray(block).astype(dtype, copy=False)
            yield path, shape, read

    def params(self, cfg: T5Config) -> Params:
        """Every parameter in host memory (numpy): for converters; training reads shards."""
        self.check(cfg)
        params: Params = {}
        for path, _, read in self.tensors(cfg):
            set_path(params, path, read())
        return params


def load_hf_checkpoint(path: str | os.PathLike[str],
                       **overrides: Any) -> tuple[T5Config, Params]:
    """(config, params) from an HF T5 directory; `overrides` set T5Config fields."""
    checkpoint = HFCheckpoint(path)
    cfg = checkpoint.config(**overrides)
    return cfg, checkpoint.params(cfg)


def save_hf_checkpoint(path: str | os.PathLike[str], cfg: T5Config, params: Params, *,
                       overwrite: bool = False) -> Path:
    """Writes config.json + model.safetensors atomically (a temp dir renamed into place)."""
    hf_config = config_to_hf(cfg)  # (refuses what HF's T5 can't hold, before any work)
    tensors = params_to_hf_tensors(params, cfg)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({
            "decoder_start_token_id": cfg.decoder_start_id, "eos_token_id": cfg.eos_id,
            "pad_token_id": cfg.pad_id}, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return Path(path)
