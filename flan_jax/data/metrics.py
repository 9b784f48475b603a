"""seqio metric functions for instruction tasks: exact-match accuracy on normalized text.

Normalization forgives what a grader would: case, surrounding space, a final period, and
runs of whitespace. CoT tasks (`cot_work` too: the text after `</work>`) are scored on the
answer their postprocessor extracts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flan_jax.data.templates import plain_text

_SPACE = re.compile(r"\s+")


def normalize(text: Any) -> str:
    text = _SPACE.sub(" ", str(plain_text(text))).strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """{"accuracy": percent of predictions equal to their target after `normalize`}."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        return {"accuracy": 0.0}
    hits = sum(normalize(t) == normalize(p) for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / len(targets)}
