"""gin for the entry points, t5x-style: `--gin_file=F` (searched in the package's `gin/`)
and `--gin.NAME=VALUE` overrides, parsed before any work so a typo stops the run at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import gin

_REPO_GIN = Path(__file__).resolve().parent.parent / "gin"  # a source checkout
_PACKAGED_GIN = Path(__file__).resolve().parent / "gin_configs"  # a wheel (pyproject.toml)


class GinConfigError(ValueError):
    """A gin file or binding that can't be used; the message names it."""


def search_paths() -> list[Path]:
    """Where `--gin_file` names are looked up, after the current directory."""
    return [p for p in (_REPO_GIN, _PACKAGED_GIN) if p.is_dir()]


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(other args, gin files, bindings) from `--gin_file=F`, `--gin_file F`, `--gin.X=V`."""
    rest, files, bindings = [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--gin_file"):
            if arg == "--gin_file":
                if i + 1 >= len(args):
                    raise GinConfigError("--gin_file needs a file name")
                files.append(args[i + 1])
                i += 1
            else:
                files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            if "=" not in arg:
                raise GinConfigError(f"{arg}: write --gin.NAME=VALUE")
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        i += 1
    return rest, files, bindings


def resolve_gin_file(name: str) -> str:
    if os.path.exists(name):
        return name
    for base in search_paths():
        for candidate in (base / name, base / f"{name}.gin"):
            if candidate.exists():
                return str(candidate)
    raise GinConfigError(f"gin file {name!r} not found in . or {[str(p) for p in search_paths()]}")


class _NoPathNotFound(logging.Filter):
    """gin logs an ERROR for every search-path entry an `include` is not under."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_includes() -> Iterator[None]:
    f = _NoPathNotFound()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def parse(files: Sequence[str], bindings: Sequence[str], *, finalize: bool = True) -> None:
    """Parses files then bindings; unknown configurables or parameters name the culprit."""
    for base in search_paths():
        if str(base) not in gin.config._LOCATION_PREFIXES:  # noqa: SLF001 - no public getter
            gin.add_config_file_search_path(str(base))
    with _quiet_includes():
        _parse(files, bindings)
    if finalize:
        gin.finalize()


def _parse(files: Sequence[str], bindings: Sequence[str]) -> None:
    for f in files:
        path = resolve_gin_file(f)
        try:
            gin.parse_config_file(path)
        except (ValueError, ImportError, SyntaxError) as e:
            raise GinConfigError(f"gin file {path}: {e}") from e
    for b in bindings:
        try:
            gin.parse_config(b)
        except (ValueError, ImportError, SyntaxError) as e:
            raise GinConfigError(f"--gin.{b.replace(' = ', '=')}: {e}") from e
