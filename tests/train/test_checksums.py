"""checksums.record / verify on a plain directory: each process's share, damage of every
kind named by file, and what can't be checked said as such."""

import json
import os
import zlib

from flan_jax.train import checksums


def make_step(step_dir):
    files = {"state/ocdbt.process_0/d/a": b"a" * 1000, "state/ocdbt.process_1/d/b": b"b" * 10,
             "state/manifest.ocdbt": b"m", "data_position/metadata": b'{"batches": 3}',
             "_CHECKPOINT_METADATA": b"{}", "empty": b""}
    for name, data in files.items():
        (step_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (step_dir / name).write_bytes(data)
    return files


def test_each_process_records_its_share_and_any_process_count_checks_them(tmp_path):
    files = make_step(tmp_path)
    shares = [json.loads(checksums.record(tmp_path, i, 2).read_text())["files"]
              for i in range(2)]
    assert "state/ocdbt.process_0/d/a" in shares[0]  # the files each process wrote
    assert "state/ocdbt.process_1/d/b" in shares[1]
    assert sorted([*shares[0], *shares[1]]) == sorted(files)  # all of them, once
    assert shares[0]["state/ocdbt.process_0/d/a"] == {
        "size": 1000, "crc32": f"{zlib.crc32(b'a' * 1000):08x}"}
    for count in (1, 2, 3):  # a restore on another number of hosts splits them anew
        results = [checksums.verify(tmp_path, i, count) for i in range(count)]
        assert all(r.damaged == [] and r.unverified == [] for r in results)


def test_damage_is_named_by_file_and_found_by_its_checker_only(tmp_path):
    make_step(tmp_path)
    for i in range(2):
        checksums.record(tmp_path, i, 2)
    (tmp_path / "state/ocdbt.process_1/d/b").write_bytes(b"B" * 10)  # same size
    os.truncate(tmp_path / "state/ocdbt.process_0/d/a", 10)
    (tmp_path / "data_position/metadata").unlink()
    found = {name: what for i in range(2) for name, what in
             checksums.verify(tmp_path, i, 2).damaged}
    assert found == {
        "state/ocdbt.process_1/d/b": f"crc32 {zlib.crc32(b'B' * 10):08x}, "
                                     f"{zlib.crc32(b'b' * 10):08x} when saved",
        "state/ocdbt.process_0/d/a": "10 bytes, 1000 when saved",
        "data_position/metadata": "missing"}
    assert [name for name, _ in checksums.verify(tmp_path, 1, 2).damaged] == [
        name for name in sorted(found) if checksums.owner(name, 2) == 1]


def test_what_cannot_be_checked_is_said(tmp_path):
    make_step(tmp_path)
    [note] = checksums.verify(tmp_path, 0, 1).unverified
    assert "no checksums" in note
    checksums.record(tmp_path, 1, 3)
    (tmp_path / "flan_jax.checksums.2-of-3.json").write_text("{not json")
    result = checksums.verify(tmp_path, 0, 1)
    assert result.damaged == []
    assert result.unverified[0].startswith("flan_jax.checksums.2-of-3.json is unreadable")
    assert "process(es) [0] of 3 are missing" in result.unverified[1]
