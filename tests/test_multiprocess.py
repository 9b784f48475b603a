"""`flan-jax train` as 2 real processes on localhost (jax.distributed, gloo CPU collectives,
2 forced devices each = a 4-device mesh): same losses as 1 process with 4 devices, a joint
checkpoint that both resume from, and a killed peer that stops the survivor with a named
error instead of a hang."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.train.test_loop import ENV, ROOT, TINY, _losses

# LLVM -O0 halves CPU compile times; every run here compiles the same way.
FAST = "--xla_backend_optimization_level=0"
SMALL = [*TINY, "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}",
         # 2 data shards whatever the process count: 1 process reads both, 2 read one each,
         # so every run sees the same global batches.
         "--gin.DataConfig.shards=2"]
RUN_TIMEOUT = 480  # generous: 2 CPU cores shared with other test runs


def _env(devices, **extra):
    return {**ENV, **extra,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(args, env, log_dir: Path, name: str) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / f"{name}.out", "w")
    err = open(log_dir / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "flan_jax", *args], cwd=ROOT, env=env,
                            stdout=out, stderr=err, text=True)


def _train(model_dir, steps, every, extra=()):
    return ["train", *SMALL, f"--gin.train.model_dir='{model_dir}'",
            f"--gin.train.total_steps={steps}", f"--gin.train.checkpoint_every={every}", *extra]


def _start_pair(model_dir, steps, every, log_dir, name, extra=()):
    port = _free_port()
    return [_start([*_train(model_dir, steps, every, extra), "--coordinator_address",
                    f"localhost:{port}", "--num_processes", "2", "--process_id", str(i)],
                   _env(2), log_dir, f"{name}{i}") for i in range(2)]


def _finish(procs, log_dir, names, timeout=RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    try:
        for proc, name in zip(procs, names):
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, name in zip(procs, names):
        err = (log_dir / f"{name}.err").read_text()
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{err[-4000:]}"


# The pair runs the multislice mesh (a "slice" = a process here): data=2 across the
# processes, fsdp=2 inside each; the single process builds the same 2 x 2 mesh directly.
PAIR_MESH = ["--gin_file=mesh/multislice.gin"]
SAME_MESH = ["--gin.MeshConfig.data=2", "--gin.MeshConfig.fsdp=2"]


def test_two_processes_match_one_process_and_resume_together(tmp_path):
    logs, two, one = tmp_path / "logs", tmp_path / "two", tmp_path / "one"
    # The 4-device single process reference runs alongside the first half of the pair.
    ref = _start(_train(one, 4, 4, SAME_MESH), _env(4), logs, "ref")
    first = _start_pair(two, 2, 2, logs, "a", PAIR_MESH)
    _finish(first, logs, ["a0", "a1"])
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2"]
    second = _start_pair(two, 4, 2, logs, "b", PAIR_MESH)  # both restore step 2 together
    _finish([*second, ref], logs, ["b0", "b1", "ref"])

    for name in ("a0", "b0"):
        assert "done: step" in (logs / f"{name}.out").read_text()
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2", "4"]
    assert (two / "model" / "config.json").exists()  # exported by process 0 alone
    # Process 0 alone writes metrics: one record per step, steps 3-4 from the resumed run.
    records = (two / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 4
    assert "MeshConfig.dcn_data = -1" in (two / "config.gin").read_text()
    want, got = _losses(one), _losses(two)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    for step in want:
        assert abs(got[step] - want[step]) <= 1e-5 * abs(want[step]), (step, got, want)
    # Only process 0 draws the progress bar.
    assert "/4 [" in (logs / "b0.err").read_text()
    assert "/4 [" not in (logs / "b1.err").read_text()


def test_a_killed_peer_stops_the_survivor_with_a_clear_error(tmp_path):
    logs, d = tmp_path / "logs", tmp_path / "run"
    port = _free_port()
    procs = []
    for i in range(2):  # the environment-variable way of giving the coordinator
        env = _env(2, FLAN_JAX_COORDINATOR=f"localhost:{port}", FLAN_JAX_NUM_PROCESSES="2",
                   FLAN_JAX_PROCESS_ID=str(i), FLAN_JAX_HEARTBEAT_TIMEOUT="10")
        procs.append(_start(_train(d, 1000, 1000, ["--gin.train.step_timeout=30"]), env,
                            logs, f"k{i}"))
    survivor, victim = procs
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        metrics = d / "train" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert survivor.poll() is None and victim.poll() is None, \
                (logs / "k0.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the pair never got through 2 steps"
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor.wait(timeout=150)
        took = time.monotonic() - killed
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = (logs / "k0.err").read_text()
    assert survivor.returncode != 0, err[-3000:]
    assert took < 120, f"the survivor needed {took:.0f}s to stop"
    assert ("StepTimeoutError" in err or "another task died" in err
            or "detected fatal errors" in err), err[-3000:]
    assert os.path.exists(d / "config.gin")


# --- flags, environment and the watchdog (no second process needed) ------------------------


def test_flags_win_over_environment_and_partial_settings_fail_by_name():
    from flan_jax import cli, distributed

    env = {"FLAN_JAX_COORDINATOR": "h0:1234", "FLAN_JAX_NUM_PROCESSES": "4",
           "FLAN_JAX_PROCESS_ID": "3", "FLAN_JAX_HEARTBEAT_TIMEOUT": "15"}
    args = cli.build_parser().parse_args(["train", "--process_id", "2"])
    cfg = distributed.config_from(args, env)
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("h0:1234", 4, 2)
    assert cfg.heartbeat_timeout == 15 and cfg.init_timeout == 300
    nothing = distributed.config_from(cli.build_parser().parse_args(["train"]), {})
    assert not nothing.explicit and not distributed.initialize(nothing, environ={})
    try:
        distributed.config_from(cli.build_parser().parse_args(
            ["train", "--coordinator_address", "h0:1"]), {})
    except distributed.DistributedError as e:
        assert "--num_processes" in str(e) and "FLAN_JAX_NUM_PROCESSES" in str(e)
    else:
        raise AssertionError("a coordinator without a process count was accepted")
    for bad, name in (({"FLAN_JAX_PROCESS_ID": "x"}, "FLAN_JAX_PROCESS_ID"),
                      ({"FLAN_JAX_COORDINATOR": "h0", "FLAN_JAX_NUM_PROCESSES": "2",
                        "FLAN_JAX_PROCESS_ID": "0"}, "HOST:PORT"),
                      ({"FLAN_JAX_COORDINATOR": "h0:1", "FLAN_JAX_NUM_PROCESSES": "2",
                        "FLAN_JAX_PROCESS_ID": "2"}, "--process_id=2")):
        try:
            distributed.config_from(None, bad)
        except distributed.DistributedError as e:
            assert name in str(e)
        else:
            raise AssertionError(bad)
    slurm = {k: "1" for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                              "SLURM_PROCID", "SLURM_LOCALID")}
    assert distributed.detected_cluster(slurm) == "SLURM"
    assert distributed.detected_cluster({"OMPI_MCA_orte_hnp_uri": "x"}) == "Open MPI"


def test_step_watchdog_exits_with_a_named_error():
    code = ("import time; from flan_jax.distributed import StepWatchdog\n"
            "w = StepWatchdog(1.0); w.beat(7); time.sleep(60)")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert time.monotonic() - start < 50
    assert "StepTimeoutError: no progress for 1s after step 7" in proc.stderr
