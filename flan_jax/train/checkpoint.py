"""Train checkpoints: the (sharded) train state and the data position in one orbax step.

Each step directory `<dir>/<step>/` holds three orbax items: `state` (any pytree of jax
arrays, saved with `StandardSave`, restored into the shardings and dtypes of an abstract tree),
`data_position` (a small JSON dict, e.g. `{"batches": 1234, "seed": 0}`) and `metadata` (JSON:
the flan-jax version and whatever the caller passes, e.g. the gin config name).

Saves are atomic: orbax writes `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only
once everything is on disk, so a killed save leaves a tmp directory that is never listed and
is removed when the next `Checkpointer` opens the directory. A save that fails (disk full)
is raised as `CheckpointError` at the next `maybe_save` / `check_for_errors` call, and its
tmp directory removed.

Checksums: once a step is final, every process records the CRC-32 of its share of the step's
files (`flan_jax.train.checksums`), in the background; a restore checks them first, so a
damaged step is set aside before orbax reads a byte of it. Steps without a record (older
flan-jax, or killed before recording) restore unverified, with one log line.

Stopping on SIGTERM (preemption), the protocol the training loop follows::

    with Checkpointer(workdir / "checkpoints", save_every=1000, keep=3) as ckpt:
        ckpt.install_sigterm_handler()
        for step in range(start + 1, total_steps + 1):
            state, metrics = train_step(state, next(batches))
            stop = ckpt.should_stop(step)          # every step, on every process
            ckpt.maybe_save(step, state, position(step), force=stop or step == total_steps)
            # (maybe_save also raises a failed async save of an earlier step, at once)
            if stop:
                break                              # `close()` waits for the save
    # exit normally (status 0): the scheduler restarts the job, which resumes from `step`.

The handler only sets a flag; nothing is saved inside it. With several processes, SIGTERM
belongs to JAX's preemption service (started by `jax.distributed.initialize`), and
`should_stop(step)` asks it whether all processes have reached the same safe step, so they
all save that step together.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import flan_jax
from flan_jax.faults import kill_point
from flan_jax.errors import CheckpointError
from flan_jax.parallel import path_str
from flan_jax.train import checksums, orbax_noise

log = logging.getLogger(__name__)

STATE = "state"
DATA_POSITION = "data_position"
METADATA = "metadata"
DAMAGED_SUFFIX = ".damaged"


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's arrays have other shapes or names than the state being restored.

    `mismatches`: (path, stored shape, expected shape) for every differing array; paths as
    "opt_state/0/v/encoder/...". `missing`: the state's paths the checkpoint lacks;
    `unexpected`: the checkpoint's paths the state lacks (e.g. a LoRA run's adapters)."""

    def __init__(self, message: str, mismatches: list[tuple[str, tuple, tuple]], *,
                 missing: list[str] = (), unexpected: list[str] = ()) -> None:
        super().__init__(message)
        self.mismatches = mismatches
        self.missing, self.unexpected = list(missing), list(unexpected)


