"""One-time conversion of Flan 2022 parquet files into ArrayRecord, for reading rows by index.

Parquet reads a whole row group per row, so random access goes through a prepared copy:
`prepare_flan2022` writes each file's rows grouped by (task_name, template_type) plus an
`index.json` of `{task_name: {template_type: [start, count]}}` per file, atomically. Reading
side (imports neither TensorFlow nor seqio, for Grain workers): `load_prepared`,
`PreparedFlan2022.rows`, `PreparedRows`, and `Flan2022Rows` (rows as Task examples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flan_jax.atomic import atomic_directory
from flan_jax.errors import SourceError

__all__ = ["COLUMNS", "Flan2022Rows", "PreparedFlan2022", "PreparedRows", "default_prepared_dir",
           "check_nulls", "load_prepared", "open_parquet", "prepare_flan2022"]

COLUMNS = ("inputs", "targets", "task_name", "template_type")
INDEX = "index.json"  # written last: a directory holding it is a complete result
VERSION = 1
# One record per chunk: a random read decodes one row (measured ~260k reads/s, and the
# same size as zstd). The reader's defaults (16 MB readahead) are for sequential scans.
WRITER_OPTIONS = "group_size:1"
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
BATCH_ROWS = 1024
_REORDER_CHUNK = 4096

Key = tuple[str, str]  # (task_name, template_type)
Example = dict[str, Any]


def prepare_flan2022(files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     out_dir: str | os.PathLike[str], *, progress: bool = True
                     ) -> PreparedFlan2022:
    """Writes Flan 2022 parquet files into `out_dir` for random access; returns the result.

    One ArrayRecord file per input, rows grouped by key (keys in order of first appearance,
    rows of a key in file order), and `index.json`. The directory appears only when
    complete (a temp dir renamed into place); a result for the same files (paths, sizes and
    mtimes) is reused as is. Null `task_name` / `template_type` fail here with `file: row`;
    null text is kept and fails where the row is read, as the streaming source does.
    """
    paths = _parquet_paths(files)
    out = Path(out_dir)
    current = load_prepared(out, paths)
    if current is not None:
        return current
    if out.exists() and not out.is_dir():
        raise SourceError(f"{out}: exists and is not a directory (pick a new --out)")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX).exists():
        raise SourceError(f"{out}: exists, is not empty and holds no {INDEX} (not a prepared "
                          "directory); pick an empty or new one")
    from tqdm import tqdm

    total = sum(open_parquet(p)[0].metadata.num_rows for p in paths)
    with tqdm(total=total, unit="row", disable=not progress, desc="prepare flan2022",
              dynamic_ncols=True) as bar, atomic_directory(out, overwrite=True) as tmp:
        entries = [_write_one(p, tmp, f"{i:05d}", bar) for i, p in enumerate(paths)]
        index = {"version": VERSION, "inputs": _fingerprint(paths), "files": entries}
        (tmp / INDEX).write_text(json.dumps(index, separators=(",", ":")))
    return PreparedFlan2022(out, index)


def load_prepared(out_dir: str | os.PathLike[str],
                  files: Sequence[str | os.PathLike[str]] | None = None
                  ) -> PreparedFlan2022 | None:
    """The prepared result in `out_dir`, or None if there is none or it is out of date
    for `files` (one of them absent from it, or changed since: size or mtime)."""
    out = Path(out_dir)
    try:
        index = json.loads((out / INDEX).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SourceError(f"{out / INDEX}: cannot read ({e})") from e
    if index.get("version") != VERSION:
        return None
    if files is not None:
        have = {d["path"]: d for d in index["inputs"]}
        if any(have.get(d["path"]) != d for d in _fingerprint(_parquet_paths(files))):
            return None
    return PreparedFlan2022(out, index)


def default_prepared_dir(files: Sequence[str | os.PathLike[str]]) -> Path:
    """`$FLAN_JAX_CACHE/prepared/<hash>` (root default `~/.cache/flan_jax`); the hash is of
    the files' paths, sizes and mtimes, so a changed file gets a fresh directory."""
    root = Path(os.environ.get("FLAN_JAX_CACHE") or Path.home() / ".cache" / "flan_jax")
    text = json.dumps(sorted(_fingerprint(_parquet_paths(files)),
                             key=lambda d: d["path"]))
    return root / "prepared" / hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class PreparedFlan2022:
    """A prepared directory: per input file, its ArrayRecord and the rows of each key."""

    root: Path
    index: Mapping[str, Any]

    @property
    def num_rows(self) -> int:
        return sum(f["rows"] for f in self.index["files"])

    def sources(self) -> list[Path]:
        return [Path(f["source"]) for f in self.index["files"]]

    def counts(self, source: str | os.PathLike[str]) -> Counter[Key]:
        """Rows per (task_name, template_type) of one input file."""
        return Counter({(t, tt): n for t, types in self._entry(source)["keys"].items()
                        for tt, (_, n) in types.items()})

    def rows(self, source: str | os.PathLike[str], keys: Collection[Key] | None = None
             ) -> PreparedRows:
        """The rows of `keys` (all if None) of one input file, in that file's order.

        One key is a [start, count] range; several are merged into one int64 array of
        record numbers (8 bytes a row), sorted by their row in the input file.
        """
        entry = self._entry(source)
        path, src = self.root / entry["records"], Path(entry["source"])
        ranges = [entry["keys"].get(t, {}).get(tt) for t, tt in keys] if keys is not None \
            else [r for types in entry["keys"].values() for r in types.values()]
        ranges = sorted(r for r in ranges if r)
        if keys is None and entry["positions"] is None:
            return PreparedRows(path, src, 0, entry["rows"])
        if len(ranges) <= 1:
            start, count = ranges[0] if ranges else (0, 0)
            return PreparedRows(path, src, start, count)
        records = np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in ranges])
        if entry["positions"] is not None:  # records are grouped out of file order
            positions = np.load(self.root / entry["positions"], mmap_mode="r")
            records = records[np.argsort(positions[records], kind="stable")]
        return PreparedRows(path, src, records=records)

    def _entry(self, source: str | os.PathLike[str]) -> Mapping[str, Any]:
        want = str(Path(source).resolve())
        for entry in self.index["files"]:
            if entry["source"] == want:
                return entry
        raise SourceError(f"{source}: not in the prepared directory {self.root} (it holds "
                          f"{[f['source'] for f in self.index['files']][:3]}...); prepare again")


