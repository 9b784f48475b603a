"""Multi-host runs on JAX's own runtime: `jax.distributed.initialize` for the entry points.

`flan-jax train | eval | infer` call `initialize(config_from(args))` before any JAX backend
use. Where the cluster can be recognised (a Cloud TPU VM slice, a SLURM `srun` step, Open
MPI's `mpirun`) JAX finds the coordinator, process count and id itself; elsewhere give them
as flags or environment variables (flags win):

    --coordinator_address HOST:PORT   FLAN_JAX_COORDINATOR      process 0's address, any free port
    --num_processes N                 FLAN_JAX_NUM_PROCESSES    processes in the run (hosts)
    --process_id I                    FLAN_JAX_PROCESS_ID       this process, 0 .. N-1
    --distributed auto|on|off         FLAN_JAX_DISTRIBUTED      auto: initialize when the above
                                                                are given or a cluster is seen
    --heartbeat_timeout S             FLAN_JAX_HEARTBEAT_TIMEOUT  seconds without a peer's
                                                                heartbeat before it counts as dead
    --init_timeout S                  FLAN_JAX_INIT_TIMEOUT     seconds to wait for every peer
                                                                to join at the start

A peer that dies makes the others fail instead of waiting forever: a collective with it
errors once its sockets close, JAX's coordination service declares it dead after
`heartbeat_timeout` seconds without a heartbeat (and ends the survivors), and the training
loop's step watchdog (`train.step_timeout`) names the step that stalled.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
ENV = {
    "coordinator_address": "FLAN_JAX_COORDINATOR",
    "num_processes": "FLAN_JAX_NUM_PROCESSES",
    "process_id": "FLAN_JAX_PROCESS_ID",
    "mode": "FLAN_JAX_DISTRIBUTED",
    "heartbeat_timeout": "FLAN_JAX_HEARTBEAT_TIMEOUT",
    "init_timeout": "FLAN_JAX_INIT_TIMEOUT",
}
# Markers of launchers whose settings `jax.distributed.initialize()` reads by itself.
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_OPEN_MPI = "OMPI_MCA_orte_hnp_uri"
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
_TPU_DEVICES = ("/dev/accel0", "/dev/vfio/0")


class DistributedError(RuntimeError):
    """A multi-process setting that can't work; the message names the flag or variable."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run; all None means "let JAX detect it"."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    mode: str = "auto"
    heartbeat_timeout: int = 100
    init_timeout: int = 300

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DistributedError(f"--distributed={self.mode!r}: choose one of {MODES}")
        given = [self.coordinator_address, self.num_processes, self.process_id]
        if any(v is not None for v in given) and any(v is None for v in given):
            raise DistributedError(
                "give all of --coordinator_address, --num_processes and --process_id "
                f"(or {ENV['coordinator_address']}, {ENV['num_processes']}, "
                f"{ENV['process_id']}), or none of them to let JAX detect the cluster; "
                f"got coordinator_address={self.coordinator_address!r}, "
                f"num_processes={self.num_processes!r}, process_id={self.process_id!r}")
        if self.num_processes is not None:
            if self.num_processes < 1:
                raise DistributedError(f"--num_processes={self.num_processes}: must be >= 1")
            if not 0 <= self.process_id < self.num_processes:
                raise DistributedError(f"--process_id={self.process_id}: must be in "
                                       f"0..{self.num_processes - 1}")
        if self.coordinator_address is not None and ":" not in self.coordinator_address:
            raise DistributedError(f"--coordinator_address={self.coordinator_address!r}: "
                                   "expected HOST:PORT")
        for name in ("heartbeat_timeout", "init_timeout"):
            if getattr(self, name) < 1:
                raise DistributedError(f"--{name}={getattr(self, name)}: must be >= 1 second")

    @property
    def explicit(self) -> bool:
        return self.coordinator_address is not None


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of train / eval / infer (defaults come from the environment)."""
    g = parser.add_argument_group(
        "multi-process (TPU pod slices, several GPU hosts; see docs/tpu_pods.md, docs/gpus.md)")
    g.add_argument("--coordinator_address", metavar="HOST:PORT",
                   help=f"process 0's address and a free port (env {ENV['coordinator_address']}"
                        "; not needed on Cloud TPU or under SLURM srun)")
    g.add_argument("--num_processes", type=int, metavar="N",
                   help=f"number of processes (env {ENV['num_processes']})")
    g.add_argument("--process_id", type=int, metavar="I",
                   help=f"this process's index, 0..N-1 (env {ENV['process_id']})")
    g.add_argument("--distributed", choices=MODES,
                   help="initialize jax.distributed: 'auto' (default) when the three flags "
                        "above are given or a TPU slice / SLURM / Open MPI launch is detected; "
                        f"'on' always (JAX detects the cluster); 'off' never (env "
                        f"{ENV['mode']})")
    g.add_argument("--heartbeat_timeout", type=int, metavar="SECONDS",
                   help="a peer silent this long is declared dead and the run stops (default "
                        f"100; env {ENV['heartbeat_timeout']})")
    g.add_argument("--init_timeout", type=int, metavar="SECONDS",
                   help="how long to wait for all processes to join (default 300; env "
                        f"{ENV['init_timeout']})")


def config_from(args: argparse.Namespace | None = None,
                environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Flags (when set) over FLAN_JAX_* environment variables over defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in dataclasses.fields(DistributedConfig):
        flag = "distributed" if field.name == "mode" else field.name
        value = getattr(args, flag, None) if args is not None else None
        if value is None and environ.get(ENV[field.name]):
            raw = environ[ENV[field.name]]
            if field.name in ("coordinator_address", "mode"):
                value = raw
            else:
                try:
                    value = int(raw)
                except ValueError:
                    raise DistributedError(f"{ENV[field.name]}={raw!r}: expected an integer") \
                        from None
        if value is not None:
            values[field.name] = value
    return DistributedConfig(**values)


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher JAX can read the process layout from, by its environment, or None."""
    environ = os.environ if environ is None else environ
    if all(k in environ for k in _SLURM_STEP):
        return "SLURM"
    if _OPEN_MPI in environ:
        return "Open MPI"
    if any(k in environ for k in _TPU_ENV):
        return "Cloud TPU"
    if any(os.path.exists(p) for p in _TPU_DEVICES) and _has_libtpu():
        return "Cloud TPU"
    return None


