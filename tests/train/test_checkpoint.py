"""Checkpointer: exact round trips, keep-K, damaged checkpoints (checksums), shardings, async
saves, a failed save (disk full), a save killed by SIGKILL, and the SIGTERM stop protocol."""

import errno
import gc
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax.errors import CheckpointError
from flan_jax.train.checkpoint import CheckpointMismatchError, Checkpointer

REPO = Path(__file__).resolve().parents[2]
# A failed orbax restore leaves its other reads as never-awaited coroutines, which Python
# reports as "unraisable" when they are collected. Tests that restore broken data expect
# them, and collect them before they end (not in some later test).
orbax_failed_reads = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def collect_failed_reads():
    yield
    gc.collect()


def make_state(seed: int) -> dict:
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "step": jnp.int32(seed),
        "params": {"w": jax.random.normal(k1, (8, 16), jnp.float32),
                   "emb": jax.random.normal(k2, (4, 8)).astype(jnp.bfloat16)},
        "opt_state": {"count": jax.random.randint(k3, (3,), 0, 1000, jnp.int32)},
    }


def one_device():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def host_copy(state):
    return jax.tree.map(np.array, state)


def assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def save_steps(ckpt, steps):
    for s in steps:
        ckpt.save(s, make_state(s), {"batches": 10 * s, "seed": 0})
    ckpt.wait()


def test_round_trip_is_exact(tmp_path):
    state = make_state(1)
    with Checkpointer(tmp_path, save_every=1, keep=3, metadata={"config": "tiny.gin"}) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(5, state, {"batches": 1234, "seed": 0, "mixture": "flan:zs"})
        ckpt.wait()
        step, restored, position = ckpt.restore(abstract(state))
        assert ckpt.step_metadata(5) == {"config": "tiny.gin", "flan_jax_version": "0.1.0"}
    assert step == 5
    assert position == {"batches": 1234, "seed": 0, "mixture": "flan:zs"}
    assert_same(restored, state)
    assert restored["params"]["emb"].dtype == jnp.bfloat16


def test_keep_k_and_latest(tmp_path):
    with Checkpointer(tmp_path, save_every=2, keep=2, async_save=False) as ckpt:
        saved = [ckpt.maybe_save(s, make_state(s), {"batches": s}) for s in range(1, 8)]
        assert saved == [False, True, False, True, False, True, False]
        assert ckpt.maybe_save(7, make_state(7), {"batches": 7}, force=True)
        assert not ckpt.maybe_save(7, make_state(7), {"batches": 7}, force=True)  # has it
        assert ckpt.all_steps() == [6, 7]
        step, state, position = ckpt.restore(abstract(make_state(0)))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["6", "7"]
    assert (step, position) == (7, {"batches": 7})
    assert_same(state, make_state(7))
    with Checkpointer(tmp_path, save_every=2, keep=2) as reopened:  # a resumed run
        step, state, _ = reopened.restore(abstract(make_state(0)), step=6)
        assert reopened.step_metadata(7)["flan_jax_version"] == "0.1.0"
    assert step == 6
    assert_same(state, make_state(6))


def test_save_refuses_an_older_step(tmp_path):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        save_steps(ckpt, [2, 4])
        with pytest.raises(CheckpointError, match="already has step 4"):
            ckpt.save(3, make_state(3), {"batches": 3})
        with pytest.raises(TypeError, match="data_position must be JSON"):
            ckpt.save(5, make_state(5), {"batches": np.int64(5)})


