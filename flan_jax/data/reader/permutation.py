"""Seeded random-access permutations: position of i in a permutation of [0, n), vectorized.

A balanced 4-round Feistel network over the smallest even number of bits covering n, with
cycle walking back into [0, n) (expected < 4 walks, since the domain is < 4n). It needs no
table, so a permutation of a 10M-row task costs nothing to hold and O(1) to query; numpy
evaluates a whole chunk of queries at once (Grain's `index_shuffle` costs ~0.5 ms a call).
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit mixer (uint64 arrays, wrapping)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def key(*parts: np.ndarray | int) -> np.ndarray:
    """A 64-bit key per element from integer parts (broadcast), e.g. (seed, task, epoch)."""
    out = np.zeros((), dtype=np.uint64)
    for p in parts:
        with np.errstate(over="ignore"):
            out = mix64(out ^ (np.asarray(p, dtype=np.int64).astype(np.uint64) + _GOLDEN))
    return out


def permute(index: np.ndarray | int, n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
    """Where each `index` lands in the permutation of [0, n) keyed by `k` (broadcast)."""
    index, n, k = np.broadcast_arrays(np.asarray(index, np.int64), np.asarray(n, np.int64),
                                      np.asarray(k, np.uint64))
    if np.any((index < 0) | (index >= n)):
        raise IndexError("permute: index out of [0, n)")
    bits = np.ceil(np.log2(np.maximum(n, 4).astype(np.float64))).astype(np.int64)
    half = ((bits + 1) // 2).astype(np.uint64)
    mask = (np.uint64(1) << half) - np.uint64(1)
    x = index.astype(np.uint64).copy()
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():
        h, m, kk, v = half[todo], mask[todo], k[todo], x[todo]
        for r in range(ROUNDS):
            left, right = v >> h, v & m
            with np.errstate(over="ignore"):
                f = mix64(right ^ (kk + np.uint64(r) * _GOLDEN)) & m
            v = (right << h) | (left ^ f)
        x[todo] = v
        todo[todo] = v >= n[todo].astype(np.uint64)
    return x.astype(np.int64)
