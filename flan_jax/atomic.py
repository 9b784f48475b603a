"""Atomic directory writes: a temp dir beside the target, renamed onto it only on success.

Dependency-free, so data code (prepare.py) and model code (convert.py) share one helper.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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
