"""LoRA (Hu et al. 2021): low-rank adapters on a built model's projections, and their merge.

`apply_lora(model, LoraConfig(rank=8), rngs=...)` gives each targeted projection W
[in..., out...] two `nnx.LoRAParam`s in W's own module (`module.lora[<W's name>]`):
A [in..., lora_rank] and B [lora_rank, out...], B zero, so the adapted model starts out as
the base. The forward adds alpha / rank * (dropout(x) @ A) @ B to x @ W. Training keeps only
the adapters trainable (`split_params`); `merge_lora` folds them back into W.

`ADAPTER`, `split_params` / `split_axes` and `save_adapters` / `load_adapters` serve every
adapter kind (prompt tuning's `prompt.PromptParam` is an `nnx.LoRAParam` too).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flan_jax.errors import ConfigError
from flan_jax.model.config import T5Config
from flan_jax.model.layers import dropout, param, shapes_only

Params = dict[str, Any]

ATTENTION_ROLES = ("q", "k", "v", "o")
KINDS = ("self", "cross")  # a T5 decoder layer's two attentions
TARGETS = (*ATTENTION_ROLES, *(f"{kind}_{role}" for kind in KINDS for role in ATTENTION_ROLES),
           "mlp_in", "mlp_out")
STACKS = ("encoder", "decoder")
# How many leading dims of each projection are its input dims (the rest are its outputs).
INPUT_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "wi": 1, "wi_0": 1, "wi_1": 1, "wo": 1}
MLP_ROLES = {"mlp_in": ("wi", "wi_0", "wi_1"), "mlp_out": ("wo",)}
ADAPTERS_FORMAT = "flan-jax-lora"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters, and how large.

    `rank`: 0 turns LoRA off (the model and the run are exactly as without it).
    `alpha`: the update is scaled by alpha / rank (peft's `lora_alpha`).
    `dropout`: on each adapter's input, while training only (peft's `lora_dropout`).
    `targets`: "q", "k", "v", "o" name an attention projection in every attention of the
    chosen stacks (a T5 decoder layer's self- and cross-attention alike, as peft's "q" does
    on Hugging Face T5); "self_q" ... "cross_o" name one of the two; "mlp_in" is the MLP's
    wi (wi_0 and wi_1 when gated), "mlp_out" its wo.
    `stacks`: "encoder", "decoder". A decoder-only model's one stack is "decoder"; a
    semi-causal model's encoder layers are "encoder" (its connector never gets adapters).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    stacks: tuple[str, ...] = ("encoder", "decoder")

    CONFIG_FILE: ClassVar[str] = "lora_config.json"  # in `save_adapters`' dir
    FORMAT: ClassVar[str] = ADAPTERS_FORMAT

    def __post_init__(self) -> None:
        for name, choices in (("targets", TARGETS), ("stacks", STACKS)):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, name, value)  # (gin passes lists)
            bad = [v for v in value if v not in choices]
            if bad or not value:
                what = f"unknown {bad}" if bad else "empty"
                raise ConfigError(f"LoraConfig.{name}={value!r}: {what}; choose from {choices}")
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"LoraConfig.rank={self.rank!r}: expected an int >= 0 (0: off)")
        if not self.alpha > 0:
            raise ConfigError(f"LoraConfig.alpha={self.alpha!r}: expected > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraConfig.dropout={self.dropout!r}: not in [0, 1)")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def describe(self) -> str:
        return (f"LoRA rank {self.rank} (alpha {self.alpha:g}) on {', '.join(self.targets)} "
                f"in the {' and '.join(self.stacks)}")

    def adapted_model(self, model_cfg: T5Config) -> nnx.Module:
        """The abstract model these adapters belong to (`abstract_lora_model`)."""
        return abstract_lora_model(model_cfg, self)


class LoraAdapter(nnx.Module):
    """One projection's update: scale * (dropout(x) @ A) @ B in x's (the compute) dtype,
    contracting x's last `inputs` dims with A's leading ones."""

    def __init__(self, lora_a: nnx.LoRAParam, lora_b: nnx.LoRAParam, *, scale: float,
                 rate: float, inputs: int):
        self.lora_a, self.lora_b = lora_a, lora_b  # [in..., rank], [rank, out...]
        self.scale, self.rate, self.inputs = scale, rate, inputs

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        dt = x.dtype
        h = jnp.tensordot(dropout(x, self.rate, rngs), self.lora_a[...].astype(dt),
                          axes=self.inputs)  # [..., rank]
        return jnp.tensordot(h, self.lora_b[...].astype(dt), axes=1) * self.scale


def apply_lora(model: nnx.Module, cfg: LoraConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Adds `cfg`'s adapters to a built model (T5, DecoderOnly, SemiCausal) in place and
    returns it; under `layers.shapes_only()` they are shapes only, like the model's params.
    A: peft's init (kaiming-uniform, U(+-1/sqrt(fan_in))), B: zeros. Nothing happens with
    rank 0; targets that select no projection of this model are refused."""
    if not cfg.enabled:
        return model
    count = 0
    for module, names in _targeted(model, cfg):
        if module.lora is not None:
            raise ValueError(f"apply_lora: {type(module).__name__} has adapters already")
        adapters = {name: _adapter(getattr(module, name), name, cfg, rngs) for name in names}
        module.lora = nnx.data(nnx.Dict(adapters))
        count += len(adapters)
    if not count:
        raise ConfigError(f"LoraConfig.targets={cfg.targets!r} in LoraConfig.stacks="
                          f"{cfg.stacks!r} select no projection of this {type(model).__name__}")
    return model


