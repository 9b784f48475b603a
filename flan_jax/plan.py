"""`flan-jax plan`: per-device memory of a training run, estimated without allocating.

Params, optimizer state and gradients are exact byte counts of the shapes `jax.eval_shape`
gives, each leaf divided as the logical-axis rules shard it on an `AbstractMesh` of the
requested size (an adapters-only run, LoRA or prompt tuning: optimizer state and gradients
of its adapters only, the base counted as frozen params); activations are a rough count of
what the backward pass keeps per layer of each stack the architecture runs (`stacks`), so a
mesh can be chosen for, e.g., flan-t5-xxl on a v4-64 before renting one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from flan_jax import parallel
from flan_jax.model.config import T5Config

if TYPE_CHECKING:
    from flan_jax.model.lora import LoraConfig
    from flan_jax.model.prompt import PromptConfig

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Stack:
    """One stack of layers as the model runs it: `length` tokens per row, each attention of
    a layer over `kv_lengths` keys (self-attention first; a second is cross-attention)."""

    name: str
    layers: int
    length: int
    kv_lengths: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (the most loaded one) for each part of the train state."""

    architecture: str  # T5Config.architecture
    stacks: list[Stack]  # what the activations count
    mesh: dict[str, int]
    num_slices: int
    param_count: int  # every param (a LoRA run: base + adapters)
    param_bytes_total: int
    params: int
    optimizer: int
    gradients: int
    activations: int
    optimizer_name: str
    batch_per_device: float
    replicated_params: list[str]
    trainable_param_count: int = 0  # what gets gradients and optimizer state
    peft: str = ""  # e.g. "LoRA rank 8 (alpha 16) on q, v in the encoder and decoder"

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total}


def plan(cfg: T5Config, mesh_cfg: parallel.MeshConfig, rules: parallel.LogicalRules,
         optimizer, optimizer_name: str, *, devices: int, num_slices: int = 1,
         batch_size: int, input_len: int, target_len: int, microbatches: int = 1,
         model: Any = None, lora: LoraConfig | None = None,
         prompt: PromptConfig | None = None) -> MemoryPlan:
    """The memory plan of training `cfg` on `devices` devices laid out as `mesh_cfg`.

    Build `optimizer` as the run does (`make_optimizer(param_axes=...)`, of the trained
    params): Adafactor's state depends on the shapes it sees each param in. `model`: the
    run's abstract model if the caller has it already (building it takes seconds for the
    largest presets; with adapters, only they train). `lora`: adapters to add to the
    model this builds, `prompt`: a soft prompt (`cfg` then gets its prompt_length); both
    ignored with `model`, which has them already."""
    from flan_jax.model.lora import LoraConfig, abstract_lora_model, split_axes, split_params

    shape = mesh_cfg.shape(devices, num_slices)
    mesh = AbstractMesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))
    if prompt is not None and prompt.enabled:
        cfg = cfg.replace(prompt_length=prompt.length)
    if model is None:
        model = abstract_lora_model(cfg, lora or LoraConfig())
    (base, adapters), (base_axes, adapter_axes) = split_params(model), split_axes(model)
    b_shard = parallel.param_shardings(base, base_axes, rules, mesh)
    a_shard = parallel.param_shardings(adapters, adapter_axes, rules, mesh)
    trained, t_shard = (adapters, a_shard) if adapters else (base, b_shard)
    abstract_opt = jax.eval_shape(optimizer.init, trained)
    o_shard = parallel.optimizer_state_shardings(abstract_opt, trained, t_shard)

    params = _sharded_bytes(base, b_shard, mesh) + _sharded_bytes(adapters, a_shard, mesh)
    replicated = [path for tree, shardings in ((base, b_shard), (adapters, a_shard))
                  for path, leaf, sh in _flat(tree, shardings)
                  if leaf.size >= 1 << 16 and not any(sh.spec)]
    every = jax.tree.leaves((base, adapters))
    batch_axes = parallel.batch_sharding(mesh, rules).spec[0]
    batch_ways = _ways(batch_axes, mesh)
    per_device = batch_size / batch_ways / microbatches
    return MemoryPlan(
        architecture=cfg.architecture,
        stacks=stacks(cfg, input_len, target_len),
        mesh=dict(zip(parallel.MESH_AXES, shape)), num_slices=num_slices,
        param_count=sum(int(x.size) for x in every),
        param_bytes_total=sum(int(x.size) * x.dtype.itemsize for x in every),
        params=params, optimizer=_sharded_bytes(abstract_opt, o_shard, mesh),
        gradients=_sharded_bytes(trained, t_shard, mesh), optimizer_name=optimizer_name,
        activations=activation_bytes(cfg, per_device, input_len, target_len,
                                     model_ways=dict(zip(parallel.MESH_AXES, shape))["model"]),
        batch_per_device=per_device, replicated_params=replicated,
        trainable_param_count=sum(int(x.size) for x in jax.tree.leaves(trained)),
        peft=_describe_adapters(adapters, lora, prompt))


