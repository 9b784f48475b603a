"""Flan formats: zero-shot, few-shot, chain-of-thought (plain and `<work>`) and inverted.

A rendered example is `{inputs, targets, task, format, template_id}`. Which template renders
an example is a pure function of (seed, task, example content), uniform over the templates,
so a pipeline gives the same text on every run, host and restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax.data.galactica import WORK
from flan_jax.data.templates import plain_text

ZS_OPT, ZS_NOOPT = "zs_opt", "zs_noopt"
FS_OPT, FS_NOOPT = "fs_opt", "fs_noopt"
COT_ZS, COT_FS = "cot_zs", "cot_fs"
INV = "inv"
# Galactica's working-memory CoT (zero-shot): the prompt ends by opening `<work>`, the target
# is the rationale, `</work>`, then the bare answer. Last, so the formats before it keep
# their order; tasks opt in.
COT_WORK = "cot_work"
FORMATS = (ZS_OPT, ZS_NOOPT, FS_OPT, FS_NOOPT, COT_ZS, COT_FS, INV, COT_WORK)
FEW_SHOT_FORMATS = (FS_OPT, FS_NOOPT, COT_FS)


def task_name(base: str, fmt: str) -> str:
    """The seqio Task name of a format: `{base}:{format}` (seqio allows ':' in names)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats are {FORMATS}")
    return f"{base}:{fmt}"


def example_key(example: Mapping[str, Any]) -> str:
    """A stable content hash of an example's fields (independent of dict order and run)."""
    payload = json.dumps({k: _jsonable(v) for k, v in sorted(example.items())},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def choose(seed: int, *keys: str, n: int) -> int:
    """Deterministic uniform index in [0, n) from a seed and string keys."""
    if n <= 0:
        raise ValueError("choose() needs n > 0")
    digest = hashlib.blake2b(":".join((str(seed), *keys)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def _jsonable(value: Any) -> Any:
    value = plain_text(value, errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class FewShotPattern:
    """How exemplars and the query are joined (FLAN's few-shot pattern fields)."""

    inputs_prefix: str = ""
    targets_prefix: str = ""
    x_y_delimiter: str = "\n\n"
    example_separator: str = "\n\n\n"
    final_suffix: str = ""

    def exemplar(self, inputs: str, targets: str) -> str:
        return f"{self.inputs_prefix}{inputs}{self.x_y_delimiter}{self.targets_prefix}{targets}"

    def query(self, inputs: str) -> str:
        text = f"{self.inputs_prefix}{inputs}{self.final_suffix}"
        if self.targets_prefix.strip():
            text += f"{self.x_y_delimiter}{self.targets_prefix.rstrip()}"
        return text

    def join(self, exemplars: Sequence[tuple[str, str]], query_inputs: str) -> str:
        parts = [self.exemplar(x, y) for x, y in exemplars] + [self.query(query_inputs)]
        return self.example_separator.join(parts)


DEFAULT_FEW_SHOT = FewShotPattern()

# Chain of thought: the target is the rationale, then this sentence; the postprocessor below
# reads the answer back out of generated text.
COT_ANSWER_SENTENCE = "So the answer is {answer}."
_COT_ANSWER = re.compile(r"the answer is[:\s]*(.+?)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)


def cot_target(rationale: str, answer: str) -> str:
    return f"{rationale.rstrip()} {COT_ANSWER_SENTENCE.format(answer=answer)}"


def extract_cot_answer(text: str) -> str:
    """The final answer of a chain-of-thought output ('... So the answer is 12.' -> '12').

    Uses the last 'the answer is'; text without one is returned stripped, so a model that
    answers directly is still scored on its answer.
    """
    text = plain_text(text)
    idx = text.lower().rfind("the answer is")
    if idx < 0:
        return text.strip()
    match = _COT_ANSWER.search(text[idx:])
    return match.group(1).strip() if match else text.strip()


# Working memory (Galactica, `flan_jax.data.galactica.WORK`): `{prompt} <work>` then
# `{rationale} </work> {answer}`, one space around each marker, so that prompt and target
# joined (a decoder-only model's sequence) read `... <work> {rationale} </work> {answer}`,
# and the answer is the text after the last `</work>`. The prompt opens the block, as
# Galactica's evaluation prompts did: the same question as `cot_zs`, told apart by the marker,
# so a model trained on both formats knows which one to write.
WORK_OPEN, WORK_CLOSE = WORK


def work_inputs(inputs: str) -> str:
    """`{inputs} <work>`: the prompt of the `cot_work` format (a CoT template's inputs)."""
    return f"{inputs.rstrip()} {WORK_OPEN}"


def work_target(rationale: str, answer: str) -> str:
    """`{rationale} </work> {answer}`: the target of the `cot_work` format."""
    return f"{rationale.strip()} {WORK_CLOSE} {answer}"


def extract_work_answer(text: str) -> str:
    """The answer of a working-memory output ('3 m is 300 cm </work> 300' -> '300').

    The text after the last `</work>`, stripped; text without one is returned stripped, as
    `extract_cot_answer` does, so a model that answers directly is scored on its answer.
    """
    text = plain_text(text)
    idx = text.rfind(WORK_CLOSE)
    return (text if idx < 0 else text[idx + len(WORK_CLOSE):]).strip()
