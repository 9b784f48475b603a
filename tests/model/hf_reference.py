"""Random-weight Hugging Face T5 models (no download) saved as safetensors directories.

The reference side of every parity test: transformers' PyTorch T5 on the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

VARIANTS = {
    # T5 1.0: ReLU MLP, tied embeddings, decoder output scaled by d_model**-0.5.
    "t5_1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    # T5 1.1 / Flan-T5: gated-GELU MLP, separate lm_head, no scaling.
    "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def tiny_hf_config(variant: str, **overrides) -> transformers.T5Config:
    kwargs = dict(vocab_size=99, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                  num_decoder_layers=3, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, dropout_rate=0.0,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    kwargs.update(VARIANTS[variant])
    kwargs.update(overrides)
    return transformers.T5Config(**kwargs)


def make_hf_model(variant: str, seed: int = 0, **overrides) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = tiny_hf_config(variant, **overrides)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        # Random init gives tiny relative-bias and norm values; widen them so that every
        # parameter visibly matters in the comparison.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
        if not VARIANTS[variant]["tie_word_embeddings"]:
            # transformers >= 5 ties lm_head to `shared` even for T5 1.1; untie it explicitly
            # or the untied path would never be exercised.
            model.lm_head.weight = torch.nn.Parameter(
                torch.randn(cfg.vocab_size, cfg.d_model) * cfg.d_model**-0.5)
            model.config.tie_word_embeddings = False
    return model


def save_hf_model(model: transformers.T5ForConditionalGeneration, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def padded_batch(rng: np.random.Generator, vocab: int, batch: int, max_len: int,
                 min_len: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Token ids in [2, vocab) ending with EOS (1), right-padded with 0; and the mask."""
    ids = np.zeros((batch, max_len), np.int64)
    mask = np.zeros((batch, max_len), np.int64)
    for i in range(batch):
        n = int(rng.integers(min_len, max_len + 1)) if i else max_len
        ids[i, : n - 1] = rng.integers(2, vocab, n - 1)
        ids[i, n - 1] = 1
        mask[i, :n] = 1
    return ids, mask
