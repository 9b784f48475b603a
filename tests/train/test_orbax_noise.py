"""orbax_noise: orbax's log records one line each (whole with FLAN_JAX_DEBUG=1), TensorStore
specs cut out, and the OS reason found in an error's chain."""

import errno
import logging
import os
import sys

import pytest

from flan_jax.train import orbax_noise

SPEC = "[tensorstore_spec='{\"driver\":\"zarr\",\"kvstore\":{\"path\":\"/x/\"}}']"


def orbax_record(level=logging.ERROR):
    try:
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing \"w/0\" {SPEC}\nmore")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.getLogger("absl").makeRecord(
        "absl", level, f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}x.py",
        1, "Failed: %s", ("a failure " + SPEC,), exc_info)


@pytest.mark.parametrize("debug", [False, True])
def test_orbax_records_are_one_line_unless_debugging(monkeypatch, caplog, debug):
    if debug:
        monkeypatch.setenv("FLAN_JAX_DEBUG", "1")
    else:
        monkeypatch.delenv("FLAN_JAX_DEBUG", raising=False)
    orbax_noise.compact_orbax_logs()
    orbax_noise.compact_orbax_logs()  # (once is enough)
    assert sum(isinstance(f, orbax_noise._CompactOrbaxRecords)
               for f in logging.getLogger("absl").filters) == 1
    with caplog.at_level(logging.INFO, logger="absl"):
        logging.getLogger("absl").handle(orbax_record())
    [record] = caplog.records
    if debug:
        assert record.exc_info and SPEC in record.getMessage()
    else:
        assert record.getMessage() == "Failed: a failure" and not record.exc_info


def test_one_line_and_os_reason():
    assert orbax_noise.one_line(f"Error reading \"x\" {SPEC} [tensorstore_spec[1]='{{}}']\n"
                                "Traceback ...") == 'Error reading "x"'
    assert orbax_noise.one_line("Encountered error. See full TensorStore details: <bound "
                                "method spec of TensorStore({\n ...})>") == "Encountered error."
    assert len(orbax_noise.one_line("x" * 1000)) == 300
    tensorstore = ValueError("RESOURCE_EXHAUSTED: Failed to write 2754884 bytes to file 4: No "
                             "space left on device [os_error_code='28']")
    assert orbax_noise.os_reason(tensorstore) == "No space left on device [ENOSPC]"
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/ckpt/2/d/1")
        except OSError as e:
            raise RuntimeError("commit failed") from e
    except RuntimeError as chained:
        assert orbax_noise.os_reason(chained) == f"{os.strerror(errno.EDQUOT)} [EDQUOT]"
    assert orbax_noise.os_reason(ValueError("a bug")) is None
