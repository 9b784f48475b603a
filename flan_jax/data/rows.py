"""Random access to raw examples: the one protocol the Grain training reader reads through.

`Rows` is what a split of any flan-jax source offers for random access: `len(rows)` and
`rows[i]` (an example dict). Implementations here import neither TensorFlow nor seqio, so
Grain worker processes can unpickle them cheaply: a JSONL file behind a line-offset index
built in one pass, a concatenation of such, and plain Python lists. A seqio source exposes
its rows through `random_access(split)` (see `sources.IndexedSource`); a source without it
is read by the seqio reader only, or converted once by `flan-jax prepare`.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flan_jax.errors import SourceError

log = logging.getLogger(__name__)

Example = dict[str, Any]


@runtime_checkable
class Rows(Protocol):
    """One split of a source, by index: `len(rows)` examples, `rows[i]` the i-th (a dict)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


def type_name(t: Any) -> str:
    """A schema type as users write it: `str`, `list[str]`."""
    return str(t) if hasattr(t, "__args__") else getattr(t, "__name__", repr(t))


def check_value(value: Any, want: Any) -> bool:
    """Whether a parsed JSON value is of a schema type (int is a float; bool is not an int)."""
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hasattr(want, "__args__"):  # list[X]
        (item,) = want.__args__
        return isinstance(value, list) and all(check_value(v, item) for v in value)
    return isinstance(value, want)


class UnknownFields(SourceError):
    """A row with fields its schema lacks, from `parse_row(..., unknown_ok=False)`. `row` is
    the row trimmed to the schema, for a caller that warns once per file and goes on."""

    row: Example


def parse_row(line: str | bytes, schema: Mapping[str, Any] | None, *,
              unknown_ok: bool = True) -> Example:
    """One JSONL line as a dict of the schema's fields; SourceError says what is wrong.

    Fields the schema lacks are dropped, or raise `UnknownFields` if not `unknown_ok` (a
    len() per row finds them: every schema field is present, so extras make the row longer).
    """
    if isinstance(line, bytes):
        try:  # UTF-8, as JSONL is: json.loads would sniff UTF-16/32 and pass surrogates
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            column = len(line[:e.start].decode("utf-8")) + 1
            raise SourceError(f"invalid UTF-8 at column {column} (byte {line[e.start]:#04x}: "
                              f"{e.reason})") from None
    if line[:1] == "\ufeff":  # a byte-order mark (files saved on Windows)
        line = line[1:]
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SourceError(_json_error(e)) from None
    if not isinstance(row, dict):
        raise SourceError(f"expected a JSON object, got {type(row).__name__}")
    if schema is None:
        return row
    for name, want in schema.items():
        if name not in row:
            raise SourceError(f"missing field {name!r} (the schema needs {sorted(schema)})")
        if not check_value(row[name], want):
            raise SourceError(f"field {name!r} should be {type_name(want)}, got "
                              f"{type(row[name]).__name__} {row[name]!r:.60}")
    trimmed = {name: row[name] for name in schema}
    if not unknown_ok and len(row) > len(schema):
        e = UnknownFields(f"field(s) {sorted(row.keys() - schema.keys())} not in the schema "
                          f"{sorted(schema)}")
        e.row = trimmed
        raise e
    return trimmed


def tell_unknown(where: str, e: UnknownFields) -> Example:
    """Warns of fields the schema lacks (callers do it once per file); the trimmed row."""
    log.warning("%s: %s: dropped (said once per file; strict=True refuses them)", where, e)
    return e.row


def _json_error(e: json.JSONDecodeError) -> str:
    """Where the line stops being JSON, counting characters from 1 within the line.

    json counts a trailing newline as a line of its own ("line 2 column 1"), and reports an
    unterminated string where it starts: a line that ends mid-value is said to be truncated.
    """
    end = len(e.doc.rstrip())
    message = f"invalid JSON ({e.msg.removesuffix(' at')} at column {min(e.pos, end) + 1})"
    if e.pos >= end or e.msg.startswith("Unterminated string"):
        message += "; the line looks truncated (it ends mid-value)"
    return message


_OPEN_FILES = 64  # per process: a collection has thousands of files, a process ~1k fds


class _Handles:
    """A few open files, least recently used closed first (shared by all JsonlRows).

    `pread` reads at an offset without a shared file position, under a lock (so a handle is
    never closed mid-read): safe from any number of threads.
    """

    def __init__(self, size: int):
        self.size, self.files = size, collections.OrderedDict()
        self.lock = threading.Lock()

    def pread(self, path: Path, start: int, stop: int) -> bytes:
        with self.lock:
            fd = self.files.pop(path, None)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                while len(self.files) >= self.size:
                    os.close(self.files.popitem(last=False)[1])
            self.files[path] = fd
            return os.pread(fd, stop - start, start)


_HANDLES = _Handles(_OPEN_FILES)


