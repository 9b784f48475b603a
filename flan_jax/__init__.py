"""flan-jax: Flan-style instruction tuning of T5 encoder-decoders in JAX / Flax.

Importing the package registers nothing and reads no files; `mixtures.*` modules register
the tasks and mixtures they define when imported.
"""

__version__ = "0.1.0"
