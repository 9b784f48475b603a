"""Prompt tuning (Lester et al. 2021): a learned soft prompt before the embedded encoder input.

A T5 whose `T5Config.prompt_length` is P holds `T5.prompt`, a `PromptParam` [P, d_model];
`prepend` puts it before the embedded tokens and `extend_segment_ids` covers it in the mask
the encoder and the decoder's cross-attention use. A prompt-tuning run (`PromptConfig.length`
> 0, gin/peft/prompt_tuning.gin) trains the prompt alone on a frozen base, as a LoRA run
trains its adapters: a `PromptParam` is an `nnx.LoRAParam`, so `lora.split_params` splits both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from flan_jax.errors import ConfigError
from flan_jax.model.config import T5Config
from flan_jax.model.layers import param

Params = dict[str, Any]
INITS = ("sampled_vocab", "uniform")
ADAPTERS_FORMAT = "flan-jax-prompt"


class PromptParam(nnx.LoRAParam):
    """The soft prompt [prompt_length, d_model]. A trainable adapter, not a LoRA matrix: it
    subclasses `nnx.LoRAParam` so that `lora.ADAPTER`, the one filter that keeps adapters
    apart from a frozen base, covers it too."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """A prompt-tuning run: only a soft prompt of `length` vectors trains (0: off).

    `init`: "sampled_vocab" starts the prompt at the base's embeddings of `length` distinct
    token ids drawn from its first `init_vocab` ids (Lester et al.'s best init: SentencePiece
    orders ids by frequency, so these are common tokens); "uniform" at U(-init_range,
    init_range) (their "random uniform", range 0.5). Drawn from `train.seed`.
    """

    length: int = 0
    init: str = "sampled_vocab"
    init_vocab: int = 5000
    init_range: float = 0.5

    CONFIG_FILE: ClassVar[str] = "prompt_config.json"  # in `lora.save_adapters`' dir
    FORMAT: ClassVar[str] = ADAPTERS_FORMAT

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 0:
            raise ConfigError(f"PromptConfig.length={self.length!r}: expected an int >= 0 "
                              "(0: off)")
        if self.init not in INITS:
            raise ConfigError(f"PromptConfig.init={self.init!r}: choose one of {INITS}")
        if not isinstance(self.init_vocab, int) or self.init_vocab < 1:
            raise ConfigError(f"PromptConfig.init_vocab={self.init_vocab!r}: expected an "
                              "int >= 1")
        if not self.init_range > 0:
            raise ConfigError(f"PromptConfig.init_range={self.init_range!r}: expected > 0")

    @property
    def enabled(self) -> bool:
        return self.length > 0

    def describe(self) -> str:
        init = (f"sampled vocab (first {self.init_vocab} ids)" if self.init == "sampled_vocab"
                else f"uniform +-{self.init_range:g}")
        return f"a soft prompt of {self.length} vectors (init: {init})"

    def adapted_model(self, model_cfg: T5Config) -> nnx.Module:
        """The abstract model this prompt belongs to (`model_cfg` with its prompt_length)."""
        from flan_jax.model.params import abstract_model
        return abstract_model(model_cfg.replace(prompt_length=self.length))

    def initial_params(self, base: Params, seed: int) -> Params:
        """A fresh prompt for `base`'s model (pure: jit it; `base` may be sharded), shaped like
        `lora.split_params(self.adapted_model(...))[1]`."""
        embedding = base["token_embedder"]["embedding"]  # [vocab, embed]
        return {"prompt": init_prompt(jax.random.key(seed), embedding, self.length,
                                      init=self.init, population=self.init_vocab,
                                      scale=self.init_range)}


def init_prompt(key: jax.Array, embedding: jax.Array, length: int, *,
                init: str = "sampled_vocab", population: int = 5000, scale: float = 0.5,
                dtype: Any = None) -> jax.Array:
    """[length, embed] in `dtype` (default: the embedding's): the rows of `embedding`
    [vocab, embed] of `length` ids drawn from its first `population` ids (without
    replacement where there are enough), or U(-scale, scale)."""
    dtype = dtype or embedding.dtype
    if init == "uniform":
        return jax.random.uniform(key, (length, embedding.shape[1]), dtype, -scale, scale)
    if init != "sampled_vocab":
        raise ValueError(f"init_prompt: init={init!r}: choose one of {INITS}")
    n = min(population, embedding.shape[0])
    ids = jax.random.choice(key, n, (length,), replace=length > n)
    return jnp.take(embedding, ids, axis=0).astype(dtype)


def prompt_param(cfg: T5Config, embedding: nnx.Param, rngs: nnx.Rngs) -> PromptParam:
    """A fresh model's prompt: its own `embedding`'s rows of sampled ids (`init_prompt`)."""
    def init(key, shape, dtype):
        return init_prompt(key, embedding[...], shape[0], dtype=dtype)
    return param(rngs, init, (cfg.prompt_length, cfg.d_model), cfg.jnp_param_dtype,
                 ("prompt", "embed"), kind=PromptParam)


def prepend(prompt: jax.Array, x: jax.Array, segment_ids: jax.Array, positions: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The soft prompt before each row: prompt [P, embed], x [b, l, embed] (compute dtype),
    segment ids / positions int [b, l] -> [b, P + l, embed], [b, P + l], [b, P + l].

    The prompt is segment 1 at positions 0..P-1 and the tokens' positions move up by P
    (google-research/prompt-tuning prepends to the embedded inputs the same way). Rows are
    unpacked (one example, segment 1): a packed row's later examples would not see it.
    """
    b, p = x.shape[0], prompt.shape[0]
    soft = jnp.broadcast_to(prompt.astype(x.dtype)[None], (b, p, x.shape[2]))
    own = jnp.broadcast_to(jnp.arange(p, dtype=positions.dtype), (b, p))
    return (jnp.concatenate([soft, x], axis=1), extend_segment_ids(segment_ids, p),
            jnp.concatenate([own, positions + p], axis=1))


def extend_segment_ids(segment_ids: jax.Array, length: int) -> jax.Array:
    """The input tokens' segment ids [b, l] -> the encoded states' [b, length + l]: the
    prompt's (1) first, so the decoder's cross-attention sees it too. Every row gets it, an
    all-pad row too (harmless: attention never crosses rows, and its loss weights are 0)."""
    ones = jnp.ones((segment_ids.shape[0], length), segment_ids.dtype)
    return jnp.concatenate([ones, segment_ids], axis=1)
