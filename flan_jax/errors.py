"""flan-jax's user-facing errors: one hierarchy the CLI catches by type (exit 2, one line).

Each message names the thing at fault (file:line, task, field, gin binding) and what to do.
Modules raise these; `cli.main` prints them without a traceback.
"""

from __future__ import annotations


class FlanJaxError(ValueError):
    """Base of every error caused by the user's input or settings (not by a bug)."""


class SourceError(FlanJaxError):
    """A source row or file that can't be used; the message starts with `file:line`."""


class ReaderError(FlanJaxError):
    """A training-reader setting or saved reader state that can't be used (names the
    DataConfig field, task or checkpoint setting at fault)."""


class ConfigError(FlanJaxError):
    """A gin binding or setting that can't be used; the message names the binding."""


class CheckpointError(FlanJaxError):
    """A model directory, train checkpoint, config field or tensor that flan-jax can't use;
    the message names the directory or file, and the step or tensor where known."""
