"""LoRA adapters in Hugging Face PEFT's layout, both ways.

A PEFT LoRA directory is `adapter_config.json` (peft's `LoraConfig`) plus
`adapter_model.safetensors` with one `lora_A.weight` [r, in] and `lora_B.weight` [out, r] per
adapted `nn.Linear`, named `base_model.model.<HF module>`. Ours are A [in..., r] and
B [r, out...] in the projection's own layout; the HF module names come from the same table
(`convert._mapping`) that converts the base weights, so the two can never disagree.
PEFT's options that flan-jax's `LoraConfig` cannot express (DoRA, rsLoRA, per-module ranks,
trained biases, ...) are refused on import by name, not approximated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flan_jax.errors import CheckpointError, ConfigError
from flan_jax.model.config import T5Config
from flan_jax.model.lora import (ADAPTERS_FORMAT, MLP_ROLES, STACKS, LoraConfig,
                                 adapter_dicts, adapter_params, load_adapters,
                                 save_adapters)

Params = dict[str, Any]

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# peft options with the value flan-jax's LoRA has; anything else is refused on import.
_PLAIN = {"use_rslora": False, "use_dora": False, "bias": "none", "fan_in_fan_out": False,
          "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
          "layers_to_transform": None, "layer_replication": None, "lora_bias": False,
          "trainable_token_indices": None, "target_parameters": None}


def is_peft_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_adapters_dir(path: str | os.PathLike[str]) -> bool:
    """A flan-jax adapters dir (`lora.save_adapters`: a LoRA run's `adapters/`)."""
    f = Path(path) / "lora_config.json"
    try:
        return json.loads(f.read_text()).get("format") == ADAPTERS_FORMAT
    except (OSError, ValueError):
        return False


def base_of(path: str | os.PathLike[str]) -> str | None:
    """The base model dir an adapters dir (either layout) records, if any."""
    path = Path(path)
    f, key = ((path / CONFIG, "base_model_name_or_path") if is_peft_dir(path)
              else (path / "lora_config.json", "base_model"))
    return json.loads(f.read_text()).get(key)


def load_any_adapters(path: str | os.PathLike[str], model_cfg: T5Config
                      ) -> tuple[LoraConfig, Params]:
    """(LoraConfig, adapter params) of a flan-jax or a PEFT adapters dir."""
    if is_peft_dir(path):
        return load_peft(path, model_cfg)
    if is_adapters_dir(path):
        return load_adapters(path, model_cfg)
    raise CheckpointError(f"{path}: neither a flan-jax adapters dir (lora_config.json, e.g. a "
                          f"LoRA run's model_dir/adapters) nor a PEFT one ({CONFIG})")


def save_peft(path: str | os.PathLike[str], model_cfg: T5Config, cfg: LoraConfig,
              lora_params: Params, *, base: str | None = None,
              overwrite: bool = False) -> Path:
    """Writes `lora_params` as a PEFT LoRA dir (atomically) that
    `peft.PeftModel.from_pretrained(<HF T5 base>, path)` loads. `base`: recorded as
    `base_model_name_or_path` (an HF hub id or the HF base's dir)."""
    from safetensors.numpy import save_file

    from flan_jax.atomic import atomic_directory
    from flan_jax.model.convert import config_to_hf
    _check_hf(model_cfg)
    config_to_hf(model_cfg)  # (refuses a base HF's T5 can't hold, before any work)
    names = _hf_names(model_cfg)
    tensors: dict[str, np.ndarray] = {}
    for module_path, name, a, b in _adapters(lora_params):
        hf = names.get((*module_path, name))
        if hf is None:
            raise CheckpointError(f"adapters at {'/'.join(map(str, module_path))}/lora/{name}"
                                  " have no Hugging Face T5 module")
        a, b = np.asarray(a), np.asarray(b)
        rank = a.shape[-1]
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    modules = {k[len(PREFIX):-len(".lora_A.weight")] for k in tensors if ".lora_A." in k}
    config = {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": cfg.rank,
              "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
              "target_modules": _target_modules(modules, set(names.values())),
              "base_model_name_or_path": base, "inference_mode": True,
              "init_lora_weights": True, **_PLAIN}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return Path(path)


def load_peft(path: str | os.PathLike[str], model_cfg: T5Config
              ) -> tuple[LoraConfig, Params]:
    """(LoraConfig, adapter params in our layout) of a PEFT LoRA dir made for an HF T5 of
    `model_cfg`'s shape; refuses, naming the field or tensor, what our LoRA can't express."""
    from safetensors.numpy import load_file
    path = Path(path)
    _check_hf(model_cfg)
    where = path / CONFIG
    try:
        raw = json.loads(where.read_text())
    except ValueError as e:
        raise CheckpointError(f"{where}: not JSON ({e})") from None
    if raw.get("peft_type") != "LORA":
        raise ConfigError(f"{where}: peft_type={raw.get('peft_type')!r}; only LORA imports")
    for key, plain in _PLAIN.items():
        value = raw.get(key, plain)
        if value != plain and not (plain in ({}, None) and not value):
            raise ConfigError(f"{where}: {key}={value!r} is not supported (flan-jax's LoRA "
                              f"has {key}={plain!r})")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (only the safetensors layout imports)")
    modules = _by_module(load_file(str(weights)), weights)
    names = _hf_names(model_cfg)
    ours = {hf: p for p, hf in names.items()}
    unknown = sorted(set(modules) - set(ours))
    if unknown:
        raise CheckpointError(f"{weights}: {unknown[0]} is not a projection flan-jax's LoRA "
                              f"adapts ({len(unknown)} such modules)")
    ranks = {m: ab["A"].shape[0] for m, ab in modules.items()}
    bad = [m for m, r in ranks.items() if r != raw.get("r")]
    if bad:
        raise ConfigError(f"{weights}: {bad[0]} has rank {ranks[bad[0]]}, {CONFIG} says "
                          f"r={raw.get('r')}")
    cfg = _lora_config(raw, {ours[m] for m in modules}, where)
    target = adapter_params(model_cfg, cfg)
    params = jax.tree.map(lambda x: x, target)  # fresh containers
    expected = {(*p, n) for p, n, _, _ in _adapters(target)}
    got = {ours[m] for m in modules}
    if expected != got:
        extra = sorted("/".join(map(str, p)) for p in got - expected)
        missing = sorted("/".join(map(str, p)) for p in expected - got)
        raise ConfigError(
            f"{weights}: its adapters are not one LoraConfig (the same targets in every layer "
            f"of {cfg.stacks}): {'extra ' + extra[0] if extra else 'no adapter on ' + missing[0]}")
    for module_path, name, a, b in _adapters(target):
        ab = modules[names[(*module_path, name)]]
        a_ours = ab["A"].T.reshape(a.shape)
        b_ours = ab["B"].T.reshape(b.shape)
        node = params
        for key in module_path:
            node = node[key]
        node["lora"][name] = {"lora_a": a_ours.astype(a.dtype), "lora_b": b_ours.astype(b.dtype)}
    return cfg, params


ADAPTER_FORMATS = ("peft", "adapters")  # `flan-jax convert --to` for an adapters dir


def convert_adapters(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                     base: str | None = None, to: str | None = None, merge: bool = False,
                     base_name: str | None = None, overwrite: bool = False,
                     **overrides: Any) -> str:
    """`flan-jax convert` of an adapters dir (flan-jax's or PEFT's). Without `merge`: the
    adapters in the other layout (`to`: "peft" / "adapters"). With `merge`: the base with
    the adapters folded in, a plain model dir (`to`: "hf" / "flan-jax", default the base's
    own). `base`: the model dir they were trained on (default: the one they record);
    `overrides` set T5Config fields (param_dtype). Returns what was written, in words."""
    from flan_jax.model import io
    base = base or base_of(src)
    if base is None or not Path(base).is_dir():
        raise ConfigError(f"{src}: its base model dir {base!r} is not a directory here; give "
                          "the model the adapters were trained on with --base")
    peft_src = is_peft_dir(src)
    default = ("hf" if not io.is_flan_jax_dir(base) else "flan-jax") if merge else (
        "adapters" if peft_src else "peft")
    to = to or default
    if merge != (to not in ADAPTER_FORMATS):
        raise ConfigError(f"--to={to}: " + (
            "a merged model is a model dir: --to hf or flan-jax" if merge else
            "adapters convert to --to peft or adapters; add --merge to fold them into "
            "the base and write a model"))
    cfg = io.load_config(base, **overrides)
    lora, adapters = load_any_adapters(src, cfg)
    what = f"{lora.describe()}, {sum(int(np.size(x)) for x in jax.tree.leaves(adapters)):,} params"
    if not merge:
        if to == "peft":
            save_peft(dst, cfg, lora, adapters, base=base_name or str(base),
                      overwrite=overwrite)
        else:
            save_adapters(dst, lora, adapters, base=str(base), overwrite=overwrite)
        return f"wrote {to} adapters ({what}) to {dst}"
    from flan_jax.model.convert import save_hf_checkpoint
    from flan_jax.model.lora import merge_lora
    _, params = io.load_pretrained(base, **overrides)
    merged = jax.tree.map(np.asarray, merge_lora(params, adapters, lora))
    if to == "hf":
        save_hf_checkpoint(dst, cfg, merged, overwrite=overwrite)
    else:
        io.save_pretrained(dst, cfg, merged, overwrite=overwrite)
    return f"wrote {to} model: {base} with {what} merged in, to {dst}"


# --- helpers -----------------------------------------------------------------------------

def _check_hf(model_cfg: T5Config) -> None:
    if model_cfg.architecture != "encoder_decoder":
        raise ConfigError(f"T5Config.architecture={model_cfg.architecture!r}: PEFT adapters go "
                          "on a Hugging Face T5, an encoder-decoder; keep this model's adapters "
                          "in flan-jax's layout")


def _hf_names(model_cfg: T5Config) -> dict[tuple[Any, ...], str]:
    """Our projection path -> its HF module name, for every projection LoRA can adapt."""
    from flan_jax.model.convert import hf_mapping
    names = {}
    for ours, hf, _ in hf_mapping(model_cfg):
        if ours[-1] in ("q", "k", "v", "o", *MLP_ROLES["mlp_in"], *MLP_ROLES["mlp_out"]) \
                and ours[0] in STACKS:
            names[ours] = hf.removesuffix(".weight")
    return names


def _adapters(tree: Params) -> Iterator[tuple[tuple, str, Any, Any]]:
    """(module path, projection name, A, B) for every adapter in `tree`."""
    for path, adapters in adapter_dicts(tree):
        for name, ab in adapters.items():
            yield path, name, ab["lora_a"], ab["lora_b"]


_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight")


def _by_module(tensors: dict[str, np.ndarray], where: Path) -> dict[str, dict[str, np.ndarray]]:
    """{HF module name: {"A": lora_A, "B": lora_B}}; other tensors are refused by name."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            raise CheckpointError(f"{where}: tensor {key} is not a LoRA A or B weight (DoRA "
                                  "magnitudes, biases and saved modules don't import)")
        out.setdefault(m["module"], {})[m["ab"]] = value
    for module, ab in out.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{where}: {module} has lora_{''.join(ab)} but not both")
    return out


def _lora_config(raw: dict[str, Any], adapted: set[tuple[Any, ...]], where: Path) -> LoraConfig:
    """The LoraConfig whose selection is `adapted` (checked against it by the caller)."""
    kinds = {(p[0], p[-2] if p[-2] != "mlp" else "mlp", p[-1]) for p in adapted}
    stacks = tuple(s for s in STACKS if any(k[0] == s for k in kinds))
    targets: list[str] = []
    for role in ("q", "k", "v", "o"):
        self_all = all((s, "self_attn", role) in kinds for s in stacks)
        cross = "decoder" in stacks and ("decoder", "cross_attn", role) in kinds
        if self_all and (cross or "decoder" not in stacks):
            targets.append(role)
        else:
            targets += [f"{kind}_{role}" for kind, present in
                        (("self", any(k[1:] == ("self_attn", role) for k in kinds)),
                         ("cross", cross)) if present]
    for role, names in MLP_ROLES.items():
        if any(k[1] == "mlp" and k[2] in names for k in kinds):
            targets.append(role)
    try:
        return LoraConfig(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                          dropout=float(raw.get("lora_dropout") or 0.0), targets=tuple(targets),
                          stacks=stacks)
    except KeyError as e:
        raise ConfigError(f"{where}: no {e.args[0]!r}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _target_modules(adapted: set[str], every: set[str]) -> list[str] | str:
    """peft's `target_modules` selecting exactly `adapted` of the model's `every`
    projection: the short names (["q", "v"], as users write them) where those select
    exactly these, else one regex (peft full-matches a string against each module name)."""
    leaves = sorted({m.rsplit(".", 1)[1] for m in adapted})
    if {m for m in every if m.rsplit(".", 1)[1] in leaves} == adapted:
        return leaves
    groups: dict[str, set[str]] = {}
    for m in adapted:  # encoder.block.3.layer.0.SelfAttention.q -> group by all but block/leaf
        stack, _, _, _, layer, module, leaf = m.split(".")
        groups.setdefault(f"{stack}\\.block\\.\\d+\\.layer\\.{layer}\\.{module}", set()).add(leaf)
    pattern = "|".join(f"{g}\\.(?:{'|'.join(sorted(leaves))})"
                       for g, leaves in sorted(groups.items()))
    if {m for m in every if re.fullmatch(pattern, m)} != adapted:  # (layers all alike)
        raise CheckpointError("adapters differ between the layers of a stack; peft's "
                              "target_modules can't name them as one pattern")
    return pattern
