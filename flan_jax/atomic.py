"""Atomic writes: files and directories that appear complete or not at all.

`atomic_file`: an anonymous file (Linux O_TMPFILE, else a dot-named temp file) linked into
place when complete; `atomic_directory`: a temp dir beside the target, renamed onto it only
on success.

Dependency-free, so data code (prepare.py) and model code (convert.py) share one helper.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class atomic_directory:
    """Context manager: yields a temp dir beside `path`, renamed onto it only on success.

    An existing `path` is kept untouched on failure and replaced only with `overwrite`.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.path.exists() and any(self.path.iterdir()) and not self.overwrite:
            raise FileExistsError(f"{self.path} exists and is not empty (pass overwrite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-",
                                         dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """A file (`mode` "w" text or "wb" bytes) that appears at `out` complete or not at all.

    With O_TMPFILE the data has no name until it is linked at the end, so even SIGKILL
    leaves nothing; elsewhere a dot-named temp file is removed on errors and SIGTERM.
    """
    out = Path(out)
    fd = None
    if hasattr(os, "O_TMPFILE"):
        with contextlib.suppress(OSError):
            fd = os.open(out.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    tmp_name = None
    if fd is None:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    previous = _raise_on_sigterm()
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if tmp_name is None:
                # Give the anonymous file a temporary name, then rename it over `out`.
                tmp_name = str(out.parent / f".{out.name}.{os.getpid()}.tmp")
                _link_anonymous(f.fileno(), tmp_name)
        os.replace(tmp_name, out)
        tmp_name = None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _link_anonymous(fd: int, path: str) -> None:
    """linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: os.link can't follow that magic link."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(path),
                   at_symlink_follow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"can't link the finished export to {path}: {os.strerror(err)}")


def _raise_on_sigterm():
    """Turns SIGTERM into an exception (so `finally` cleans up); main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)