def _truncate_state(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            os.truncate(f, f.stat().st_size // 2)


def _delete_state_files(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.unlink()


def _delete_data_position(step_dir: Path) -> None:
    for f in (step_dir / "data_position").iterdir():
        f.unlink()


DAMAGES = {"truncated": _truncate_state, "state files deleted": _delete_state_files,
           "data position deleted": _delete_data_position}


@orbax_failed_reads
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_falls_back_to_previous(tmp_path, caplog, damage, collect_failed_reads):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        save_steps(ckpt, [1, 2, 3])
    DAMAGES[damage](tmp_path / "3")

    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        with caplog.at_level(logging.WARNING, logger="flan_jax.train.checkpoint"):
            step, state, position = ckpt.restore(abstract(make_state(0)))
        assert (step, position) == (2, {"batches": 20, "seed": 0})
        assert_same(state, make_state(2))
        warning = next(r.getMessage() for r in caplog.records
                       if "damaged or unreadable" in r.getMessage())
        assert str(tmp_path / "3") in warning
        # The damaged step is set aside (not deleted) and the run can write step 3 again.
        assert ckpt.all_steps() == [1, 2]
        assert len(list(tmp_path.glob("3.damaged-*"))) == 1
        save_steps(ckpt, [3, 4])
        assert ckpt.all_steps() == [2, 3, 4]
        assert ckpt.restore(abstract(make_state(0)))[0] == 4


@orbax_failed_reads
def test_all_damaged_is_a_clear_error(tmp_path, collect_failed_reads):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        with pytest.raises(CheckpointError, match="no finished checkpoint"):
            ckpt.restore(abstract(make_state(0)))
        save_steps(ckpt, [1, 2])
        _truncate_state(tmp_path / "1")
        _delete_data_position(tmp_path / "2")
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(abstract(make_state(0)))
        with pytest.raises(CheckpointError, match=f"{tmp_path / '2'}: cannot restore"):
            ckpt.restore(abstract(make_state(0)), step=2)
    message = str(err.value)
    assert "none of the 2 checkpoints" in message
    assert str(tmp_path / "1") in message and str(tmp_path / "2") in message
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit()) == ["1", "2"]


@orbax_failed_reads
def test_wrong_abstract_state_renames_nothing(tmp_path, collect_failed_reads):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        save_steps(ckpt, [1, 2])
        wrong = abstract(make_state(0))
        wrong["params"]["w"] = jax.ShapeDtypeStruct((9, 16), jnp.float32,
                                                    sharding=wrong["params"]["w"].sharding)
        with pytest.raises(CheckpointMismatchError) as err:
            ckpt.restore(wrong)
        # Not damage: the newest step is named, no older one is tried, nothing is moved.
        assert str(err.value).startswith(f"{tmp_path / '2'}: was written with another")
        assert "params/w: stored (8, 16), this run's (9, 16)" in str(err.value)
        assert err.value.mismatches == [("params/w", (8, 16), (9, 16))]
        with pytest.raises(CheckpointMismatchError, match=f"{tmp_path / '1'}: "):
            ckpt.restore(wrong, step=1)
        assert ckpt.all_steps() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit()) == ["1", "2"]


def make_big_state(seed: int) -> dict:
    """Arrays large enough for files of their own (orbax inlines tiny ones in its index)."""
    return {"params": {"w": jax.random.normal(jax.random.key(seed), (128, 128))},
            "step": jnp.int32(seed)}


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    path.write_bytes(data)  # same size: only a checksum tells


def _largest_file(step_dir: Path) -> Path:
    return max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def _flan_jax_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("flan_jax") and r.levelno >= logging.WARNING]


def test_flipped_bytes_are_caught_by_checksums_and_the_previous_step_used(tmp_path, caplog):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        for s in (1, 2):
            ckpt.save(s, make_big_state(s), {"batches": s})
        ckpt.wait()
    assert (tmp_path / "2" / "flan_jax.checksums.0-of-1.json").is_file()
    damaged = _largest_file(tmp_path / "2")
    assert "state" in damaged.parts
    _flip_bytes(damaged)
    name = damaged.relative_to(tmp_path / "2").as_posix()

    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        with pytest.raises(CheckpointError, match=f"{tmp_path / '2'}: cannot restore.*{name}"):
            ckpt.restore(abstract(make_big_state(0)), step=2)
        with caplog.at_level(logging.WARNING):
            step, state, position = ckpt.restore(abstract(make_big_state(0)))
        assert (step, position) == (1, {"batches": 1})
        assert_same(state, make_big_state(1))
        assert ckpt.all_steps() == [1]
    assert len(list(tmp_path.glob("2.damaged-*"))) == 1
    # One short warning for the damage (step, file, both checksums) and one for the move;
    # orbax never read the damaged step, so it has nothing to say.
    [warning, moved] = _flan_jax_warnings(caplog)
    assert f"{tmp_path / '2'} (step 2) is damaged" in warning and name in warning
    assert "crc32" in warning and len(warning) < 400
    assert "moved damaged checkpoint" in moved
    assert not [r for r in caplog.records if r.name == "absl"]


