"""Named points where a test can kill the process for real: `FLAN_JAX_KILL_AT=NAME` makes
the process SIGKILL itself when it reaches `kill_point(NAME)`, `NAME:K` the K-th time.

Killing a subprocess from outside at "after the last checkpoint but before the export" is a
race the test loses on a fast machine; a kill from inside lands exactly there, and is still a
real SIGKILL (no cleanup, no `finally`), so the rerun meets what a crash would leave.
"""

from __future__ import annotations

import os
import signal

ENV = "FLAN_JAX_KILL_AT"
POINTS = ("during_save", "before_export", "during_export")


_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown kill point {name!r}; known: {POINTS}")
    want = os.environ.get(ENV)
    if not want or want.split(":")[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(want.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