# The one filter of what an adapters-only run trains: every adapter kind is an nnx.LoRAParam
# (LoRA's A and B; prompt tuning's `prompt.PromptParam`); the rest of the params is the base.
ADAPTER = nnx.LoRAParam
_BASE = nnx.All(nnx.Param, nnx.Not(ADAPTER))


def split_params(model: nnx.Module) -> tuple[Params, Params]:
    """(base params, adapter params) as plain nested dicts; adapters {} without any."""
    return (nnx.to_pure_dict(nnx.state(model, _BASE)),
            nnx.to_pure_dict(nnx.state(model, ADAPTER)))


def split_axes(model: nnx.Module) -> tuple[Params, Params]:
    """Logical axis names shaped like `split_params(model)`."""
    def axes(state):
        return nnx.to_pure_dict(jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                                             is_leaf=lambda x: isinstance(x, nnx.Variable)))
    return axes(nnx.state(model, _BASE)), axes(nnx.state(model, ADAPTER))


def adapter_params(model_cfg: T5Config, cfg: LoraConfig, seed: int = 0) -> Params:
    """Freshly initialised adapters for a `model_cfg` model (the base is never built)."""
    from flan_jax.model.params import abstract_model
    model = apply_lora(abstract_model(model_cfg), cfg, rngs=nnx.Rngs(params=seed))
    return split_params(model)[1]


def abstract_lora_model(model_cfg: T5Config, cfg: LoraConfig) -> nnx.Module:
    """`params.abstract_model` with `cfg`'s adapters (shapes and dtypes only)."""
    from flan_jax.model.params import abstract_model
    with shapes_only():
        return apply_lora(abstract_model(model_cfg), cfg, rngs=nnx.Rngs(params=0))


def merge_lora(params: Params, lora_params: Params, cfg: LoraConfig) -> Params:
    """The base `params` with every adapter folded in: W + scale * A @ B, in W's shape and
    dtype (computed in f32). A pure function (jit it to keep the result sharded); the result
    is a plain model's params."""
    out = jax.tree.map(lambda x: x, params)  # fresh containers, same leaves
    for path, adapters in adapter_dicts(lora_params):
        where = "/".join(map(str, path))
        try:
            module = out
            for key in path:
                module = module[key]
        except (KeyError, TypeError):
            raise ValueError(f"merge_lora: adapters at {where} have no module in params") from None
        for name, ab in adapters.items():
            a, b = ab["lora_a"], ab["lora_b"]
            if a.shape[-1] != cfg.rank:
                raise ValueError(f"merge_lora: {where}/lora/{name} has rank {a.shape[-1]}, "
                                 f"LoraConfig.rank={cfg.rank}")
            w = module.get(name)
            delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                  axes=1) * cfg.scale
            if w is None or tuple(w.shape) != delta.shape:
                raise ValueError(f"merge_lora: {where}/{name} is "
                                 f"{None if w is None else tuple(w.shape)}, its adapters give "
                                 f"{delta.shape}")
            module[name] = (jnp.asarray(w, jnp.float32) + delta).astype(w.dtype)
    return out


