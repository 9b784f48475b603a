"""What both attention kernels (Triton and Mosaic) and the xla reference share.

`MASK_VALUE` is added to masked scores by the reference and by the kernels alike, so their
outputs agree on every live row; `M_INIT` starts the kernels' running max below it.
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