class JsonlRows:
    """The non-blank lines of one JSONL file by index, each parsed and checked on access.

    The index (one int64 byte offset per row) is built on first use in one pass over the
    file, at disk speed; rows are validated when read, so a bad row fails with `file:line`
    where it is used. With `skip_invalid` every row is parsed once while indexing and bad
    ones are left out of the index (logged once). Fields the schema lacks are dropped with
    one warning per file (per process), or refused with `strict`. A file given for a `split`
    must hold rows: an empty one fails when first counted. Files are opened through a small
    per-process LRU of handles, so thousands of files never exhaust descriptors.
    """

    def __init__(self, path: str | os.PathLike[str], schema: Mapping[str, Any] | None = None,
                 *, skip_invalid: bool = False, strict: bool = False, split: str | None = None,
                 offsets: np.ndarray | None = None):
        self.path = Path(path)  # as given, for messages
        # Read through the absolute path: the handle cache is shared process-wide, and a
        # relative name means another file once the working directory changes.
        self._file = self.path.absolute()
        self.schema = dict(schema) if schema is not None else None
        self.skip_invalid, self.strict, self.split = skip_invalid, strict, split
        self._offsets = offsets
        self._file_size: int | None = None
        self._told_unknown = False  # warned of fields the schema lacks (non-strict)

    def __getstate__(self) -> dict[str, Any]:
        self.offsets  # workers get the index, never rebuild it
        return dict(self.__dict__)

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = self._build_index()
        return self._offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Example:
        offsets = self.offsets
        if not 0 <= index < len(offsets):
            raise IndexError(f"{self.path}: row {index} of {len(offsets)}")
        start = int(offsets[index])
        stop = int(offsets[index + 1]) if index + 1 < len(offsets) else self._size()
        # Up to the next indexed row: this row, then maybe blank or (skipped) bad lines.
        line = _HANDLES.pread(self._file, start, stop).split(b"\n", 1)[0]
        try:
            return parse_row(line, self.schema, unknown_ok=self._told_unknown)
        except SourceError as e:
            where = f"{self.path}:{self.line_number(index)}"
            if isinstance(e, UnknownFields) and not self.strict:
                self._told_unknown = True
                return tell_unknown(where, e)
            raise SourceError(f"{where}: {e}") from None

    def _size(self) -> int:
        if self._file_size is None:
            self._file_size = self._file.stat().st_size
        return self._file_size

    def line_number(self, index: int) -> int:
        """1-based line of row `index` (counts the file's newlines: for error messages)."""
        offset = int(self.offsets[index])
        with self._file.open("rb") as f:
            return f.read(offset).count(b"\n") + 1

    def _build_index(self) -> np.ndarray:
        try:
            data = np.fromfile(self._file, dtype=np.uint8)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot open ({e.strerror})") from e
        self._file_size = len(data)  # rows appended later are not in the index
        ends = np.flatnonzero(data == ord("\n"))
        starts = np.concatenate([[0], ends + 1]).astype(np.int64)
        stops = np.concatenate([ends, [len(data)]]).astype(np.int64)
        # Blank lines (only spaces, tabs or \r) hold no row: a line is blank when it has no
        # byte other than whitespace. Count the non-whitespace bytes per line with cumsum.
        solid = np.cumsum(~np.isin(data, np.frombuffer(b" \t\r\n", np.uint8)), dtype=np.int64)
        solid = np.concatenate([[0], solid])
        keep = solid[stops] - solid[starts] > 0
        offsets = starts[keep]
        if self.split is not None and not len(offsets):
            raise SourceError(f"{self.path}: no rows for the {self.split!r} split (the file "
                              f"{'is empty' if not len(data) else 'has only blank lines'})")
        if not self.skip_invalid:
            return offsets
        good = []
        for a, b in zip(starts[keep], stops[keep]):
            try:
                parse_row(data[a:b].tobytes(), self.schema, unknown_ok=not self.strict)
            except SourceError:
                continue
            good.append(a)
        if len(good) < len(offsets):
            log.warning("%s: skipped %d invalid row(s) (skip_invalid=True)", self.path,
                        len(offsets) - len(good))
        if self.split is not None and not good:
            raise SourceError(f"{self.path}: no rows for the {self.split!r} split (all "
                              f"{len(offsets)} are invalid; skip_invalid=True skipped them)")
        return np.asarray(good, dtype=np.int64)


class ConcatRows:
    """Several `Rows` as one (a split made of several files), in order."""

    def __init__(self, parts: Sequence[Rows]):
        self.parts = list(parts)
        self._starts: list[int] | None = None

    def _bounds(self) -> list[int]:
        if self._starts is None:
            starts, total = [], 0
            for p in self.parts:
                starts.append(total)
                total += len(p)
            self._starts = starts + [total]
        return self._starts

    def __len__(self) -> int:
        return self._bounds()[-1]

    def __getitem__(self, index: int) -> Example:
        bounds = self._bounds()
        if not 0 <= index < bounds[-1]:
            raise IndexError(f"row {index} of {bounds[-1]}")
        part = bisect.bisect_right(bounds, index) - 1
        return self.parts[part][index - bounds[part]]


class ListRows:
    """Examples held in memory (tests, small eval sets)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]
