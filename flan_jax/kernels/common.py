"""What both attention kernels (Triton and Mosaic) and the xla reference share.

`MASK_VALUE` is added to masked scores by the reference and by the kernels alike, so their
outputs agree on every live row; `M_INIT` starts the kernels' running max below it.
`pack_prefix` / `unpack_prefix`: how a prefix LM's flags ride in the segment ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MASK_VALUE = -1e9  # added to masked attention scores (finite: bf16-safe, no inf - inf)
M_INIT = -1e30  # a kernel's running max before its first tile (below MASK_VALUE)


def dot(a, b, contract_a: int, contract_b: int) -> jax.Array:
    """a . b over one dimension each, accumulated in f32 (the kernels' matmul)."""
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           preferred_element_type=jnp.float32)


def pack_prefix(segment_ids: jax.Array, prefix: jax.Array) -> jax.Array:
    """int32 [b, l]: segment id * 2 + prefix flag, how both kernels take a prefix LM's flags.

    No extra kernel inputs (on TPU each key-side [1, B] block fills a whole (8, 128) VMEM
    tile and its own DMA); `unpack_prefix` splits them again inside a tile.
    """
    return segment_ids * 2 + (prefix != 0).astype(jnp.int32)


def unpack_prefix(packed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`pack_prefix`'s inverse: (segment ids, bool prefix flags), any shape."""
    return packed >> 1, (packed & 1) == 1
