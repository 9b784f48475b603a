"""Checksums of a finished checkpoint step: a small JSON record per process of the size and
CRC-32 of every file in `<dir>/<step>/`, written once orbax has finalised the step and
checked before a restore reads it (see `Checkpointer` for when each happens).

orbax 0.12 checksums only its zarr3 shard indexes (`index_codecs: crc32c`), not the data:
bytes flipped in an array file restore without a word. So flan-jax keeps its own record.

Multi-host: work is split by file, the same way on every process and without talking to
the others: a file under `ocdbt.process_<i>/` belongs to process `i` (it wrote it, so it may
still be in its page cache), any other file to process `crc32(name) % process_count`. Each
process records only its share, in `flan_jax.checksums.<i>-of-<n>.json`, so an XXL
checkpoint of ~100 GB over 32 hosts costs each host ~3 GB of reading (CRC-32 runs at ~4 GB/s)
at the same time. The other design, process 0 recording everything after a barrier, would
read all 100 GB on one host and need a collective the background thread can't make. Every
process must see the whole step directory (a shared filesystem, as orbax requires for
multi-host saves). A restore with another process count splits the union of the records
the same way; `Checkpointer` then agrees across processes on whether any share was damaged.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import zlib
from pathlib import Path

from flan_jax.atomic import atomic_file

RECORD_PREFIX = "flan_jax.checksums."  # <step>/flan_jax.checksums.<i>-of-<n>.json
_RECORD = re.compile(r"flan_jax\.checksums\.(\d+)-of-(\d+)\.json")
_OCDBT_PROCESS = re.compile(r"(?:^|/)ocdbt\.process_(\d+)/")
_CHUNK = 8 << 20  # bytes read at a time: memory stays flat whatever the file size
_THREADS = 8  # files hashed at once (zlib and file reads release the GIL)


@dataclasses.dataclass(frozen=True)
class Verification:
    """What one process found. `damaged`: (file, what is wrong) for its share of the files;
    `unverified`: why some or all files could not be checked (no record: written before
    flan-jax kept checksums, or killed before it wrote them)."""

    damaged: list[tuple[str, str]]
    unverified: list[str]


def record(step_dir: Path, process_index: int, process_count: int) -> Path:
    """Writes this process's record of `step_dir` (a finished step: no file changes)."""
    files = [f for f in _files(step_dir) if owner(f, process_count) == process_index]
    digests = _digests(step_dir, files)
    path = step_dir / f"{RECORD_PREFIX}{process_index}-of-{process_count}.json"
    with atomic_file(path) as f:
        json.dump({"format": 1, "algorithm": "crc32", "files": {
            name: {"size": size, "crc32": f"{crc:08x}"}
            for name, (size, crc) in sorted(digests.items())}}, f)
    return path


def verify(step_dir: Path, process_index: int, process_count: int) -> Verification:
    """Checks this process's share of the files the records of `step_dir` list."""
    recorded: dict[str, tuple[int, str]] = {}  # name: (size, crc32 in hex)
    unverified: list[str] = []
    counts: set[int] = set()
    seen: set[int] = set()
    for path in sorted(step_dir.glob(f"{RECORD_PREFIX}*")):
        match = _RECORD.fullmatch(path.name)
        if match is None:
            continue
        seen.add(int(match.group(1)))
        counts.add(int(match.group(2)))
        try:
            files = {name: (int(entry["size"]), str(entry["crc32"])) for name, entry
                     in json.loads(path.read_text(encoding="utf-8"))["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            unverified.append(f"{path.name} is unreadable ({e}): its files are unchecked")
            continue
        recorded.update(files)
    if not recorded and not unverified:
        return Verification([], ["it has no checksums (written by an older flan-jax, or the "
                                 "run was killed before it recorded them)"])
    for n in counts:
        missing = sorted(set(range(n)) - seen)
        if missing:
            unverified.append(f"the checksums of process(es) {missing} of {n} are missing: "
                              "their files are unchecked")
    damaged, same_size = [], []
    for name in sorted(f for f in recorded if owner(f, process_count) == process_index):
        try:
            size = (step_dir / name).stat().st_size
        except FileNotFoundError:
            damaged.append((name, "missing"))
            continue
        if size != recorded[name][0]:  # (no need to read it)
            damaged.append((name, f"{size} bytes, {recorded[name][0]} when saved"))
        else:
            same_size.append(name)
    digests = _digests(step_dir, same_size)
    for name in same_size:
        if name not in digests:
            damaged.append((name, "missing"))
        elif f"{digests[name][1]:08x}" != recorded[name][1]:
            damaged.append((name, f"crc32 {digests[name][1]:08x}, {recorded[name][1]} "
                                  "when saved"))
    return Verification(sorted(damaged), unverified)


def owner(name: str, process_count: int) -> int:
    """The process that records and checks file `name` (relative to the step dir)."""
    match = _OCDBT_PROCESS.search(name)
    key = int(match.group(1)) if match else zlib.crc32(name.encode())
    return key % process_count


def _files(step_dir: Path) -> list[str]:
    return sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                  if p.is_file() and not p.name.startswith(RECORD_PREFIX))


def _digests(step_dir: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """{name: (size, crc32)} of the files that exist; streamed, several files at once."""
    def digest(name: str) -> tuple[str, tuple[int, int] | None]:
        size, crc = 0, 0
        try:
            with open(step_dir / name, "rb", buffering=0) as f:
                buffer = bytearray(min(_CHUNK, os.fstat(f.fileno()).st_size + 1))
                view = memoryview(buffer)
                while n := f.readinto(buffer):
                    size, crc = size + n, zlib.crc32(view[:n], crc)
        except FileNotFoundError:
            return name, None
        return name, (size, crc)

    with concurrent.futures.ThreadPoolExecutor(min(_THREADS, max(len(names), 1))) as pool:
        return {name: d for name, d in pool.map(digest, names) if d is not None}


_SAMPLE = 1 << 16  # bytes read at each of a file's start, middle and end


def fingerprint(directory: Path) -> dict[str, list[int]]:
    """{file: [size, CRC-32 of its first, middle and last 64 KiB]} for every file under
    `directory`: three small reads per file, so cheap for an XXL model dir, and different for
    a re-export of other weights (each tensor file's bytes move), though not proof against a
    single flipped byte (that is what `record` / `verify` are for)."""
    def sample(name: str) -> tuple[str, list[int]]:
        with open(directory / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            crc = 0
            for at in sorted({0, max(size // 2 - _SAMPLE // 2, 0), max(size - _SAMPLE, 0)}):
                f.seek(at)
                crc = zlib.crc32(f.read(_SAMPLE), crc)
        return name, [size, crc]

    names = _files(directory)
    with concurrent.futures.ThreadPoolExecutor(min(_THREADS, max(len(names), 1))) as pool:
        return dict(pool.map(sample, names))