def test_a_truncated_file_is_caught_before_orbax_reads_it(tmp_path, caplog):
    with Checkpointer(tmp_path, save_every=1, keep=3, async_save=False) as ckpt:
        for s in (1, 2):
            ckpt.save(s, make_big_state(s), {"batches": s})
        damaged = _largest_file(tmp_path / "2")
        os.truncate(damaged, 100)
        with caplog.at_level(logging.WARNING):
            assert ckpt.restore(abstract(make_big_state(0)))[0] == 1
    [warning, _] = _flan_jax_warnings(caplog)
    assert f"{damaged.name}: 100 bytes, " in warning and "when saved" in warning


@orbax_failed_reads
def test_checkpoints_without_checksums_restore_unverified(tmp_path, caplog,
                                                          collect_failed_reads):
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        save_steps(ckpt, [1, 2])
    for record in tmp_path.glob("*/flan_jax.checksums.*"):
        record.unlink()  # as an older flan-jax wrote them
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                step, state, _ = ckpt.restore(abstract(make_state(0)))
        assert step == 2
        assert_same(state, make_state(2))
        [unverified] = _flan_jax_warnings(caplog)  # once, for two restores
        assert f"{tmp_path / '2'} (step 2) restores unverified: it has no checksums" in unverified
        # Damage orbax itself notices still falls back, in a warning of one line.
        _truncate_state(tmp_path / "2")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert ckpt.restore(abstract(make_state(0)))[0] == 1
    warnings = _flan_jax_warnings(caplog)
    assert len(warnings) == 3  # step 2 damaged, step 1 unverified, step 2 moved
    assert all("\n" not in w and "tensorstore_spec" not in w and len(w) < 500 for w in warnings)
    assert all("\n" not in r.getMessage() and not r.exc_info for r in caplog.records)


def test_a_checksum_record_lost_with_its_step_is_named(tmp_path, caplog):
    with Checkpointer(tmp_path, save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(1, make_state(1), {"batches": 1})  # (sync: checksums recorded too)
        record = tmp_path / "1" / "flan_jax.checksums.0-of-1.json"
        record.rename(record.with_name("flan_jax.checksums.0-of-2.json"))  # 1 of 2 left
        with caplog.at_level(logging.WARNING):
            assert ckpt.restore(abstract(make_state(0)))[0] == 1
    [warning] = _flan_jax_warnings(caplog)
    assert "checksums of process(es) [1] of 2 are missing" in warning


def test_restore_into_named_sharding(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    state = make_state(3)
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        save_steps(ckpt, [3])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype,
                sharding=NamedSharding(mesh, PartitionSpec("data") if x.ndim else PartitionSpec())),
            state)
        _, restored, _ = ckpt.restore(target)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert isinstance(got.sharding, NamedSharding)
        assert got.sharding == want.sharding
    assert_same(restored, state)


def test_round_trip_of_adafactor_state_in_t5x_shapes(tmp_path):
    import optax

    from flan_jax.train.optim import make_optimizer

    axes = {"q": ("embed", "heads", "kv"), "scale": ("embed",)}
    params = {"q": jnp.ones((128, 4, 32)), "scale": jnp.ones((128,))}
    opt = make_optimizer("adafactor", schedule=optax.constant_schedule(1e-3), param_axes=axes)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(0), x.shape), params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    assert optax.tree_utils.tree_get(opt_state, "v_row")["q"].shape == (128,)  # factored
    state = {"step": jnp.int32(1), "params": params, "opt_state": opt_state}
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        ckpt.save(1, state, {"batches": 1})
        ckpt.wait()
        _, restored, _ = ckpt.restore(abstract(state))
    assert_same(restored, state)


RESHARD_CHILD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flan_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
assert jax.device_count() == 2, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.arange(32.0).reshape(4, 8), NamedSharding(mesh, P("data", None)))
with Checkpointer(sys.argv[1], save_every=1, keep=1) as ckpt:
    ckpt.save(1, {"x": x}, {"batches": 1})
    ckpt.wait()
    for spec in (P(None, "data"), P()):
        target = {"x": jax.ShapeDtypeStruct((4, 8), jnp.float32,
                                            sharding=NamedSharding(mesh, spec))}
        _, got, _ = ckpt.restore(target)
        assert got["x"].sharding.spec == spec, got["x"].sharding
        assert len(got["x"].addressable_shards) == 2
        np.testing.assert_array_equal(np.asarray(got["x"]), np.arange(32.0).reshape(4, 8))