class PreparedRows:
    """Rows `{inputs, targets, task_name, template_type}` of one prepared ArrayRecord file:
    records `start .. start+count`, or the record numbers in `records`.

    The file is opened on first read, once per process for all the rows over it (each
    reader loads the file's record index: one per Task would cost milliseconds and memory
    per Task); pickles as its path (a few hundred bytes, plus `records` if given). Errors
    name the input parquet file and its row.
    """

    def __init__(self, path: str | os.PathLike[str], source: str | os.PathLike[str],
                 start: int = 0, count: int = 0, *, records: np.ndarray | None = None):
        self.path, self.source = Path(path), Path(source)
        self.start, self.count = int(start), int(count if records is None else len(records))
        self.records = records

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.count:
            raise IndexError(f"{self.source}: row {index} of {self.count} (prepared)")
        record = self.start + index if self.records is None else int(self.records[index])
        (raw,) = _read(self.path, self.source, record)
        try:
            inputs, targets, task, ttype, row = json.loads(raw)
        except ValueError as e:
            raise SourceError(f"{self.path}: record {record}: unreadable ({e}); prepare "
                              "again") from None
        for column, value in (("inputs", inputs), ("targets", targets)):
            if value is None:
                raise SourceError(f"{self.source}: row {row}: column {column!r} is null")
        return {"inputs": inputs, "targets": targets, "task_name": task, "template_type": ttype}


class Flan2022Rows:
    """Rows of the collection (`COLUMNS`) as Task examples `{inputs, targets, task, format}`,
    `format` the template_type's format name (`formats`, e.g. `flan2022.TEMPLATE_FORMATS`)."""

    def __init__(self, rows: Any, formats: Mapping[str, str]):
        self.rows, self.formats = rows, dict(formats)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        row = self.rows[index]
        fmt = self.formats.get(row["template_type"])
        if fmt is None:
            raise SourceError(f"row {index}: template_type {row['template_type']!r} is not in "
                              f"template_formats {sorted(self.formats)}")
        return {"inputs": row["inputs"], "targets": row["targets"], "task": row["task_name"],
                "format": fmt}


_READERS: dict[tuple[int, Path], Any] = {}  # (pid, file) -> open ArrayRecordReader
_LOCK = threading.Lock()


def _read(path: Path, source: Path, record: int) -> list[bytes]:
    """Record `record` of a prepared file, through this process's one reader of it."""
    key = (os.getpid(), path)  # a forked child opens its own
    with _LOCK:
        reader = _READERS.get(key)
        if reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            if not path.exists():
                raise SourceError(f"{path}: no such file (prepared from {source}; prepare "
                                  "again)")
            reader = _READERS[key] = ArrayRecordReader(str(path), READER_OPTIONS)
        return reader.read(record, record + 1)


