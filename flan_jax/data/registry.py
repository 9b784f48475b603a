"""Register-or-replace for seqio's registries: every name is checked before any is touched."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def make_room(registry: Any, names: Iterable[str], *, replace: bool, kind: str) -> None:
    """Refuses names already in `registry` (seqio.TaskRegistry / MixtureRegistry) unless
    `replace`, in which case they are removed; a refusal leaves the registry unchanged."""
    existing = registry.names()
    taken = sorted(n for n in dict.fromkeys(names) if n in existing)
    if taken and not replace:
        shown = ", ".join(repr(n) for n in taken[:3]) + (" ..." if len(taken) > 3 else "")
        plural = "s" if len(taken) > 1 else ""
        raise ValueError(f"seqio {kind}{plural} {shown} {'are' if plural else 'is'} already "
                         "registered (pass replace=True to register again)")
    for name in taken:
        registry.remove(name)
