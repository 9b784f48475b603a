"""gin for the entry points, t5x-style: `--gin_file=F` (searched in the package's `gin/`)
and `--gin.NAME=VALUE` overrides, parsed before any work so a typo stops the run at once.
"""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import os
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gin

from flan_jax.errors import ConfigError

_REPO_GIN = Path(__file__).resolve().parent.parent / "gin"  # a source checkout
_PACKAGED_GIN = Path(__file__).resolve().parent / "gin_configs"  # a wheel (pyproject.toml)


class GinConfigError(ConfigError):
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
    check_types()
    if finalize:
        try:
            gin.finalize()
        except ValueError as e:  # e.g. "train.init_from set to `%gin.REQUIRED` but not ..."
            name = str(e).split(" ", 1)[0]
            raise GinConfigError(f"{e} Give it with --gin.{name}=VALUE (strings quoted: "
                                 f"--gin.{name}=\"'...'\").") from None


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


def check_types() -> None:
    """Every bound value against its parameter's type hint, so a value of the wrong type
    (`--gin.train.total_steps="'abc'"`) fails at parse time, naming the binding, before
    anything is built, restored or written. References and macros are left to gin."""
    for (_, selector), params in gin.config._CONFIG.items():  # noqa: SLF001 - no public API
        configurable = gin.config._REGISTRY.get_match(selector)  # noqa: SLF001
        if configurable is None:
            continue
        hints = _type_hints(configurable.wrapped)
        for name, value in params.items():
            want = hints.get(name)
            if want is None or type(value).__module__.startswith("gin"):
                continue
            if not _matches(value, want):
                raise GinConfigError(
                    f"--gin.{configurable.name}.{name}={value!r}: expected "
                    f"{_describe(want)}, got {type(value).__name__}")


def _type_hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable hint is just not checked
        return {}


def _matches(value: Any, want: Any) -> bool:
    if want is Any:
        return True
    origin, args = typing.get_origin(want), typing.get_args(want)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if want is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if want is bool:
        return isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is str:
        return isinstance(value, str)
    container = origin or want
    if container in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(_matches, value, args))
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if container in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # classes, callables, protocols: gin and the callee know better


def _describe(want: Any) -> str:
    if typing.get_origin(want) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(want))
    if want is type(None):
        return "None"
    return getattr(want, "__name__", str(want))
