"""The `{options_}` block of a template: `OPTIONS:` then one `- option` per line by default.

A seeded style varies the opening line, the item markers and the closing line (as FLAN does);
with letter or number markers the answer is written as its marker, e.g. `(B)`.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Sequence

_HEADERS = ("OPTIONS:", "Options:", "Choose your answer from:", "Pick from:",
            "Possible answers:", "Select from the following.", "Choices:", "Available choices:")
_FOOTERS = ("", "", "", "Answer:", "The answer is:")
# (kind, format): kind "plain" keeps the option as the answer; the others answer by label.
_MARKERS = (("plain", "- {text}"), ("plain", "* {text}"), ("plain", "+ {text}"),
            ("upper", "({label}) {text}"), ("upper", "{label}. {text}"),
            ("lower", "({label}) {text}"), ("number", "{label}) {text}"),
            ("number", "{label}. {text}"))


@dataclasses.dataclass(frozen=True)
class OptionsStyle:
    header: str = "OPTIONS:"
    marker: str = "- {text}"
    labels: str = "plain"  # plain | upper | lower | number
    footer: str = ""

    @classmethod
    def from_seed(cls, seed: int) -> "OptionsStyle":
        """A deterministic random style: the same seed always gives the same style."""
        rng = random.Random(seed)
        labels, marker = rng.choice(_MARKERS)
        return cls(header=rng.choice(_HEADERS), marker=marker, labels=labels,
                   footer=rng.choice(_FOOTERS))

    def label(self, index: int) -> str:
        if self.labels == "upper":
            return string.ascii_uppercase[index]
        if self.labels == "lower":
            return string.ascii_lowercase[index]
        return str(index + 1)

    def answer_for(self, answer: str, options: Sequence[str]) -> str:
        """The target for `answer`: the option text, or its marker label ("(B)", "2.")."""
        if self.labels == "plain" or answer not in options:
            return answer
        item = self.marker.format(label=self.label(list(options).index(answer)), text="")
        return item.strip()

    def render(self, options: Sequence[str]) -> str:
        if self.labels != "plain" and len(options) > 26:
            raise ValueError(f"{len(options)} options is more than the {self.labels} labels allow")
        lines = [self.header]
        lines += [self.marker.format(label=self.label(i), text=opt) for i, opt in enumerate(options)]
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)


DEFAULT_STYLE = OptionsStyle()
