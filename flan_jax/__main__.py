"""`python -m flan_jax` is the `flan-jax` command."""

import sys

from flan_jax.cli import main

sys.exit(main())