print("ok")
"""


def run_child(code: str, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_restore_reshards_across_two_devices(tmp_path):
    child = run_child(RESHARD_CHILD, str(tmp_path),
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-3000:]
    assert out.strip() == "ok"


TWO_PROCESS_CHILD = """
import json, logging, sys
from pathlib import Path
import jax
port, index, directory = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=index)
import jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flan_jax.train.checkpoint import Checkpointer
from tests.train.test_checkpoint import _flip_bytes, _largest_file
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
def rows(step):
    return np.arange(256 * 64, dtype=np.float32).reshape(256, 64) * step
with Checkpointer(directory, save_every=1, keep=3) as ckpt:
    for step in (1, 2):  # each process holds and writes half of the rows
        ckpt.save(step, {"x": jax.make_array_from_callback(
            (256, 64), sharding, lambda i: rows(step)[i])}, {"batches": step})
    ckpt.wait()
    if index == 1:  # damage a file only process 1 wrote (and checks)
        _flip_bytes(_largest_file(directory / "2" / "state" / "ocdbt.process_1"))
    multihost_utils.sync_global_devices("damaged")
    step, got, _ = ckpt.restore(
        {"x": jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=sharding)})
    full = multihost_utils.process_allgather(got["x"], tiled=True)
    print("RESULT", json.dumps({"step": step, "exact": bool(np.array_equal(full, rows(step)))}))
"""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_record_and_check_their_own_files(tmp_path):
    port = str(_free_port())
    children = [run_child(TWO_PROCESS_CHILD, port, str(i), str(tmp_path)) for i in range(2)]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    results = [json.loads(next(line[len("RESULT "):] for line in out.splitlines()
                               if line.startswith("RESULT "))) for out, _ in outputs]
    assert results == [{"step": 1, "exact": True}] * 2  # both fell back, together
    [damaged] = tmp_path.glob("2.damaged-*")
    records = sorted(p.name for p in damaged.glob("flan_jax.checksums.*"))
    assert records == ["flan_jax.checksums.0-of-2.json", "flan_jax.checksums.1-of-2.json"]
    files_of_1 = json.loads((damaged / records[1]).read_text())["files"]
    assert any("ocdbt.process_1/" in name for name in files_of_1)
    assert not any("ocdbt.process_0/" in name for name in files_of_1)
    (_, err0), (_, err1) = outputs
    assert "ocdbt.process_1/d/" in err1 and "crc32" in err1  # each names what it found
    assert "1 on other processes (see their logs)" in err0


def test_async_save_survives_donated_buffers(tmp_path):
    state = make_state(4)
    want = host_copy(state)
    with Checkpointer(tmp_path, save_every=1, keep=2, async_save=True) as ckpt:
        assert ckpt.save(4, state, {"batches": 4})
        for leaf in jax.tree.leaves(state):  # what a donating train step does to them
            leaf.delete()
        ckpt.wait()
        assert not list(tmp_path.glob("*.orbax-checkpoint-tmp*"))
        assert ckpt.all_steps() == [4]
        _, restored, _ = ckpt.restore(abstract(make_state(0)))
    assert_same(restored, want)


class _DiskFull:
    """A commit future of orbax's state handler that fails the way a full disk does."""

    def __init__(self, directory):
        self.directory = directory

    def result(self, timeout=None):
        time.sleep(0.05)  # (after the step has started, as a real write would)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{self.directory}/d/123")

    def cancel(self):
        pass


class _Disk:
    """`fill()`: from then on, writing a train state fails with ENOSPC (in orbax's background
    thread when saving async); `free()` undoes it. orbax's public handler API is the
    injection point; a real full disk gets there through TensorStore
    (test_a_full_disk_is_reported_in_a_few_lines)."""

    def __init__(self, monkeypatch):
        self._monkeypatch = monkeypatch

    def fill(self) -> None:
        original = ocp.StandardCheckpointHandler.async_save

        async def async_save(handler, directory, *args, **kwargs):
            futures = await original(handler, directory, *args, **kwargs)
            return [*(futures or []), _DiskFull(directory)]

        self._monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", async_save)

    def free(self) -> None:
        self._monkeypatch.undo()


@pytest.fixture
def disk(monkeypatch):
    return _Disk(monkeypatch)


def _assert_save_of_2_failed(error: CheckpointError, directory: Path) -> None:
    message = str(error)
    assert message.startswith(f"{directory / '2'}: saving checkpoint step 2 failed: "
                              "No space left on device [ENOSPC]"), message
    assert f"the previous checkpoint {directory / '1'} is intact" in message
    assert "2.orbax-checkpoint-tmp was removed" in message
    assert not list(directory.glob("2.orbax-checkpoint-tmp*"))


