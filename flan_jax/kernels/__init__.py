"""Pallas kernels (GPU via Triton, TPU via Mosaic, CPU in interpret mode) below flan_jax.model."""

from flan_jax.kernels.flash_attention import MODES, flash_attention

__all__ = ["MODES", "flash_attention"]