def save_adapters(path: str | os.PathLike[str], cfg: Any, lora_params: Params, *,
                  base: str | None = None, overwrite: bool = False,
                  alone: bool = False) -> Path:
    """The adapters alone, atomically: `cfg.CONFIG_FILE` (`lora_config.json` of a
    LoraConfig, `prompt_config.json` of a `prompt.PromptConfig`: its fields, its `FORMAT`
    and the base model dir they were trained on) + orbax `params/`. `alone` as
    `io.save_pretrained`'s."""
    import orbax.checkpoint as ocp

    from flan_jax.model.convert import atomic_directory
    options = {}
    if alone:
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
    with atomic_directory(path, overwrite=overwrite) as tmp:
        config = {"format": cfg.FORMAT, "base_model": base, **dataclasses.asdict(cfg)}
        (tmp / cfg.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        with ocp.StandardCheckpointer(**options) as ckptr:
            ckptr.save((tmp / "params").absolute(), jax.tree.map(np.asarray, lora_params))
    return Path(path)


def load_adapters(path: str | os.PathLike[str], model_cfg: T5Config, kind: type = LoraConfig
                  ) -> tuple[Any, Params]:
    """(config, adapter params in host memory) of a `save_adapters` dir of `kind` (LoraConfig
    or `prompt.PromptConfig`), checked against the adapters `model_cfg` gets from it."""
    import orbax.checkpoint as ocp

    from flan_jax.errors import CheckpointError
    path = Path(path)
    if not (path / kind.CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: no {kind.CONFIG_FILE}, so not a {kind.FORMAT} "
                              "adapters directory")
    raw = json.loads((path / kind.CONFIG_FILE).read_text())
    cfg = kind(**{f.name: raw[f.name] for f in dataclasses.fields(kind)})
    target = split_params(cfg.adapted_model(model_cfg))[1]
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore((path / "params").absolute(), target)
    return cfg, jax.tree.map(np.asarray, params)


# --- helpers -----------------------------------------------------------------------------


def _layers_by_stack(model: nnx.Module) -> dict[str, list[nnx.Module]]:
    from flan_jax.model.semi_causal import SemiCausal
    from flan_jax.model.t5 import T5
    if isinstance(model, T5):
        return {"encoder": list(model.encoder.layers), "decoder": list(model.decoder.layers)}
    stacks = {"decoder": list(model.layers)}  # DecoderOnly: its one stack
    if isinstance(model, SemiCausal):
        stacks["encoder"] = list(model.encoder_layers)
    return stacks


def _targeted(model: nnx.Module, cfg: LoraConfig):
    """(module, names of its projections to adapt) for every module `cfg` selects."""
    targets = set(cfg.targets)
    for stack, layers in _layers_by_stack(model).items():
        if stack not in cfg.stacks:
            continue
        for layer in layers:
            for kind in KINDS:
                attention = getattr(layer, f"{kind}_attn", None)
                names = [r for r in ATTENTION_ROLES if {r, f"{kind}_{r}"} & targets]
                if attention is not None and names:
                    yield attention, names
            names = [n for role, ns in MLP_ROLES.items() if role in targets
                     for n in ns if hasattr(layer.mlp, n)]
            if names:
                yield layer.mlp, names


def _adapter(w: nnx.Param, name: str, cfg: LoraConfig, rngs: nnx.Rngs) -> LoraAdapter:
    value, axes = w.get_value(), w.get_metadata()["logical_axes"]
    n, shape, dtype = INPUT_DIMS[name], tuple(value.shape), value.dtype
    # torch's kaiming_uniform_(a=sqrt(5)) of peft: bound sqrt(3 * (1/3) / fan_in).
    a_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                               in_axis=tuple(range(n)), out_axis=n)
    a = param(rngs, a_init, (*shape[:n], cfg.rank), dtype, (*axes[:n], "lora_rank"),
              kind=nnx.LoRAParam)
    b = param(rngs, nnx.initializers.zeros, (cfg.rank, *shape[n:]), dtype,
              ("lora_rank", *axes[n:]), kind=nnx.LoRAParam)
    return LoraAdapter(a, b, scale=cfg.scale, rate=cfg.dropout, inputs=n)


def adapter_dicts(tree: Params, path: tuple = ()):
    """(path of a module, its {name: {"lora_a", "lora_b"}}) for every "lora" entry of an
    adapters tree (`split_params(...)[1]`)."""
    for key, value in tree.items():
        if key == "lora":
            yield path, value
        elif isinstance(value, dict):
            yield from adapter_dicts(value, path + (key,))
