"""Atomic writes: files and directories that appear complete or not at all.

`atomic_file`: an anonymous file (Linux O_TMPFILE, else a dot-named temp file) linked into
place when complete; `atomic_directory`: a temp dir beside the target, renamed onto it only
on success. Both get the permissions an ordinary `open` / `mkdir` would (0666 / 0777 less the
umask), not `tempfile`'s owner-only 0600 / 0700.

Dependency-free, so data code (prepare.py) and model code (convert.py) share one helper.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A temp dir whose owner can't be checked (written on another host, or by a flan-jax that
# didn't put its owner in the name) is stale once nothing was added to it for this long.
STALE_UNKNOWN_OWNER_S = 24 * 3600


class atomic_directory:
    """Context manager: yields a temp dir beside `path`, renamed onto it only on success.

    An existing `path` is kept untouched on failure and replaced only with `overwrite`.
    Temp dirs of an earlier, killed `atomic_directory(path)` are removed on entry (see
    `_remove_stale`).
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        check_destination(self.path, overwrite=self.overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        self.tmp = _make_dir(self.path, "tmp")
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.path.exists() and _exchange(self.tmp, self.path):
            # One atomic swap: `path` is never missing; the old tree now sits at self.tmp
            # (a name `_remove_stale` clears if we are killed while deleting it).
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():  # no RENAME_EXCHANGE here: two renames, a moment apart
            old = _unique_name(self.path, "old")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_destination(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuses a destination directory that `atomic_directory` could not replace (a file; a
    non-empty directory without `overwrite`): callers check it before expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a directory; give a "
                              "directory path (absent or empty)")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass overwrite)")


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
            # Mode 0666: the kernel takes the umask (or the directory's default ACL) off.
            fd = os.open(out.parent, os.O_TMPFILE | os.O_WRONLY, 0o666)
    tmp_name = None
    if fd is None:
        tmp_name = str(out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    previous = _raise_on_sigterm()
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if tmp_name is None:
                # Give the anonymous file a temporary name, then rename it over `out`.
                tmp_name = str(out.parent / f".{out.name}.{os.getpid()}-"
                                            f"{secrets.token_hex(4)}.tmp")
                _link_anonymous(f.fileno(), tmp_name)
        os.replace(tmp_name, out)
        tmp_name = None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _owner() -> str:
    """Who a temp dir belongs to, in its name: `<pid>@<host>`."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _unique_name(path: Path, kind: str) -> Path:
    """`.<name>.<kind>-<pid>@<host>-<random>` beside `path` (`kind`: "tmp" or "old")."""
    return path.with_name(f".{path.name}.{kind}-{_owner()}-{secrets.token_hex(4)}")


def _make_dir(path: Path, kind: str) -> Path:
    """A new, empty, uniquely named dir beside `path`. `os.mkdir(0o777)`, unlike
    `tempfile.mkdtemp` (0700), leaves the mode to the umask, as any mkdir would."""
    for _ in range(100):
        tmp = _unique_name(path, kind)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp dir name beside {path}")


def _remove_stale(path: Path) -> None:
    """Removes temp dirs beside `path` left by a killed `atomic_directory(path)`.

    Another writer of the same `path` may be running right now (two exports to one
    directory), so a dir is removed only when its owner is known to be gone:
    - `.tmp-<pid>@<host>-*` / `.old-<pid>@<host>-*` of this host: `<pid>` no longer runs
      (a reused pid keeps the dir: we err on the side of keeping);
    - the same of another host, or a `.tmp-XXXXXXXX` of an older flan-jax (no owner in the
      name): nothing added to it for `STALE_UNKNOWN_OWNER_S` (a day).
    An `.old-*` dir (the previous tree, moved aside for a moment without RENAME_EXCHANGE)
    is kept while `path` itself is missing: then it may be the only copy left.
    Names of other destinations never match (the prefix is `.<name>.tmp-`)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-(?:(\d+)@(.+)-)?[^-]+")
    host = socket.gethostname()
    for entry in os.scandir(path.parent):
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        kind, pid, owner_host = match.groups()
        if kind == "old" and not path.exists():
            continue
        if pid is not None and owner_host == host:
            stale = not _is_running(int(pid))
        else:
            try:
                stale = time.time() - entry.stat().st_mtime > STALE_UNKNOWN_OWNER_S
            except FileNotFoundError:  # removed meanwhile by someone else
                continue
        if stale:
            log.info("removing %s, left by an interrupted write of %s", entry.path, path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own, e.g. an enclosing atomic_directory of the same path
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where the C
    library or the filesystem (e.g. some network filesystems) can't."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"can't move {a} onto {b}: {os.strerror(err)}")


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