def test_a_failed_async_save_is_raised_at_the_next_step(tmp_path, disk, caplog):
    with Checkpointer(tmp_path, save_every=1000, keep=3) as ckpt:
        save_steps(ckpt, [1])
        disk.fill()
        assert ckpt.save(2, make_state(2), {"batches": 2})
        deadline = time.monotonic() + 30
        with pytest.raises(CheckpointError) as err:
            for step in range(3, 10**6):  # the training loop: maybe_save every step
                ckpt.maybe_save(step, make_state(step), {"batches": step})
                assert time.monotonic() < deadline, "the failed save was never reported"
                time.sleep(0.01)
        _assert_save_of_2_failed(err.value, tmp_path)
        assert ckpt.all_steps() == [1]
        disk.free()  # space freed: the run (or its restart) goes on from step 1
        assert ckpt.restore(abstract(make_state(0)))[0] == 1
        save_steps(ckpt, [2])
        assert ckpt.all_steps() == [1, 2]
    # orbax's own records of the failure are one line each, without tracebacks.
    orbax = [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING]
    assert orbax and all(not r.exc_info and "\n" not in r.getMessage() for r in orbax)


@pytest.mark.parametrize("when", ["wait", "close", "sync save"])
def test_a_failed_save_is_raised_by_wait_close_or_a_sync_save(tmp_path, disk, when):
    ckpt = Checkpointer(tmp_path, save_every=1, keep=3, async_save=when != "sync save")
    try:
        save_steps(ckpt, [1])
        disk.fill()
        with pytest.raises(CheckpointError) as err:
            ckpt.save(2, make_state(2), {"batches": 2})
            if when != "sync save":
                getattr(ckpt, when)()
    finally:
        ckpt.close()  # reported once: closing after it raises nothing more
    _assert_save_of_2_failed(err.value, tmp_path)
    disk.free()
    with Checkpointer(tmp_path, save_every=1, keep=3) as reopened:
        assert reopened.all_steps() == [1]


FULL_DISK_CHILD = """
import sys, time
import jax, jax.numpy as jnp
from flan_jax.errors import CheckpointError
from flan_jax.train.checkpoint import Checkpointer
with Checkpointer(sys.argv[1], save_every=1000, keep=3) as ckpt:
    ckpt.save(1, {"w": jnp.zeros((1000,))}, {"batches": 1})
    ckpt.wait()
    ckpt.save(2, {"w": jax.random.normal(jax.random.key(0), (1_000_000,))}, {"batches": 2})
    try:
        for step in range(3, 10**6):
            ckpt.maybe_save(step, {"w": jnp.zeros((1000,))}, {"batches": step})
            time.sleep(0.01)
    except CheckpointError as e:
        print(e, flush=True)
"""


def test_a_full_disk_is_reported_in_a_few_lines(tmp_path):
    """A real ENOSPC: a 1 MiB tmpfs in a mount namespace of our own (no root needed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    probe = shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"],
                                                       capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("no unshare / user mount namespaces here")
    script = (f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(mount))} && "
              f'exec {shlex.quote(sys.executable)} -c "$0" {shlex.quote(str(mount / "ckpt"))}')
    child = subprocess.run(["unshare", "-rm", "sh", "-c", script,
                            textwrap.dedent(FULL_DISK_CHILD)],
                           cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    directory = mount / "ckpt"
    assert child.stdout.startswith(f"{directory / '2'}: saving checkpoint step 2 failed: "
                                   "No space left on device [ENOSPC] (the previous checkpoint "
                                   f"{directory / '1'} is intact; the half-written "
                                   "2.orbax-checkpoint-tmp was removed)"), child.stdout
    # orbax's part: a few one-line records, where it used to be hundreds of lines.
    assert len(child.stderr.splitlines()) <= 10, child.stderr
    assert "Traceback" not in child.stderr


BIG = 25_000_000  # float32s: 100 MB, about 0.6 s to save here (0.5 s of it compressing)

KILL_CHILD = """
import sys
import jax
from flan_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
directory, n = sys.argv[1], int(sys.argv[2])
ckpt = Checkpointer(directory, save_every=1, keep=3, async_save=True)
for step in (1, 2):
    state = {"big": jax.random.normal(jax.random.key(step), (n,)), "step": jax.numpy.int32(step)}
    jax.block_until_ready(state)
    ckpt.save(step, state, {"batches": step})
    if step == 2:
        print("saving", flush=True)  # the parent kills us while this save runs
    ckpt.wait()