def _has_libtpu() -> bool:
    """TPU VMs have jax[tpu]'s libtpu; /dev/vfio alone is also found on other hosts."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def initialize(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> bool:
    """Joins the multi-process run `cfg` describes; False (and nothing done) for a single
    process. Must run before anything touches a JAX backend (devices, arrays, jit)."""
    import jax

    if cfg.mode == "off":
        return False
    cluster = detected_cluster(environ)
    if cfg.mode == "auto" and not cfg.explicit and cluster is None:
        return False
    if cfg.explicit and cfg.num_processes == 1:
        return False
    how = (f"process {cfg.process_id} of {cfg.num_processes}, coordinator "
           f"{cfg.coordinator_address}" if cfg.explicit else f"detected {cluster or 'cluster'}")
    log.info("jax.distributed.initialize: %s", how)
    try:
        jax.distributed.initialize(
            cfg.coordinator_address, num_processes=cfg.num_processes,
            process_id=cfg.process_id, initialization_timeout=cfg.init_timeout,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"jax.distributed.initialize failed ({how}): {e}. Check that every process was "
            f"started with the same --coordinator_address / --num_processes, distinct "
            f"--process_id, and that process 0 is reachable (waited up to "
            f"--init_timeout={cfg.init_timeout}s)") from e
    log.info("joined: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


class StepTimeoutError(RuntimeError):
    """A train step made no progress for `train.step_timeout` seconds (a peer likely died)."""


class StepWatchdog:
    """Ends the process when the loop stops making progress for `timeout` seconds.

    A process blocked in a collective whose peer is gone may never return to Python, so
    the error can't be raised in the main thread: a daemon thread prints a named
    `StepTimeoutError` to stderr and exits with status `EXIT_CODE`. `beat(step)` after each
    step rearms it; the first step (compilation) is not timed. `timeout=None` disables it.
    """

    EXIT_CODE = 3

    def __init__(self, timeout: float | None, *, command: str = "train") -> None:
        import threading

        self.timeout, self.command = timeout, command
        self._last: float | None = None
        self._step = 0
        self._done = threading.Event()
        self._thread = None
        if timeout is not None:
            if timeout <= 0:
                raise DistributedError(f"train.step_timeout={timeout}: must be > 0 seconds")
            self._thread = threading.Thread(target=self._watch, name="step-watchdog",
                                            daemon=True)
            self._thread.start()

    def beat(self, step: int) -> None:
        import time

        self._step, self._last = step, time.monotonic()

    def pause(self) -> None:
        """Stops timing until the next `beat` (for work that isn't a step: eval, export)."""
        self._last = None

    def close(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        import sys
        import time

        while not self._done.wait(min(1.0, self.timeout / 4)):
            last = self._last
            if last is None or time.monotonic() - last <= self.timeout:
                continue
            import jax
            error = StepTimeoutError(
                f"no progress for {self.timeout:g}s after step {self._step} on process "
                f"{jax.process_index()} of {jax.process_count()}: a peer process has likely "
                "died or hung (check its log); exiting so the job can be restarted, it "
                "resumes from the last checkpoint. Raise train.step_timeout if steps are "
                "this slow.")
            print(f"flan-jax {self.command}: error: StepTimeoutError: {error}",
                  file=sys.stderr, flush=True)
            os._exit(self.EXIT_CODE)
