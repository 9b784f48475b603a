"""Import TensorFlow without its start-up banner (oneDNN, CUDA-stub and absl lines).

TF 2.21 writes these from C++ before any logging setting applies, so the only switch is
the stderr file descriptor itself, closed for the import and restored right after.
Python errors raised by the import still propagate and print normally.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def silenced_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with silenced_stderr():
        import tensorflow as tf

        # TF only feeds data here: keep it off the accelerators JAX owns. (Probing for
        # GPUs logs a CUDA error on machines without one, hence inside the silence.)
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already initialized its devices
            pass
