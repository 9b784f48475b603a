"""atomic_file / atomic_directory: the umask's permissions (not tempfile's 0600 / 0700),
replacing a tree, and the temp dirs a killed writer leaves (removed only when their owner is
gone, kept while another writer may still be filling them)."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flan_jax import atomic
from flan_jax.atomic import atomic_directory, atomic_file

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=["022", "027", "002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["O_TMPFILE", "named temp"])
def test_files_and_directories_get_the_umasks_permissions(tmp_path, umask, o_tmpfile,
                                                         monkeypatch):
    if not o_tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    with atomic_file(tmp_path / "out.jsonl") as f:
        f.write("{}\n")
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
    assert mode(tmp_path / "out.jsonl") == 0o666 & ~umask
    assert mode(tmp_path / "model") == 0o777 & ~umask
    assert mode(tmp_path / "model" / "sub") == 0o777 & ~umask  # (made by the caller)
    assert (tmp_path / "out.jsonl").read_text() == "{}\n"
    assert siblings(tmp_path / "model") == ["out.jsonl"]


@pytest.mark.parametrize("exchange", [True, False], ids=["RENAME_EXCHANGE", "two renames"])
def test_overwrite_replaces_the_tree_and_leaves_nothing_beside_it(tmp_path, exchange,
                                                                 monkeypatch):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    dst = tmp_path / "model"
    with atomic_directory(dst) as tmp:
        (tmp / "old.bin").write_text("old")
    with pytest.raises(FileExistsError, match="pass overwrite"):
        with atomic_directory(dst):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(dst, overwrite=True) as tmp:
            (tmp / "new.bin").write_text("new")
            raise RuntimeError("converter failed")
    assert sorted(p.name for p in dst.iterdir()) == ["old.bin"]
    with atomic_directory(dst, overwrite=True) as tmp:
        (tmp / "new.bin").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["new.bin"]
    assert siblings(dst) == []


KILLED_WRITER = """
import os, signal, sys
from flan_jax.atomic import atomic_directory
with atomic_directory(sys.argv[1], overwrite=True) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temp_dir_goes_with_the_next_write(tmp_path):
    dst = tmp_path / "model"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(dst)],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    [left] = siblings(dst)
    assert left.startswith(f".model.tmp-{child.pid}@{HOST}-") and not dst.exists()
    other = tmp_path / ".model2.tmp-1@host-abcd1234"  # another destination's: never touched
    other.mkdir()
    with atomic_directory(dst) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert (dst / "model.safetensors").read_bytes() == b"whole"
    assert siblings(dst) == [other.name]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_dirs_of_live_or_unknown_owners_are_kept(tmp_path):
    dst = tmp_path / "model"
    day = 24 * 3600
    names = {
        f".model.tmp-{_dead_pid()}@{HOST}-0a1b2c3d": "gone",  # its writer has exited
        f".model.old-{_dead_pid()}@{HOST}-0a1b2c3d": "kept",  # dst missing: the only copy
        f".model.tmp-1@{HOST}-0a1b2c3d": "kept",  # a live process (init) may be writing
        ".model.tmp-4242@other-host-1.example-0a1b2c3d": "kept",  # can't tell: recent
        ".model.tmp-4243@other-host-2-0a1b2c3d": "gone",  # can't tell, untouched for 2 days
        ".model.tmp-k3j_x9q2": "gone",  # an older flan-jax's mkdtemp, 2 days old
        ".model.tmp-p0q_r8s1": "kept",  # ... and a fresh one
    }
    for name in names:
        (tmp_path / name).mkdir()
    for name in (".model.tmp-4243@other-host-2-0a1b2c3d", ".model.tmp-k3j_x9q2"):
        os.utime(tmp_path / name, (time.time() - 2 * day, time.time() - 2 * day))

    with atomic_directory(dst) as tmp:  # our own enclosing write is live too
        with atomic_directory(dst, overwrite=True) as inner:
            assert tmp.exists()
            (inner / "a").write_text("inner")
        (tmp / "b").write_text("outer")
    assert sorted(p.name for p in dst.iterdir()) == ["b"]  # the outer write came last
    assert siblings(dst) == sorted(n for n, fate in names.items() if fate == "kept")

    # Once dst exists, a moved-aside `.old-` of a dead writer is garbage too.
    with atomic_directory(dst, overwrite=True):
        pass
    assert siblings(dst) == sorted(n for n, fate in names.items()
                                   if fate == "kept" and ".old-" not in n)