def stacks(cfg: T5Config, input_len: int, target_len: int) -> list[Stack]:
    """The stacks `cfg.architecture` runs on a batch of `input_len` + `target_len` features,
    the last one feeding the logits.

    An encoder-decoder encodes the inputs and decodes the targets with cross-attention; a
    decoder-only model runs `num_decoder_layers` over the concatenated inputs + targets
    (`num_encoder_layers` unused); a semi-causal model adds `num_encoder_layers` encoder
    layers, which run over that whole stream too (`SemiCausal` masks them to the inputs'
    spans rather than gathering the spans), and no cross-attention. A soft prompt
    (`T5Config.prompt_length`) lengthens what the encoder runs over and what the decoder's
    cross-attention sees.
    """
    if cfg.architecture == "encoder_decoder":
        encoded = input_len + cfg.prompt_length
        return [Stack("encoder", cfg.num_encoder_layers, encoded, (encoded,)),
                Stack("decoder", cfg.num_decoder_layers, target_len, (target_len, encoded))]
    n = input_len + target_len
    decoder = Stack("decoder", cfg.num_decoder_layers, n, (n,))
    if cfg.architecture == "decoder_only":
        return [decoder]
    if cfg.architecture == "semi_causal":
        return [Stack("encoder", cfg.num_encoder_layers, n, (n,)), decoder]
    raise ValueError(f"plan: no activation count for T5Config.architecture="
                     f"{cfg.architecture!r}; add its stacks to flan_jax.plan.stacks")


def activation_bytes(cfg: T5Config, batch: float, input_len: int, target_len: int,
                     model_ways: int = 1) -> int:
    """Rough bytes the backward pass keeps for `batch` rows on one device.

    Per layer and token of each of `stacks`: about 10 d_model-wide tensors (norms, q/k/v/o,
    residuals), the feed-forward's 2 (3 gated) d_ff-wide ones and the attention
    probabilities; a cross-attention adds its q/k/v/o and probabilities. `remat="full"`
    keeps only each layer's input plus one layer's working set, "dots" keeps the matmul
    outputs (about half). A semi-causal model's connector adds its output (linear) or one
    attention over the stream (pooled). Logits and their gradient are f32, over the last
    stack's tokens. heads / d_ff / vocab divide over the `model` axis.
    """
    act = np.dtype(cfg.dtype).itemsize
    ff = cfg.d_ff * (3 if cfg.gated else 2) / model_ways
    heads = cfg.num_heads / model_ways
    inner = cfg.inner_dim / model_ways

    def layer(s: Stack) -> float:
        tokens = batch * s.length
        wide = tokens * (6 * cfg.d_model + 4 * inner + ff)
        wide += tokens * 4 * inner * (len(s.kv_lengths) - 1)  # cross-attention's q/k/v/o
        attn = sum(batch * heads * s.length * kv * 2 for kv in s.kv_lengths)  # scores + probs
        return (wide + attn) * act

    parts = stacks(cfg, input_len, target_len)
    logits = batch * parts[-1].length * cfg.vocab_size / model_ways * 4 * 2
    if cfg.remat == "full":
        kept = sum(s.layers * batch * s.length for s in parts) * cfg.d_model * act
        per_layer = kept + max(layer(s) for s in parts)
    else:
        share = 0.5 if cfg.remat == "dots" else 1.0
        per_layer = share * sum(s.layers * layer(s) for s in parts)
    return int(per_layer + logits + _connector_bytes(cfg, batch, parts[-1].length, heads,
                                                     inner, act))


def describe(cfg: T5Config, parts: list[Stack]) -> str:
    """The architecture and its `stacks` in words, e.g. "decoder-only: 4 decoder layers over
    320 tokens (inputs + targets), no encoder, no cross-attention"."""
    by_name = {s.name: s for s in parts}
    dec = by_name["decoder"]
    if cfg.architecture == "encoder_decoder":
        enc = by_name["encoder"]
        over = (f"{enc.length} input tokens" if not cfg.prompt_length else
                f"{enc.length} positions ({cfg.prompt_length} soft prompt + "
                f"{enc.length - cfg.prompt_length} input tokens)")
        return (f"encoder-decoder: {enc.layers} encoder layers over {over}, "
                f"{dec.layers} decoder layers over {dec.length} target tokens with "
                "cross-attention")
    over = f"{dec.layers} decoder layers over {dec.length} tokens (inputs + targets)"
    if cfg.architecture == "decoder_only":
        return f"decoder-only: {over}, no encoder, no cross-attention"
    enc = by_name["encoder"]
    return (f"semi-causal: {enc.layers} bidirectional encoder layers on the inputs' spans "
            f"(computed over all {enc.length} tokens), a {cfg.connector} connector, {over}, "
            "no cross-attention")


