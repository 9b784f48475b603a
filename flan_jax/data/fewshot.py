"""Few-shot exemplars: drawn by index from a whole train split, and packed in a token budget.

`IndexedExemplars` draws from every row of a split with random access (seeded per query);
`ExemplarPool` holds the first `capacity` examples of a stream, for sources without it.
A query never gets itself as an exemplar: candidates are compared by content key, so a
duplicate of the query elsewhere in the data is excluded too (FLAN#19/#31 leak this way).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flan_jax.data.formats import FewShotPattern, choose, example_key

Example = Mapping[str, Any]


class IndexedExemplars:
    """Exemplars by index from a whole split: `tries` draws per shot, seeded by the query."""

    def __init__(self, rows: Any, fields: Callable[[Mapping[str, Any]], Example], *,
                 tries: int = 4):
        self.rows, self.fields, self.tries = rows, fields, tries

    def candidates(self, seed: int, query_key: str, k: int) -> list[Example]:
        """Up to k distinct examples of the split other than the query, in a seeded order."""
        n = len(self.rows)
        draws = (self.fields(self.rows[choose(seed, query_key, "shot", str(attempt), n=n)])
                 for attempt in range(k * self.tries if n else 0))
        return _distinct(((example_key(ex), ex) for ex in draws), query_key, k)


@dataclasses.dataclass
class ExemplarPool:
    """A ring buffer of (key, example) from a task's train split."""

    capacity: int = 256
    _items: list[tuple[str, Example]] = dataclasses.field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError("ExemplarPool.capacity must be at least 2")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, example: Example, key: str | None = None) -> None:
        item = (key or example_key(example), example)
        if len(self._items) < self.capacity:
            self._items.append(item)
        else:
            self._items[self._next] = item
            self._next = (self._next + 1) % self.capacity

    def fill(self, examples: Iterable[Example]) -> "ExemplarPool":
        """Adds examples until the pool is full (reads no more of the iterable than that)."""
        for example in itertools.islice(examples, self.capacity - len(self._items)):
            self.add(example)
        return self

    def candidates(self, seed: int, query_key: str, k: int) -> list[Example]:
        """Up to k distinct pool examples other than the query, in a seeded order."""
        # Rank by a hash of (seed, query, candidate): deterministic, different per query.
        ranked = sorted(self._items, key=lambda item: choose(seed, query_key, item[0], n=2**61))
        return _distinct(ranked, query_key, k)


def _distinct(candidates: Iterable[tuple[str, Example]], query_key: str,
              k: int) -> list[Example]:
    """The first k candidates whose keys differ from the query's and from each other."""
    seen, out = {query_key}, []
    if k <= 0:
        return out
    for key, ex in candidates:  # (lazy: no candidate is read after the k-th is found)
        if key not in seen:
            seen.add(key)
            out.append(ex)
            if len(out) == k:
                break
    return out


def pack_exemplars(rendered: Sequence[tuple[str, str]], query_inputs: str,
                   pattern: FewShotPattern, *, budget: int,
                   count_tokens: Callable[[str], int], max_shots: int) -> tuple[str, int]:
    """Joins as many exemplars as fit: total tokens (exemplars + query) <= `budget`.

    Returns (inputs text, number of shots). With no room for even one exemplar the query is
    returned alone (0 shots) rather than truncated.
    """
    used = count_tokens(pattern.query(query_inputs))
    chosen: list[tuple[str, str]] = []
    sep = count_tokens(pattern.example_separator) if pattern.example_separator.strip() else 0
    for x, y in rendered[:max_shots]:
        cost = count_tokens(pattern.exemplar(x, y)) + sep
        if used + cost > budget:
            break
        used += cost
        chosen.append((x, y))
    return pattern.join(chosen, query_inputs), len(chosen)