def _parquet_paths(files: Any) -> list[Path]:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(p) for p in files]
    if not paths:
        raise SourceError("prepare: no files given")
    for p in paths:
        if not p.is_file():
            raise SourceError(f"{p}: no such file")
        if p.suffix.lower() != ".parquet":
            raise SourceError(f"{p}: not a .parquet file (JSONL is read by index as it is)")
    return list(dict.fromkeys(p.resolve() for p in paths))


def _fingerprint(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _write_one(path: Path, tmp: Path, stem: str, bar: Any) -> dict[str, Any]:
    """Writes one parquet file's rows, grouped by key; returns its index entry.

    One pass writes the records in file order. Files sorted by key (each key one run, as
    the published collection is) are then grouped already; otherwise a second pass copies
    the records in grouped order (ArrayRecord reads by index are fast) and `positions`
    keeps each record's row in the input, to merge keys back into file order.
    """
    import array

    import pyarrow.compute as pc
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    pf, offsets = open_parquet(path)
    first = tmp / f"{stem}.unsorted.array_record"
    writer = ArrayRecordWriter(str(first), WRITER_OPTIONS)
    ids, key_ids = array.array("i"), {}  # one int32 key id per row
    for rg in range(pf.num_row_groups):
        start = offsets[rg]
        for rb in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=list(COLUMNS)):
            for c in ("task_name", "template_type"):
                check_nulls(path, start, c, rb.column(c), pc)
            cols = [rb.column(c).to_pylist() for c in COLUMNS]
            for j, (inputs, targets, task, ttype) in enumerate(zip(*cols)):
                ids.append(key_ids.setdefault((task, ttype), len(key_ids)))
                writer.write(json.dumps([inputs, targets, task, ttype, start + j],
                                        ensure_ascii=False).encode())
            start += rb.num_rows
            bar.update(rb.num_rows)
    writer.close()
    ids = np.frombuffer(ids, dtype=np.int32) if len(ids) else np.zeros(0, np.int32)
    counts = np.bincount(ids, minlength=len(key_ids))
    runs = 1 + int(np.count_nonzero(ids[1:] != ids[:-1])) if len(ids) else 0
    records, positions = tmp / f"{stem}.array_record", None
    if runs == len(key_ids):  # each key one run: ids rise 0, 1, 2... already grouped
        os.replace(first, records)
    else:
        order = np.argsort(ids, kind="stable")  # grouped, keys by first appearance
        reader = ArrayRecordReader(str(first), READER_OPTIONS)
        writer = ArrayRecordWriter(str(records), WRITER_OPTIONS)
        for i in range(0, len(order), _REORDER_CHUNK):
            for raw in reader.read(order[i:i + _REORDER_CHUNK].tolist()):
                writer.write(raw)
        writer.close()
        reader.close()
        first.unlink()
        positions = f"{stem}.positions.npy"
        np.save(tmp / positions, order.astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
    keys: dict[str, dict[str, list[int]]] = {}
    for (task, ttype), k in key_ids.items():
        keys.setdefault(task, {})[ttype] = [int(starts[k]), int(counts[k])]
    return {"source": str(path.resolve()), "records": records.name, "rows": int(len(ids)),
            "positions": positions, "keys": keys}


def open_parquet(path: Path):
    """The ParquetFile, checked for the four string columns, and each row group's first row."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading parquet needs pyarrow: pip install 'flan-jax[hf]'") from e
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{path}: cannot read as parquet ({e})") from e
    schema = pf.schema_arrow
    for c in COLUMNS:
        if c not in schema.names:
            raise SourceError(f"{path}: missing column {c!r} (has {schema.names})")
        t = schema.field(c).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise SourceError(f"{path}: column {c!r} should be string, got {t}")
    offsets, row = [], 0
    for rg in range(pf.num_row_groups):
        offsets.append(row)
        row += pf.metadata.row_group(rg).num_rows
    return pf, offsets


def check_nulls(path: Path, start: int, column: str, values: Any, pc: Any) -> None:
    """SourceError `path: row N: column C is null` for the first null of a column batch."""
    if values.null_count:
        row = start + pc.index(pc.is_null(values), True).as_py()
        raise SourceError(f"{path}: row {row}: column {column!r} is null")
