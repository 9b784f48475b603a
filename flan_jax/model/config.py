"""T5Config and the published T5 1.0 / 1.1 / Flan-T5 shapes (encoder-decoder or decoder-only).

The config is a frozen dataclass so it can be a static argument of `jax.jit` and a gin-bound
value; every field of a preset can be overridden (`get_config("flan_t5-base", dropout_rate=0.0)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

FeedForward = Literal["relu", "gated-gelu"]
Architecture = Literal["encoder_decoder", "decoder_only", "semi_causal"]
Connector = Literal["linear", "pooled"]

ARCHITECTURES = ("encoder_decoder", "decoder_only", "semi_causal")
CONNECTORS = ("linear", "pooled")

VARIANTS = ("t5_1_0", "t5_1_1", "flan_t5")
# What a run decides (nothing here changes a parameter's shape or meaning); every other field
# is the architecture, which a checkpoint decides.
RUN_FIELDS = ("dropout_rate", "param_dtype", "dtype", "attention_backend", "remat")
REMAT_POLICIES = ("none", "full", "dots")
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5 encoder-decoder, or of a decoder-only T5-style stack.

    `architecture` picks the model `params.create_model` builds: "encoder_decoder" (`t5.T5`)
    or "decoder_only" (`decoder_only.DecoderOnly`: one self-attention stack of
    `num_decoder_layers` layers; `num_encoder_layers` is unused there). Causal and prefix-LM
    masks are both this one decoder-only architecture: the mask comes with the batch
    (`decoder_causal_attention`), not from the config. "semi_causal"
    (`semi_causal.SemiCausal`, METALM) adds a bidirectional encoder of `num_encoder_layers`
    layers whose outputs, through a `connector` ("linear": a projection per token; "pooled":
    `connector_tokens` learned queries pooling each span), stand in for the encoded spans'
    embeddings in that causal decoder.

    `prompt_length` (encoder-decoder only): a learned soft prompt of that many vectors
    [prompt_length, d_model] (`prompt.PromptParam`, Lester et al. 2021) is prepended to the
    embedded encoder input, so the encoder and the decoder's cross-attention see
    prompt_length + inputs positions; 0: none. A prompt-tuning run (`prompt.PromptConfig`)
    sets it; a model dir saved by one has it in its config.

    `tie_embeddings` computes the output logits with the shared input embedding (T5 1.0);
    `scale_decoder_outputs` multiplies the final decoder states by d_model**-0.5 before the
    logits (T5 1.0; Hugging Face's `scale_decoder_outputs`). T5 1.1 and Flan-T5 do neither.
    """

    architecture: Architecture = "encoder_decoder"
    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    feed_forward: FeedForward = "gated-gelu"
    tie_embeddings: bool = False
    scale_decoder_outputs: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_backend: str = "xla"
    # Rematerialization of each layer in the backward pass: "none" keeps every activation,
    # "full" recomputes the layer, "dots" keeps matmul outputs and recomputes the rest.
    remat: str = "none"
    connector: Connector = "linear"
    connector_tokens: int = 4
    prompt_length: int = 0
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"T5Config.architecture={self.architecture!r}: choose one of {ARCHITECTURES}"
            )
        if self.connector not in CONNECTORS:
            raise ValueError(f"T5Config.connector={self.connector!r}: choose one of {CONNECTORS}")
        if self.feed_forward not in ("relu", "gated-gelu"):
            raise ValueError(
                f"T5Config.feed_forward={self.feed_forward!r}: expected 'relu' (T5 1.0) or "
                "'gated-gelu' (T5 1.1 / Flan-T5)"
            )
        for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff",
                     "num_encoder_layers", "num_decoder_layers", "connector_tokens",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name}={getattr(self, name)} must be positive")
        if not isinstance(self.prompt_length, int) or self.prompt_length < 0:
            raise ValueError(f"T5Config.prompt_length={self.prompt_length!r}: expected an int "
                             ">= 0 (0: no soft prompt)")
        if self.prompt_length and self.architecture != "encoder_decoder":
            raise ValueError(
                f"T5Config.prompt_length={self.prompt_length}: a soft prompt is prepended to "
                f"an encoder's input; T5Config.architecture={self.architecture!r} has none "
                "(prompt tuning is for 'encoder_decoder' models)")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate={self.dropout_rate} must be in [0, 1)")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"T5Config.remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        for name in ("param_dtype", "dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ValueError(f"T5Config.{name}={getattr(self, name)!r} is not a dtype") from e

    @property
    def gated(self) -> bool:
        return self.feed_forward == "gated-gelu"

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **overrides: Any) -> "T5Config":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown T5Config field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "T5Config":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown T5Config field(s): {sorted(unknown)}")
        return cls(**d)


# (d_model, num_heads, head_dim, d_ff, num_layers) per size.
_T5_1_1_SHAPES = {
    "tiny": (64, 4, 16, 128, 2),
    "small": (512, 6, 64, 1024, 8),
    "base": (768, 12, 64, 2048, 12),
    "large": (1024, 16, 64, 2816, 24),
    "xl": (2048, 32, 64, 5120, 24),
    "xxl": (4096, 64, 64, 10240, 24),
}
# T5 1.0 names its two largest sizes 3B and 11B; we call them xl and xxl.
_T5_1_0_SHAPES = {
    "tiny": (64, 4, 16, 256, 2),
    "small": (512, 8, 64, 2048, 6),
    "base": (768, 12, 64, 3072, 12),
    "large": (1024, 16, 64, 4096, 24),
    "xl": (1024, 32, 128, 16384, 24),
    "xxl": (1024, 128, 128, 65536, 24),
}
_ALIASES = {"3b": "xl", "11b": "xxl"}


def preset_names() -> list[str]:
    return [f"{v}-{s}" for v in VARIANTS for s in SIZES]


def get_config(name: str, **overrides: Any) -> T5Config:
    """Returns a preset such as 'flan_t5-base', 't5_1_0-small' or 'tiny', with overrides.

    A bare size ('small') means Flan-T5 / T5 1.1; 'tiny' is for tests (vocab 512 unless
    overridden).
    """
    variant, _, size = name.rpartition("-")
    variant = variant or "flan_t5"
    size = _ALIASES.get(size, size)
    if variant not in VARIANTS or size not in SIZES:
        raise ValueError(
            f"unknown model preset {name!r}; known: {', '.join(preset_names())}"
        )
    table = _T5_1_0_SHAPES if variant == "t5_1_0" else _T5_1_1_SHAPES
    d_model, heads, head_dim, d_ff, layers = table[size]
    v1_0 = variant == "t5_1_0"
    base = T5Config(
        vocab_size=512 if size == "tiny" else 32128,
        d_model=d_model,
        num_heads=heads,
        head_dim=head_dim,
        d_ff=d_ff,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        feed_forward="relu" if v1_0 else "gated-gelu",
        tie_embeddings=v1_0,
        scale_decoder_outputs=v1_0,
    )
    return base.replace(**overrides)
