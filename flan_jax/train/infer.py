"""Generation from a trained or imported model: `flan-jax infer`.

A checkpoint is a flan-jax model dir, a Hugging Face T5 dir (its `spiece.model` is used
when present) or a training `model_dir` (its exported `model/`). Inputs are batched with a
fixed batch size and length, so the decoder compiles once. `flan-jax infer` prompts a model
as it trained (`evaluate.trained_data`: a prefix LM's with `prefix=True`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gin
import numpy as np

from flan_jax.data.sources import read_jsonl

METHODS = ("greedy", "sample", "beam")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How `flan-jax infer` decodes (gin: runs/infer.gin); its command-line flags, when
    given, override these values."""

    method: str = "greedy"
    max_input_len: int = 256
    max_decode_len: int = 64
    batch_size: int = 8
    temperature: float = 1.0  # sample
    top_k: int = 0  # sample; 0 = off
    top_p: float = 1.0  # sample; 1 = off
    seed: int = 0  # sample
    beam_size: int = 4  # beam
    length_penalty: float = 0.6  # beam (GNMT alpha, as t5x)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"DecodeConfig.method={self.method!r}: choose one of {METHODS}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `generate` for this method."""
        kwargs: dict[str, Any] = dict(max_input_len=self.max_input_len,
                                      max_decode_len=self.max_decode_len,
                                      batch_size=self.batch_size, method=self.method)
        if self.method == "sample":
            import jax
            kwargs.update(rng=jax.random.key(self.seed), temperature=self.temperature,
                          top_k=self.top_k, top_p=self.top_p)
        elif self.method == "beam":
            kwargs.update(beam_size=self.beam_size, length_penalty=self.length_penalty)
        return kwargs


def model_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if (path / "model" / "config.json").exists() and not (path / "config.json").exists():
        return path / "model"  # a training model_dir
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json, and no "
                                "model/ export of a training run)")
    return path


def load(checkpoint: str | Path, vocab: str | None = None):
    """(model, vocabulary) from any checkpoint `model_path` accepts."""
    from flan_jax.data import vocab as vocab_lib
    from flan_jax.model.io import load_pretrained
    from flan_jax.model.params import model_from_params

    path = model_path(checkpoint)
    cfg, params = load_pretrained(path)
    if vocab is None and (path / "spiece.model").exists():
        vocab = str(path / "spiece.model")
    vocabulary = (vocab_lib.vocabulary_of_file(vocab) if vocab
                  else vocab_lib.default_vocabulary())
    return model_from_params(cfg, params), vocabulary


def generate(model, vocabulary, texts: Sequence[str], *, max_input_len: int = 256,
             max_decode_len: int = 64, batch_size: int = 8, method: str = "greedy",
             prefix: bool = False, **decode_kwargs: Any) -> list[str]:
    """Decoded outputs for `texts`, in order. `prefix`: the model trained as a prefix LM
    (`TrainedOn.prefix_lm`), so its prompt is seen bidirectionally; `decode_kwargs`: the
    method's options (`DecodeConfig.generate_kwargs`)."""
    from flan_jax.decode import decode

    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        tokens = np.zeros((batch_size, max_input_len), np.int32)
        for i, text in enumerate(chunk):
            ids = [*vocabulary.encode(text)][:max_input_len - 1] + [vocabulary.eos_id]
            tokens[i, :len(ids)] = ids
        result = decode(model, tokens, method=method, max_decode_len=max_decode_len,
                        prefix=prefix, **decode_kwargs)
        rows = np.asarray(result.tokens)
        if rows.ndim == 3:  # beam search: [b, num_return, len] -> the best
            rows = rows[:, 0]
        out.extend(vocabulary.decode(rows[i].tolist()) for i in range(len(chunk)))
    return out


def read_inputs(path: str | Path, field: str = "inputs") -> Iterator[dict[str, Any]]:
    """`{field: text}` rows of a JSONL file; a row without the string field names its line."""
    yield from read_jsonl(path, {field: str})


def write_outputs(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Writes JSONL atomically (complete or not at all); returns the row count."""
    from flan_jax.atomic import atomic_file

    n = 0
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