print("finished", flush=True)
"""


def _tmp_bytes(directory: Path) -> int | None:
    """Bytes in step 2's half-written directory (None while there is none)."""
    tmp = list(directory.glob("2.orbax-checkpoint-tmp*"))
    if not tmp:
        return None
    return sum(f.stat().st_size for f in tmp[0].rglob("*") if f.is_file())


def _kill_during_save(directory: Path, min_bytes: int) -> bool:
    """Runs KILL_CHILD and SIGKILLs it once step 2's tmp directory holds `min_bytes`;
    False if the save committed first (a missed window, not a failure)."""
    child = run_child(KILL_CHILD, str(directory), str(BIG))
    try:
        line = child.stdout.readline()
        assert line == "saving\n", (line, child.stderr.read()[-3000:])
        while child.poll() is None and not (directory / "2").exists():
            written = _tmp_bytes(directory)
            if written is not None and written >= min_bytes:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        child.wait(timeout=60)
    finally:
        child.kill()
        child.communicate()
    return child.returncode == -signal.SIGKILL and not (directory / "2").exists()


# Killed right after the step directory appears (nothing written yet), or once half of the
# array's bytes are on disk (a window of ~0.05 s here, retried if missed).
@pytest.mark.parametrize("min_bytes", [0, BIG * 4 // 2], ids=["started", "half written"])
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path, min_bytes):
    for attempt in range(3):
        directory = tmp_path / str(attempt)
        if _kill_during_save(directory, min_bytes):
            break
    else:
        pytest.fail("the save committed before the kill, three times")
    assert _tmp_bytes(directory) >= min_bytes

    target = {"big": jax.ShapeDtypeStruct((BIG,), jnp.float32, sharding=one_device()),
              "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=one_device())}
    with Checkpointer(directory, save_every=1, keep=3, async_save=False) as ckpt:
        assert ckpt.all_steps() == [1]
        step, state, position = ckpt.restore(target)
        assert (step, position, int(state["step"])) == (1, {"batches": 1}, 1)
        np.testing.assert_array_equal(np.asarray(state["big"]),
                                      np.asarray(jax.random.normal(jax.random.key(1), (BIG,))))
        del state
        # The resumed run writes step 2 again; orbax has cleared the half-written one.
        ckpt.save(2, {"big": jnp.zeros((8,)), "step": jnp.int32(2)}, {"batches": 2})
        assert ckpt.all_steps() == [1, 2]
    assert not list(directory.glob("*.orbax-checkpoint-tmp*"))


SIGTERM_CHILD = """
import sys, signal, time
import jax.numpy as jnp
from flan_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
with Checkpointer(sys.argv[1], save_every=1000, keep=2) as ckpt:
    ckpt.install_sigterm_handler()
    for step in range(1, 100_000):
        state = {"x": jnp.full((4,), step, jnp.int32)}  # a "training step"
        if step == 3:
            print("training", flush=True)
        time.sleep(0.01)
        stop = ckpt.should_stop(step)
        ckpt.maybe_save(step, state, {"batches": step}, force=stop)
        if stop:
            print("stopped", step, flush=True)
            break
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
"""


def test_sigterm_saves_at_the_next_step_and_exits_cleanly(tmp_path):
    child = run_child(SIGTERM_CHILD, str(tmp_path))
    try:
        line = child.stdout.readline()
        assert line == "training\n", (line, child.stderr.read()[-3000:])
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err[-3000:]
    stopped = int(out.split()[-1])
    assert stopped >= 3  # the step that was running when SIGTERM came, or a later one
    with Checkpointer(tmp_path, save_every=1000, keep=2) as ckpt:
        assert ckpt.all_steps() == [stopped]
        step, state, position = ckpt.restore(
            {"x": jax.ShapeDtypeStruct((4,), jnp.int32, sharding=one_device())})
    assert (step, position) == (stopped, {"batches": stopped})
    np.testing.assert_array_equal(np.asarray(state["x"]), np.full((4,), stopped))


def test_sigterm_handler_sets_the_flag_and_is_restored(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(tmp_path, save_every=10, keep=1)
    ckpt.install_sigterm_handler()
    try:
        assert signal.getsignal(signal.SIGTERM) != previous
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.should_stop(2)
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGTERM) == previous
