"""What gin describes for a run, built in one place: `train` trains with it, `flan-jax plan`
sizes it (t5x's `train(...)` likewise takes its parts as arguments).

Building it is the first check of a run: a bad binding, a missing task module or mixture, a
shape binding against a checkpoint all fail here, before the model exists or anything is
written; nothing in it allocates device memory.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import gin
import optax

from flan_jax import parallel
from flan_jax.errors import ConfigError
from flan_jax.model import gin_config  # (registers T5Config with gin)
from flan_jax.model import lora as lora_lib
from flan_jax.model import prompt as prompt_lib
from flan_jax.model.config import T5Config
from flan_jax.model.params import abstract_model, param_axes, params_of
from flan_jax.train import data as data_lib
from flan_jax.train import evaluate as eval_lib
from flan_jax.train.optim import learning_rate_schedule, make_optimizer
from flan_jax.train.step import LossConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    data: data_lib.DataConfig
    loss: LossConfig
    eval: eval_lib.EvalConfig
    mesh: parallel.MeshConfig
    rules: parallel.LogicalRules
    schedule: optax.Schedule
    model_cfg: T5Config
    abstract_model: Any  # shapes and dtypes only (`params.abstract_model`), adapters included
    param_axes: Any  # logical axis names, shaped like the trained params
    optimizer: optax.GradientTransformation  # of the trained params
    optimizer_name: str
    lora: lora_lib.LoraConfig  # rank 0: off
    prompt: prompt_lib.PromptConfig  # length 0: off
    frozen_axes: Any = None  # an adapters-only run's base params' axes (None: none frozen)

    @property
    def adapters(self) -> lora_lib.LoraConfig | prompt_lib.PromptConfig | None:
        """What an adapters-only run trains (LoRA adapters or a soft prompt; the base, from
        `train.init_from`, is frozen), or None: every param trains."""
        return self.lora if self.lora.enabled else self.prompt if self.prompt.enabled else None

    @property
    def adapters_binding(self) -> str:
        """The gin binding that made this an adapters-only run, e.g. "LoraConfig.rank=8"."""
        return _binding(self.lora, self.prompt)

    @property
    def base_cfg(self) -> T5Config:
        """The config of what `train.init_from` holds (a prompt-tuning run's model_cfg adds
        the prompt to it)."""
        return self.model_cfg.replace(prompt_length=0) if self.prompt.enabled else self.model_cfg

    @property
    def abstract_params(self) -> Any:
        """The trained params (an adapters-only run's adapters), shapes and dtypes only."""
        if self.adapters is not None:
            return lora_lib.split_params(self.abstract_model)[1]
        return params_of(self.abstract_model)

    @property
    def abstract_frozen(self) -> Any:
        """An adapters-only run's base params (what `train.init_from` gives), or None."""
        if self.adapters is None:
            return None
        return lora_lib.split_params(self.abstract_model)[0]

    def initial_adapters(self, frozen: Any, seed: int) -> Any:
        """An adapters-only run's fresh adapters (pure: jit it): LoRA's from `seed` (B zero),
        a prompt from `frozen`'s embeddings or uniform, by `PromptConfig.init`."""
        if self.lora.enabled:
            return lora_lib.adapter_params(self.model_cfg, self.lora, seed)
        return self.prompt.initial_params(frozen, seed)


def setup_run(init_from: str | None = None, *, import_modules: bool = True) -> RunSetup:
    """The run's parts from the parsed gin config. `init_from`: a model directory whose
    config gives the architecture (gin gives the run settings; see `train.init_from`)."""
    data = data_lib.DataConfig()
    lora, prompt = lora_lib.LoraConfig(), prompt_lib.PromptConfig()
    _check_adapters_data(data, lora, prompt)  # (before the sources are read)
    if import_modules:  # a missing module or mixture fails before the model is built,
        data_lib.import_task_modules(data)  # and so does a template missing a field
        from flan_jax.data.validate import check_first_rows
        checked = check_first_rows(data.mixture_or_task_name, data.split)
        log.info("checked the first rows of %d sources (%d renders) in %.1f s",
                 checked.get("sources", 0), checked.get("renders", 0), checked["seconds"])
    loss, eval_cfg = LossConfig(), eval_lib.EvalConfig()
    mesh, rules = parallel.MeshConfig(), parallel.logical_axis_rules()
    schedule = learning_rate_schedule()
    cfg = model_config(init_from)
    _check_features(cfg, data)
    _check_adapters_model(cfg, lora, prompt, init_from)
    if prompt.enabled:  # the prompt is part of the model: its config says how long
        cfg = cfg.replace(prompt_length=prompt.length)
    frozen_axes = None
    if lora.enabled or prompt.enabled:
        abstract = lora_lib.abstract_lora_model(cfg, lora)  # (rank 0: the model as it is)
        frozen_axes, axes = lora_lib.split_axes(abstract)
    else:
        abstract = abstract_model(cfg)
        axes = param_axes(abstract)
    optimizer = make_optimizer(schedule=schedule, param_axes=axes)  # Adafactor: t5x's shapes
    return RunSetup(data=data, loss=loss, eval=eval_cfg, mesh=mesh, rules=rules,
                    schedule=schedule, model_cfg=cfg, abstract_model=abstract,
                    param_axes=axes, optimizer=optimizer, optimizer_name=bound(
                        "make_optimizer.name", "adafactor"), lora=lora,
                    frozen_axes=frozen_axes, prompt=prompt)


def model_config(init_from: str | None) -> T5Config:
    """The gin-bound config, or `init_from`'s architecture with gin's run settings (checked
    against gin before a single weight is read)."""
    if "prompt_length" in gin.get_bindings("T5Config"):
        raise ConfigError(
            "--gin.T5Config.prompt_length: a soft prompt's length is a model dir's (from "
            "train.init_from's config) or a prompt-tuning run's: set PromptConfig.length "
            "(gin/peft/prompt_tuning.gin) instead")
    if init_from is None:
        return gin_config.model_config()
    from flan_jax.model.io import load_config
    cfg = load_config(init_from, **gin_config.run_settings())
    gin_config.check_architecture(cfg, init_from)
    return cfg


FEATURES_OF = {"encoder_decoder": ("enc_dec",), "decoder_only": ("decoder", "prefix_lm"),
               "semi_causal": ("semi_causal",)}


def _check_features(cfg: T5Config, data: data_lib.DataConfig) -> None:
    """The model reads the features the reader makes: both settings named if not."""
    if data.feature_converter not in FEATURES_OF[cfg.architecture]:
        raise ConfigError(
            f"T5Config.architecture={cfg.architecture!r} reads the features of "
            f"DataConfig.feature_converter in {FEATURES_OF[cfg.architecture]}, not "
            f"{data.feature_converter!r}; set one to match the other (gin/arch/decoder_only.gin"
            ", arch/prefix_lm.gin and arch/semi_causal.gin pair them)")


def _check_adapters_data(data: data_lib.DataConfig, lora: lora_lib.LoraConfig,
                         prompt: prompt_lib.PromptConfig) -> None:
    """Refuses adapters the data can't serve, or two kinds at once, naming the bindings."""
    if lora.enabled and prompt.enabled:
        raise ConfigError(
            f"LoraConfig.rank={lora.rank} and PromptConfig.length={prompt.length}: a run "
            "trains one kind of adapters; drop peft/lora.gin or peft/prompt_tuning.gin")
    if prompt.enabled and data.pack:
        raise ConfigError(
            f"DataConfig.pack=True with PromptConfig.length={prompt.length}: every example "
            "needs its own soft prompt in front of it, which a packed encoder row can't give; "
            "set DataConfig.pack=False (gin/peft/prompt_tuning.gin does, after "
            "runs/finetune.gin)")


def _check_adapters_model(cfg: T5Config, lora: lora_lib.LoraConfig,
                          prompt: prompt_lib.PromptConfig, init_from: str | None) -> None:
    """Refuses adapters the model can't take, naming the bindings."""
    if (lora.enabled or prompt.enabled) and cfg.prompt_length:
        raise ConfigError(
            f"{_binding(lora, prompt)} freezes a base model, but train.init_from="
            f"{init_from!r} is prompt-tuned already (T5Config.prompt_length="
            f"{cfg.prompt_length}); start from the model it was prompt-tuned on, or finetune "
            "it fully (no peft/*.gin)")
    if prompt.enabled and cfg.architecture != "encoder_decoder":
        raise ConfigError(
            f"PromptConfig.length={prompt.length}: a soft prompt goes before an encoder's "
            f"input, and T5Config.architecture={cfg.architecture!r} has none; prompt-tune an "
            "'encoder_decoder' model")


def _binding(lora: lora_lib.LoraConfig, prompt: prompt_lib.PromptConfig) -> str:
    if lora.enabled:
        return f"LoraConfig.rank={lora.rank}"
    return f"PromptConfig.length={prompt.length}" if prompt.enabled else ""


def bound(name: str, default: Any) -> Any:
    """A gin binding's value (e.g. "train.init_from"), or `default` where it has none."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default
