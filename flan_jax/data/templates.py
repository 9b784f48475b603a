"""Templates: an (inputs pattern, targets pattern) pair rendered from a dict example.

Patterns use `{field}` slots (`{{` and `}}` for literal braces). The slot `{options_}` renders
the example's `options` list as an options block (flan_jax.data.options); `without_options()`
gives the no-options variant that every task with options also gets.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax.data.options import DEFAULT_STYLE, OptionsStyle

OPTIONS_SLOT = "options_"
OPTIONS_FIELD = "options"


class TemplateError(ValueError):
    """A template that can't be rendered; the message names task, template and field."""


def _slots(pattern: str, where: str) -> tuple[str, ...]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as e:
        raise TemplateError(f"{where}: bad pattern {pattern!r} ({e})") from e
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TemplateError(f"{where}: slot {{{name}}} must be a plain field name")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Template:
    inputs: str
    targets: str

    def __post_init__(self) -> None:
        # Parsed once here (which also validates): render() runs for every example.
        inputs, targets = _slots(self.inputs, "template inputs"), _slots(self.targets,
                                                                          "template targets")
        fields = tuple(dict.fromkeys(OPTIONS_FIELD if n == OPTIONS_SLOT else n
                                     for n in inputs + targets))
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_has_options", OPTIONS_SLOT in inputs)
        # A closing line ("Answer:") only reads well when the options end the prompt.
        object.__setattr__(self, "_options_last",
                           self.inputs.rstrip().endswith("{" + OPTIONS_SLOT + "}"))

    @property
    def fields(self) -> tuple[str, ...]:
        """The example fields this template reads (`{options_}` reads `options`)."""
        return self._fields  # type: ignore[attr-defined]

    @property
    def has_options(self) -> bool:
        return self._has_options  # type: ignore[attr-defined]

    def without_options(self) -> "Template":
        """The same template with the `{options_}` slot (and the blank space around it) removed."""
        inputs = re.sub(r"\s*\{options_\}\s*", "\n", self.inputs).strip()
        return Template(inputs=inputs, targets=self.targets)

    def render(self, example: Mapping[str, Any], *, style: OptionsStyle = DEFAULT_STYLE,
               task: str = "?", template_id: int | str = "?") -> tuple[str, str]:
        """(inputs, targets) text. Missing fields raise TemplateError naming all three."""
        return self._render(example, style, task, template_id)[:2]

    def choices(self, example: Mapping[str, Any], *, style: OptionsStyle = DEFAULT_STYLE,
                task: str = "?", template_id: int | str = "?") -> list[str]:
        """The target text each option would have, for rank classification; empty when
        the template has no options block or its target is not one of the options."""
        _, _, raw_target, options = self._render(example, style, task, template_id)
        if not (self.has_options and raw_target in options):
            return []
        return [style.answer_for(o, options) for o in options]

    def _render(self, example: Mapping[str, Any], style: OptionsStyle, task: str,
                template_id: int | str) -> tuple[str, str, str, Sequence[str]]:
        """(inputs, targets, targets before the option marker swap, options)."""
        values: dict[str, Any] = {}
        for name in self.fields:
            if name not in example:
                raise TemplateError(
                    f"task {task!r}, template {template_id}: field {name!r} is missing from the "
                    f"example (it has {sorted(example)})")
            values[name] = _text(example[name])
        options: Sequence[str] = ()
        if OPTIONS_FIELD in values:
            options = [_text(o) for o in _as_list(example[OPTIONS_FIELD], task, template_id)]
            if style.footer and not self._options_last:  # type: ignore[attr-defined]
                style = dataclasses.replace(style, footer="")
            values[OPTIONS_SLOT] = style.render(options)
        inputs = self.inputs.format(**values)
        raw_target = targets = self.targets.format(**values)
        if options and self.has_options:
            targets = style.answer_for(targets, options)
        return inputs, targets, raw_target, options


def plain_value(value: Any) -> Any:
    """A TF tensor or numpy value from a tf.data pipeline as plain Python (bytes, list, ...)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def plain_text(value: Any, errors: str = "strict") -> Any:
    """`plain_value`, with bytes decoded as UTF-8: the one bytes -> str conversion."""
    value = plain_value(value)
    return value.decode("utf-8", errors=errors) if isinstance(value, bytes) else value


def _text(value: Any) -> str:
    value = plain_text(value)
    if isinstance(value, (list, tuple)):  # a list in a plain slot reads as "a, b, c"
        return ", ".join(_text(v) for v in value)
    return str(value)


def _as_list(value: Any, task: str, template_id: int | str) -> list[Any]:
    value = plain_value(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise TemplateError(f"task {task!r}, template {template_id}: field 'options' must be a "
                            f"non-empty list, got {value!r}")
    return list(value)
