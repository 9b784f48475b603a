"""orbax's failures in a few words: one line per orbax log record, TensorStore's JSON specs
cut out of messages, and the OS reason of a failed write; `FLAN_JAX_DEBUG=1` keeps it all.

One failed save or damaged checkpoint makes orbax log an ERROR with a traceback and specs for
every array it touched (hundreds to thousands of lines, a few of them the reason), and makes
Python print the reads it left behind. `Checkpointer` says what happened in one message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator

DEBUG_ENV = "FLAN_JAX_DEBUG"  # =1: orbax's own tracebacks and messages, in full

# What TensorStore and orbax append to a message: a JSON spec per array (thousands of
# characters), or a repr of the whole TensorStore.
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec(?:\[\d+\])?='.*?'\]"
                               r"|\s*See full TensorStore details:.*", re.DOTALL)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # TensorStore: "[os_error_code='28']"


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(text: str, limit: int = 300) -> str:
    """`text` without the JSON specs TensorStore appends (thousands of characters each),
    first line only, at most `limit` characters."""
    lines = _TENSORSTORE_SPEC.sub("", text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def short(error: BaseException) -> str:
    return one_line(f"{type(error).__name__}: {error}")


def os_reason(error: BaseException) -> str | None:
    """The operating system's words for a failed write ("No space left on device
    [ENOSPC]") from an OSError or a TensorStore message in `error`'s chain; None if none."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            match = _OS_ERROR_CODE.search(str(e))
            code = int(match.group(1)) if match else None
        if code:
            return f"{os.strerror(code)} [{errno.errorcode.get(code, code)}]"
        e = e.__cause__ or e.__context__
    return None


def compact_orbax_logs() -> None:
    """Installs `_CompactOrbaxRecords` on absl's logger (orbax's), once per process."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _CompactOrbaxRecords) for f in absl_logger.filters):
        absl_logger.addFilter(_CompactOrbaxRecords())


@contextlib.contextmanager
def quiet_failed_reads() -> Iterator[None]:
    """While a restore runs: a failed orbax restore closes its event loop while TensorStore
    still completes its other reads, and each completion's callback then fails with
    "Event loop is closed", which Python prints as an unraisable exception with a
    traceback. Those are dropped; any other unraisable exception is not."""
    previous = sys.unraisablehook

    def hook(unraisable):  # (sys.UnraisableHookArgs)
        value = unraisable.exc_value
        if (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
                and not debug()):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:  # (unless someone replaced it meanwhile)
            sys.unraisablehook = previous


class _CompactOrbaxRecords(logging.Filter):
    """Keeps orbax's warnings and errors, one short line each, without their tracebacks;
    with FLAN_JAX_DEBUG=1 they pass whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.WARNING and not debug()
                and f"{os.sep}orbax{os.sep}" in record.pathname):
            record.msg, record.args = one_line(record.getMessage()), ()
            record.exc_info = record.exc_text = record.stack_info = None
        return True