def format_plan(p: MemoryPlan, cfg: T5Config, device_memory_gib: float | None = None) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in p.mesh.items())
    devices = math.prod(p.mesh.values())
    slices = f" in {p.num_slices} slices" if p.num_slices > 1 else ""
    frozen = p.trainable_param_count < p.param_count
    rows = [("params", p.params, f"{cfg.param_dtype}" + (", base frozen" if frozen else "")),
            ("optimizer state", p.optimizer,
             p.optimizer_name + (", adapters only" if frozen else "")),
            ("gradients", p.gradients, "adapters only" if frozen else "as params"),
            ("activations (rough)", p.activations,
             f"{p.batch_per_device:g} rows/device, remat={cfg.remat}, {cfg.dtype}"),
            ("total", p.total, "")]
    lines = [f"model: {p.param_count / 1e6:,.1f}M params ({_gib(p.param_bytes_total)} in "
             f"{cfg.param_dtype}), d_model={cfg.d_model}, d_ff={cfg.d_ff}, "
             f"heads={cfg.num_heads}",
             f"       {describe(cfg, p.stacks)}",
             *([f"train: {p.trainable_param_count:,} params "
                f"({100 * p.trainable_param_count / p.param_count:.2f}%), {p.peft}"]
               if p.peft else []),
             f"mesh:  {mesh} ({devices} devices{slices})",
             "per device (the most loaded):"]
    for name, value, note in rows:
        lines.append(f"  {name:<20} {_gib(value):>12}  {note}")
    if device_memory_gib:
        fits = p.total <= device_memory_gib * GiB * 0.9
        lines.append(f"  {'device memory':<20} {device_memory_gib:>8.1f} GiB  "
                     + ("fits (with 10% headroom)" if fits else
                        "does NOT fit: raise fsdp / model, enable T5Config.remat, or lower "
                        "the batch (train.microbatches)"))
    if p.replicated_params:
        lines.append(f"note: {len(p.replicated_params)} large param(s) are replicated (the "
                     f"mesh does not divide them): {', '.join(p.replicated_params[:3])}")
    return "\n".join(lines)


def _describe_adapters(adapters: Any, lora: LoraConfig | None,
                       prompt: PromptConfig | None = None) -> str:
    """"" without adapters; `lora` or `prompt` in words, or what the adapters themselves
    show."""
    if not adapters:
        return ""
    for given in (lora, prompt):
        if given is not None and given.enabled:
            return given.describe()
    if "prompt" in adapters:
        return f"a soft prompt of {adapters['prompt'].shape[0]} vectors"
    flat = jax.tree_util.tree_flatten_with_path(adapters)[0]
    ranks = sorted({leaf.shape[-1] for path, leaf in flat if path[-1].key == "lora_a"})
    return f"LoRA rank {', '.join(map(str, ranks))} on {len(flat) // 2} projections"


def _connector_bytes(cfg: T5Config, batch: float, length: int, heads: float, inner: float,
                     act: int) -> float:
    """A semi-causal model's connector, once per step (not a layer: never rematerialized)."""
    if cfg.architecture != "semi_causal":
        return 0.0
    tokens = batch * length
    if cfg.connector == "linear":
        return tokens * cfg.d_model * act
    return (tokens * (2 * cfg.d_model + 4 * inner) + batch * heads * length * length * 2) * act


def _gib(n: float) -> str:
    return f"{n / GiB:,.3f} GiB" if n < 100 * GiB else f"{n / GiB:,.1f} GiB"


def _ways(axes: parallel.MeshAxes, mesh: AbstractMesh) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(dict(mesh.shape)[a] for a in names)


def _shard_elems(shape: tuple[int, ...], spec: PartitionSpec, mesh: AbstractMesh) -> int:
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    return math.prod(math.ceil(d / _ways(a, mesh)) for d, a in zip(shape, spec))


def _flat(tree: Any, shardings: Any):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sh = jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))
    for (path, leaf), s in zip(leaves, sh):
        yield parallel.path_str(path), leaf, s


def _sharded_bytes(tree: Any, shardings: Any, mesh: AbstractMesh) -> int:
    return sum(_shard_elems(tuple(leaf.shape), s.spec, mesh) * leaf.dtype.itemsize
               for _, leaf, s in _flat(tree, shardings))