class Checkpointer:
    """An orbax `CheckpointManager` for train state + data position, keeping the last `keep`.

    `save_every`: `maybe_save(step, ...)` saves when `step % save_every == 0` (or `force`).
    `async_save`: `save` returns once the arrays are copied off the device (so the train step
    may donate or overwrite them) and the files are written by a background thread; `wait()`
    blocks until it has finished and re-raises its error if it failed.
    `metadata`: small JSON-able fields stored with every step (e.g. the gin config name).

    A failed async save is raised as `CheckpointError` (step, path, OS reason) by the first
    of `maybe_save`, `check_for_errors`, `save`, `wait` or `close` that runs after it failed:
    with `maybe_save` called every step, that is the step after.
    """

    def __init__(self, directory: str | os.PathLike[str], *, save_every: int, keep: int,
                 async_save: bool = True, metadata: Mapping[str, Any] | None = None) -> None:
        if save_every < 1:
            raise ValueError(f"Checkpointer save_every={save_every}: must be >= 1")
        if keep < 1:
            raise ValueError(f"Checkpointer keep={keep}: must be >= 1")
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        self._async_save = async_save
        self._metadata = {"flan_jax_version": flan_jax.__version__, **(metadata or {})}
        _check_json(self._metadata, "Checkpointer metadata")
        options = ocp.CheckpointManagerOptions(
            # `max_to_keep` (not the newer `preservation_policy=LatestN`, which orbax 0.11.0
            # lacks): same behaviour, every orbax version we admit.
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # half-written steps of a killed run
            create=True,
        )
        # Items are typed by the args of each call (orbax's default handler registry).
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        orbax_noise.compact_orbax_logs()
        self._saving: int | None = None  # the step an unfinished (or unchecked) save writes
        self._recorder = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="flan_jax_checksums")
        self._recording: tuple[int, concurrent.futures.Future] | None = None
        self._unverified_logged: set[int] = set()
        self._stop = threading.Event()
        self._stop_logged = False
        self._previous_handler: Any = None

    # -- saving --------------------------------------------------------------------------

    def maybe_save(self, step: int, state: Any,
                   data_position: Mapping[str, Any] | Callable[[], Mapping[str, Any]], *,
                   force: bool = False) -> bool:
        """Saves when `step` is a multiple of `save_every` or `force`; True if it saved.
        A step that is already saved (e.g. a forced save right after a periodic one) is
        skipped. `data_position` may be a function, called only when saving.
        Raises `CheckpointError` if an earlier async save has failed since the last call."""
        self.check_for_errors()
        if not force and step % self.save_every:
            return False
        if step == self._manager.latest_step():
            return False
        return self.save(step, state, data_position() if callable(data_position)
                         else data_position)

    def save(self, step: int, state: Any, data_position: Mapping[str, Any]) -> bool:
        """Starts saving `state` and `data_position` as `step` (async unless disabled);
        first waits for the previous save, raising `CheckpointError` if that failed."""
        _check_json(data_position, "data_position")
        self.wait()
        latest = self._manager.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(
                f"{self.directory}: cannot save step {step}, the directory already has step "
                f"{latest}; a run resumed from an older step would mix two histories "
                f"(move the newer steps away or use a fresh directory)")
        self._saving = step
        try:
            saved = self._manager.save(step, force=True, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(state),
                DATA_POSITION: ocp.args.JsonSave(dict(data_position)),
                METADATA: ocp.args.JsonSave(self._metadata)}))
            kill_point("during_save")  # (tests: a real SIGKILL while the save is written)
        except Exception as e:  # a synchronous part (or all of a sync save) failed
            self._saving = None
            if orbax_noise.os_reason(e) is None:
                raise  # not I/O: a bug, or a state orbax can't save; its own words
            raise self._save_failed(step, e) from e
        if not saved:
            self._saving = None
        elif not self._async_save:  # done: its checksums too, before returning
            self._finish_save()
            self._check_recording(block=True)
        return saved

    def check_for_errors(self) -> None:
        """Non-blocking, cheap enough for every step: raises `CheckpointError` if the last
        async save failed; once it has succeeded, starts recording its checksums."""
        if self._saving is not None and not self._manager.is_saving_in_progress():
            self._finish_save()
        self._check_recording(block=False)

    def wait(self) -> None:
        """Blocks until an async save and its checksums are written; raises
        `CheckpointError` if the save failed."""
        if self._saving is not None:
            self._finish_save()
        else:
            self._manager.wait_until_finished()
        self._check_recording(block=True)

    def close(self) -> None:
        """Waits for pending saves (raising `CheckpointError` if the last one failed),
        releases orbax's threads, restores the SIGTERM handler."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            finally:
                self._recorder.shutdown(wait=True)
                self.uninstall_sigterm_handler()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- listing and restoring -----------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Saved steps, oldest first: finished ones, plus an async save this process has
        started (it is dropped again if it fails). A killed save is never listed."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_metadata(self, step: int) -> dict[str, Any]:
        """The `metadata` fields saved with `step` (plus `flan_jax_version`)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            METADATA: ocp.args.JsonRestore()}))
        return dict(restored[METADATA])

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[int, Any, dict[str, Any]]:
        """(step, state, data_position) of `step`, or of the newest usable checkpoint.

        `abstract_state` is the state's tree of `jax.ShapeDtypeStruct`s whose `.sharding`
        and dtype the arrays are restored into (concrete arrays are accepted too).
        Each step's files are first checked against their recorded checksums (once per
        restore, streamed; with several processes each checks its share and all agree).
        Without `step`, a checkpoint that fails that check or fails to restore (missing or
        truncated files) is logged as a short warning, renamed to `<step>.damaged-<time>`
        once an older one restored (so the run can write that step again; nothing is
        deleted) and the next older one is tried. If none restores, `CheckpointError` lists
        every step and its error. Arrays of other shapes than `abstract_state`'s in the
        newest sound (or given) step are no damage but another setup:
        `CheckpointMismatchError` at once, nothing renamed.
        """
        abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        self.wait()
        self._manager.reload()  # the directory may have changed since we opened it
        if step is not None:
            try:
                self._verify(step)
            except _Damaged as e:
                raise CheckpointError(f"{self._step_dir(step)}: cannot restore checkpoint "
                                      f"({e})") from None
            self._check_shapes(step, abstract_state)
            try:
                return (step, *self._restore_step(step, abstract_state))
            except Exception as e:  # orbax/tensorstore raise many types
                raise CheckpointError(f"{self._step_dir(step)}: cannot restore checkpoint "
                                      f"({orbax_noise.short(e)})") from e
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"{self.directory}: no finished checkpoint to restore")
        failures: list[tuple[int, str]] = []  # messages only: tracebacks pin orbax's reads
        shapes_checked = False  # on the newest step whose files are sound
        for candidate in reversed(steps):
            try:
                self._verify(candidate)
                if not shapes_checked:
                    shapes_checked = True
                    self._check_shapes(candidate, abstract_state)
                state, position = self._restore_step(candidate, abstract_state)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # orbax/tensorstore raise many types
                error = str(e) if isinstance(e, _Damaged) else orbax_noise.short(e)
                log.warning("checkpoint %s (step %d) is damaged or unreadable, trying an "
                            "older one: %s", self._step_dir(candidate), candidate, error,
                            exc_info=orbax_noise.debug() and not isinstance(e, _Damaged))
                failures.append((candidate, error))
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
            return candidate, state, position
        tried = "\n".join(f"  {self._step_dir(s)}: {error}" for s, error in failures)
        raise CheckpointError(
            f"{self.directory}: none of the {len(failures)} checkpoints restores "
            f"(wrong abstract_state, or all damaged):\n{tried}")

    # -- stopping on SIGTERM -------------------------------------------------------------

    def install_sigterm_handler(self) -> None:
        """On SIGTERM, set the flag `should_stop` reports (single process; see module doc).
        Call from the main thread; `close()` puts the previous handler back."""
        if jax.process_count() > 1:
            log.info("SIGTERM is handled by JAX's preemption service with %d processes",
                     jax.process_count())
            return
        if self._previous_handler is None:
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            # None: a handler set outside Python, which can't be put back; use the default.
            self._previous_handler = signal.SIG_DFL if previous is None else previous

    def uninstall_sigterm_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def should_stop(self, step: int) -> bool:
        """True when the loop should save `step` and exit. Call it at every step, on every
        process (with several processes it is a collective agreement on the stop step)."""
        if jax.process_count() > 1:
            stop = self._manager.reached_preemption(step)
        else:
            stop = self._stop.is_set()
        if stop and not self._stop_logged:
            log.warning("preemption (SIGTERM): saving step %d and stopping", step)
            self._stop_logged = True
        return stop

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop.set()  # nothing else here: no I/O, no locks, no saving

    # -- helpers -------------------------------------------------------------------------

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointMismatchError if `step` stores an array under the same name as
        the state's but of another shape, or other arrays' names than the state's: written
        by another model or optimizer setup, so not damage (no older step is tried, nothing
        is moved). Unreadable metadata is left to the restore to report."""
        try:
            handler = ocp.StandardCheckpointHandler()
            try:
                stored = handler.metadata(self._step_dir(step) / STATE)
            finally:
                handler.close()
            stored_shapes = {path_str(path): tuple(leaf.shape) for path, leaf
                             in jax.tree_util.tree_flatten_with_path(stored)[0]
                             if getattr(leaf, "shape", None) is not None}
        except Exception:  # noqa: BLE001 (orbax/tensorstore raise many types)
            return
        mismatches = []
        wanted = {path_str(path): tuple(leaf.shape) for path, leaf
                  in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        for name, want in wanted.items():
            if name in stored_shapes and stored_shapes[name] != want:
                mismatches.append((name, stored_shapes[name], want))
        missing = sorted(set(wanted) - set(stored_shapes))
        unexpected = sorted(set(stored_shapes) - set(wanted))
        if mismatches or missing or unexpected:
            parts = [f"{name}: stored {have}, this run's {want}"
                     for name, have, want in mismatches[:3]]
            if len(mismatches) > 3:
                parts[-1] += f" (and {len(mismatches) - 3} more)"
            for names, what in ((missing, "of this run's arrays are not stored"),
                                (unexpected, "stored arrays are not this run's")):
                if names:
                    parts.append(f"{len(names)} {what} ({', '.join(names[:2])}"
                                 f"{', ...' if len(names) > 2 else ''})")
            raise CheckpointMismatchError(
                f"{self._step_dir(step)}: was written with another model or optimizer setup "
                f"than this run's (nothing on disk was changed): {'; '.join(parts)}",
                mismatches, missing=missing, unexpected=unexpected)

    def _finish_save(self) -> None:
        """Ends the save of step `self._saving` (over, or waited for): raises its failure,
        or starts recording its checksums in the background."""
        step, self._saving = self._saving, None
        try:
            self._manager.wait_until_finished()  # at once when orbax says it is over
            self._manager.check_for_errors()
        except Exception as e:  # orbax/tensorstore raise many types
            raise self._save_failed(step, e) from e
        self._check_recording(block=True)  # (the previous step's: done long ago)
        self._recording = (step, self._recorder.submit(
            checksums.record, self._step_dir(step), jax.process_index(), jax.process_count()))

    def _check_recording(self, *, block: bool) -> None:
        """A failed checksum record is no failed save: the step restores, unverified."""
        if self._recording is None or not (block or self._recording[1].done()):
            return
        (step, future), self._recording = self._recording, None
        try:
            future.result()
        except Exception as e:  # noqa: BLE001 (any I/O error)
            log.warning("could not record the checksums of checkpoint %s (it will restore "
                        "unverified): %s", self._step_dir(step), orbax_noise.short(e))

    def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
        """The error to raise for a failed save of `step`, once its half-written tmp dir is
        removed (it may be what filled the disk)."""
        removed = []
        if jax.process_index() == 0:
            # orbax's name for an unfinished step (`<step>.orbax-checkpoint-tmp`, with a
            # timestamp suffix in older versions); it has no public helper for it.
            for tmp in sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp.name)
        reason = orbax_noise.os_reason(error) or orbax_noise.short(error)
        previous = [s for s in self._manager.all_steps() if s < step]
        kept = (f"the previous checkpoint {self._step_dir(max(previous))} is intact"
                if previous else "there is no earlier checkpoint")
        gone = f"; the half-written {', '.join(removed)} was removed" if removed else ""
        return CheckpointError(f"{self._step_dir(step)}: saving checkpoint step {step} "
                               f"failed: {reason} ({kept}{gone})")

    def _verify(self, step: int) -> None:
        """Raises `_Damaged` naming the files of `step` that differ from their checksums;
        logs, once per step, what could not be checked. Collective with several processes:
        each checks its share, and all raise if any found damage."""
        step_dir = self._step_dir(step)
        result = checksums.verify(step_dir, jax.process_index(), jax.process_count())
        if step not in self._unverified_logged and jax.process_index() == 0:
            for note in result.unverified:  # (the same on every process)
                log.warning("checkpoint %s (step %d) restores unverified: %s", step_dir, step,
                            note)
            self._unverified_logged.add(step)
        total = len(result.damaged)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            total = int(np.sum(multihost_utils.process_allgather(np.int32(total))))
        if total:
            shown = "; ".join(f"{name}: {what}" for name, what in result.damaged[:3])
            others = total - len(result.damaged)
            if len(result.damaged) > 3:
                shown += f" (and {len(result.damaged) - 3} more)"
            if others:
                shown += (f"{'; ' if shown else ''}{others} on other processes (see their "
                          "logs)")
            raise _Damaged(f"{total} file(s) differ from their checksums: {shown}")

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        with orbax_noise.quiet_failed_reads():
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(abstract_state),
                DATA_POSITION: ocp.args.JsonRestore()}))
        return restored[STATE], dict(restored[DATA_POSITION])

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged steps out of orbax's view; else a later save of the same step
        fails, and keep-K pruning counts them and deletes good older steps instead."""
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                src = self._step_dir(step)
                dst = src.with_name(f"{src.name}{DAMAGED_SUFFIX}-{stamp}")
                n = 1
                while dst.exists():
                    dst, n = src.with_name(f"{src.name}{DAMAGED_SUFFIX}-{stamp}-{n}"), n + 1
                if src.exists():
                    src.rename(dst)
                    log.warning("moved damaged checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("flan_jax.checkpoint.set_aside")
        self._manager.reload()


class _Damaged(Exception):
    """A step whose files differ from their recorded checksums (the message names them)."""


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable: {e}") from e
