"""Mixing by index: global example index -> (task, row), by the mixture's rates, in O(1).

The stream is cut into blocks of about `block` examples. Task t's cumulative count before
block b is `floor(b * block * p_t + phase_t)` (p_t its share, phase_t a seeded offset), so
any block's per-task counts are known in O(tasks) without replaying the stream; within a
block the slots are placed by a seeded permutation (`permutation.permute`). Task t's k-th
draw is row `perm_{t, epoch}(k mod n_t)`: every epoch of a task is a fresh seeded
permutation of all its rows (caps only limit the rate, as in seqio). Shares are exact to
one example per task and block: far tighter than seqio's i.i.d. draws at the same rates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from flan_jax.data.reader.permutation import key, permute
from flan_jax.errors import ReaderError

MIN_BLOCK = 1 << 16


class _Block:
    __slots__ = ("start", "size", "base", "ends")

    def __init__(self, start: int, base: np.ndarray, nxt: np.ndarray):
        counts = nxt - base
        self.start, self.size = start, int(counts.sum())
        self.base = base  # [tasks] draws of each task before this block
        self.ends = np.cumsum(counts)  # [tasks] slot ends of each task's run in the block


class IndexMixture:
    """Maps global example indices to (task id, row index) of a mixture's tasks."""

    def __init__(self, names: Sequence[str], rates: Sequence[float], sizes: Sequence[int], *,
                 seed: int, shuffle: bool = True, block: int | None = None):
        rates = np.asarray(rates, dtype=np.float64)
        sizes = np.asarray(sizes, dtype=np.int64)
        if not (len(names) == len(rates) == len(sizes)) or not len(names):
            raise ReaderError("a mixture needs at least one task, with a rate and a size each")
        for name, rate, size in zip(names, rates, sizes):
            if not rate > 0:
                raise ReaderError(f"task {name!r}: mixing rate {rate} must be positive")
            if size <= 0:
                raise ReaderError(f"task {name!r}: its split has no examples")
        self.names, self.sizes, self.seed, self.shuffle = list(names), sizes, seed, shuffle
        self.block = block or max(MIN_BLOCK, 16 * len(names))
        self.shares = rates / rates.sum()
        self._per_block = self.shares * self.block
        self._phase = np.random.default_rng([seed, 0x6D6978]).random(len(names))

    def _cumulative(self, b: int) -> np.ndarray:
        return np.floor(b * self._per_block + self._phase).astype(np.int64)

    @functools.lru_cache(maxsize=8)
    def _block_at(self, b: int) -> _Block:
        base = self._cumulative(b)
        return _Block(int(base.sum()), base, self._cumulative(b + 1))

    def _find(self, g: int) -> _Block:
        b = g // self.block  # within a block or two of the right one: counts drift < tasks
        while self._block_at(b).start > g:
            b -= 1
        while self._block_at(b + 1).start <= g:
            b += 1
        return self._block_at(b)

    def lookup(self, g: int) -> tuple[int, int]:
        """(task id, row index) of global example `g`."""
        tasks, rows = self.lookup_many(np.asarray([g]))
        return int(tasks[0]), int(rows[0])

    def lookup_many(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(task ids, row indices) of an array of global example indices."""
        g = np.asarray(g, dtype=np.int64)
        if g.size and g.min() < 0:
            raise IndexError("example indices must be >= 0")
        tasks = np.empty(g.shape, np.int64)
        draws = np.empty(g.shape, np.int64)
        if not g.size:
            return tasks, draws
        first, last = self._find(int(g.min())), self._find(int(g.max()))
        start = first.start
        while start <= last.start:  # the (usually one or two) blocks the indices fall in
            blk = self._find(start)
            here = (g >= blk.start) & (g < blk.start + blk.size)
            slot = g[here] - blk.start
            if self.shuffle and blk.size > 1:
                slot = permute(slot, blk.size, key(self.seed, 1, blk.start))
            t = np.searchsorted(blk.ends, slot, side="right")
            run_start = np.where(t > 0, blk.ends[np.maximum(t - 1, 0)], 0)
            tasks[here] = t
            draws[here] = blk.base[t] + slot - run_start
            start = blk.start + blk.size
        return tasks, self.rows(tasks, draws)

    def rows(self, tasks: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Rows of each task's k-th draw: epoch k // n, a seeded permutation of all n rows."""
        n = self.sizes[tasks]
        epoch, j = np.divmod(draws, n)
        if not self.shuffle:
            return j
        return permute(j, n, key(self.seed, 2, tasks, epoch))
