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
    lora: lora_lib.LoraConfig  # rank 0: off, every param trains
    frozen_axes: Any = None  # a LoRA run's base params' axes (None: nothing is frozen)

    @property
    def abstract_params(self) -> Any:
        """The trained params (a LoRA run's adapters), shapes and dtypes only."""
        if self.lora.enabled:
            return lora_lib.split_params(self.abstract_model)[1]
        return params_of(self.abstract_model)

    @property
    def abstract_frozen(self) -> Any:
        """A LoRA run's base params (what `train.init_from` gives), or None."""
        return lora_lib.split_params(self.abstract_model)[0] if self.lora.enabled else None


def setup_run(init_from: str | None = None, *, import_modules: bool = True) -> RunSetup:
    """The run's parts from the parsed gin config. `init_from`: a model directory whose
    config gives the architecture (gin gives the run settings; see `train.init_from`)."""
    data = data_lib.DataConfig()
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
    lora = lora_lib.LoraConfig()
    frozen_axes = None
    if lora.enabled:
        abstract = lora_lib.abstract_lora_model(cfg, lora)
        frozen_axes, axes = lora_lib.split_axes(abstract)
    else:
        abstract = abstract_model(cfg)
        axes = param_axes(abstract)
    optimizer = make_optimizer(schedule=schedule, param_axes=axes)  # Adafactor: t5x's shapes
    return RunSetup(data=data, loss=loss, eval=eval_cfg, mesh=mesh, rules=rules,
                    schedule=schedule, model_cfg=cfg, abstract_model=abstract,
                    param_axes=axes, optimizer=optimizer, optimizer_name=bound(
                        "make_optimizer.name", "adafactor"), lora=lora,
                    frozen_axes=frozen_axes)


def model_config(init_from: str | None) -> T5Config:
    """The gin-bound config, or `init_from`'s architecture with gin's run settings (checked
    against gin before a single weight is read)."""
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


def bound(name: str, default: Any) -> Any:
    """A gin binding's value (e.g. "train.init_from"), or `default` where it has none."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default
