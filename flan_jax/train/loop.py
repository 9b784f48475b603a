"""`flan-jax train`: the training loop, configured entirely by gin.

    model_dir/
      config.gin            the operative gin config of the run (what it was trained with)
      model/                the final model as a flan-jax dir (`flan-jax infer` reads it),
                            with trained_on.json: its mixture and feature converter
                            (a LoRA run: the base with the adapters merged in; a prompt-
                            tuning run: the base with its prompt, T5Config.prompt_length)
      adapters/             an adapters-only run's adapters alone (`lora.save_adapters`:
                            lora_config.json or prompt_config.json + params/)
      frozen_base.json      an adapters-only (LoRA, prompt) run's base (train.init_from)
                            fingerprint: a resume on another base is refused
      checkpoints/<step>/   orbax: train state + data position (resume is exact); an
                            adapters-only run's holds only the adapters and their
                            optimizer state
      train/                TensorBoard events + metrics.jsonl (loss, accuracy, lr, ...)
      eval/                 TensorBoard events + metrics.jsonl + step_<N>.json per eval

Everything between batches and the update runs as one jitted, sharded step; the host only
fetches metrics every `log_every` steps, so the device is never waiting for the log.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np

from flan_jax import parallel
from flan_jax.atomic import atomic_file
from flan_jax.distributed import StepWatchdog
from flan_jax.errors import ConfigError
from flan_jax.faults import kill_point
from flan_jax.model.config import RUN_FIELDS, T5Config
from flan_jax.model.lora import LoraConfig, merge_lora, save_adapters
from flan_jax.model.params import create_model, params_of
from flan_jax.train import data as data_lib
from flan_jax.train import evaluate as eval_lib
from flan_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
from flan_jax.train.metrics import MetricsWriter, ProgressBar, Throughput
from flan_jax.train.setup import RunSetup, setup_run
from flan_jax.train.step import TrainState, init_state, train_step

log = logging.getLogger(__name__)
NONFINITE = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last checkpoint."""


@dataclasses.dataclass
class RunResult:
    step: int
    model_dir: Path
    evals: dict[int, eval_lib.Results]
    stopped_early: bool = False


@gin.configurable(denylist=["progress"])
def train(*, model_dir: str = gin.REQUIRED, total_steps: int = gin.REQUIRED,
          init_from: str | None = None, seed: int = 0, microbatches: int = 1,
          dropout: bool = True, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
          evaluate: bool = True, eval_every: int = 0, eval_at_start: bool = True,
          log_every: int = 10,
          on_nonfinite: str = "stop", peak_flops_per_device: float | None = None,
          step_timeout: float | None = None, progress: bool = True) -> RunResult:
    """Trains (or resumes) a model in `model_dir` up to `total_steps`.

    `init_from`: a Hugging Face or flan-jax model directory to finetune: its config gives the
    architecture, gin the run settings (`T5Config` dropout, dtypes, remat, backend); a gin
    binding that would change a shape field is refused; its weights are read straight into
    their shardings. An adapters-only run trains only its adapters: LoRA's with
    `LoraConfig.rank` > 0 (gin/peft/lora.gin), a soft prompt with `PromptConfig.length` > 0
    (gin/peft/prompt_tuning.gin). `init_from`'s weights then stay frozen (read again on
    resume, never checkpointed), and `model/` is them with the adapters merged in (LoRA) or
    with the prompt added (a model with `T5Config.prompt_length`). With `evaluate`,
    `eval_every=0` evaluates at the start (if `eval_at_start`) and the end only.
    `on_nonfinite`: "stop" raises NonFiniteLossError, "skip" drops that update.
    `step_timeout`: seconds without a finished step (after the first) before the process exits
    with a StepTimeoutError, so a multi-host run whose peer died stops instead of hanging.
    """
    if on_nonfinite not in NONFINITE:
        raise ValueError(f"train.on_nonfinite={on_nonfinite!r}: choose one of {NONFINITE}")
    if "://" in str(model_dir):
        raise ValueError(
            f"train.model_dir={model_dir!r}: URLs (gs://, s3://) are not supported yet; mount "
            "the bucket on every host (e.g. gcsfuse, see docs/tpu_pods.md) and give its path")
    model_dir = Path(model_dir)
    # Everything gin describes is built first, so a bad binding fails before any work.
    run = setup_run(init_from)
    data_cfg, loss_cfg, eval_cfg, cfg = run.data, run.loss, run.eval, run.model_cfg
    optimizer, schedule, rules, lora = run.optimizer, run.schedule, run.rules, run.lora
    adapters = run.adapters  # None: every param trains
    if adapters is not None and init_from is None:
        raise ConfigError(f"{run.adapters_binding} trains adapters on a base model: set "
                          "train.init_from to its directory (e.g. --gin_file=runs/finetune.gin)")
    if init_from is not None:
        log.info("finetuning %s (%s, %d+%d layers) with %s", init_from, cfg.feed_forward,
                 cfg.num_encoder_layers, cfg.num_decoder_layers,
                 ", ".join(f"{k}={getattr(cfg, k)!r}" for k in RUN_FIELDS))
    if adapters is not None:
        log.info("training %s; the base weights are frozen", adapters.describe())
    mesh = parallel.make_mesh(run.mesh)
    graphdef = _graphdef(run.abstract_model)
    abstract_params = run.abstract_params
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    _check_model_dir(model_dir, _bytes(abstract_params) + _bytes(abstract_opt))
    created = not model_dir.exists()  # (removed again if the run fails before it starts)
    model_dir.mkdir(parents=True, exist_ok=True)

    p_shard = parallel.param_shardings(abstract_params, run.param_axes, rules, mesh)
    o_shard = parallel.optimizer_state_shardings(abstract_opt, abstract_params, p_shard)
    rep = parallel.replicated(mesh)
    state_shard = TrainState(step=rep, params=p_shard, opt_state=o_shard)
    batch_shard = parallel.batch_sharding(mesh, rules)
    frozen_shard = None if adapters is None else parallel.param_shardings(
        run.abstract_frozen, run.frozen_axes, rules, mesh)

    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                          loss_cfg=loss_cfg, schedule=schedule, microbatches=microbatches,
                          dropout_seed=seed if dropout and (cfg.dropout_rate > 0
                                                            or lora.dropout > 0) else None,
                          skip_nonfinite=on_nonfinite == "skip"),
        in_shardings=(state_shard, batch_shard, *([] if adapters is None else [frozen_shard])),
        out_shardings=(state_shard, rep), donate_argnums=0)

    ckpt = Checkpointer(model_dir / "checkpoints", save_every=checkpoint_every,
                        keep=keep_checkpoints)
    reader = None
    try:
        if adapters is not None:  # (before any of the base is read)
            _check_base(model_dir, init_from, resuming=ckpt.latest_step() is not None)
        start, state, position, frozen = _initial_state(ckpt, run, seed, init_from,
                                                        state_shard, frozen_shard)
        frozen_args = () if frozen is None else (frozen,)  # the step's third argument
        # Before the config is written and the step-0 eval: a bad mixture name, a missing
        # file or another saved stream fails here, before any work.
        reader = data_lib.make_reader(data_cfg, saved=position,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
        # A run killed after its last checkpoint but before its final eval or export: the
        # rerun finishes it.
        final_eval = model_dir / "eval" / f"step_{total_steps}.json"
        need_eval = evaluate and not final_eval.exists()
        need_export = not (model_dir / "model" / "config.json").exists() or (
            adapters is not None
            and not (model_dir / "adapters" / adapters.CONFIG_FILE).exists())
        finishing = start == total_steps and (need_eval or need_export)
        # (seqio reads every eval example now: a bad validation row fails here too)
        evaluator = (eval_lib.Evaluator(eval_cfg, data_cfg.mixture_or_task_name,
                                        data_cfg.module_imports, data_cfg.feature_converter)
                     if evaluate and (start < total_steps or finishing) else None)
    except BaseException:
        if reader is not None:
            reader.close()
        ckpt.close()  # (its background threads would otherwise outlive the error noisily)
        if created and jax.process_index() == 0:  # a run that never started leaves nothing
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
    # Only now: a resume refused for other settings keeps the config.gin that wrote the run.
    if jax.process_index() == 0:
        with atomic_file(model_dir / "config.gin") as f:
            f.write(gin.operative_config_str() or gin.config_str())
    if start >= total_steps and not finishing:
        log.info("%s is already at step %d >= total_steps=%d", model_dir, start, total_steps)
    elif finishing:
        log.info("%s is at step %d but lacks its %s: completing them", model_dir, start,
                 " and ".join(x for x, need in (("final eval", need_eval),
                                                ("model/ export", need_export)) if need))
    throughput = Throughput.for_model(  # (the encoder runs over the prompt too)
        cfg, data_cfg.batch_size, data_cfg.task_feature_lengths["inputs"] + cfg.prompt_length,
        data_cfg.task_feature_lengths["targets"], peak_flops_per_device=peak_flops_per_device,
        lora=lora, frozen_base=adapters is not None)
    result = RunResult(step=start, model_dir=model_dir, evals={})
    # A resumed run logs each step once: what the killed run logged after `start` goes (and
    # the eval of `start` itself when it is redone: step 0, or a final eval being finished).
    redo_eval = (start == 0 and eval_at_start) or (finishing and need_eval)
    train_writer = MetricsWriter(model_dir / "train", resume_step=start)
    eval_writer = MetricsWriter(model_dir / "eval",
                                resume_step=start - 1 if redo_eval else start)

    def run_eval(step: int) -> None:
        if evaluator is None:
            return
        watchdog.pause()
        model = _merge(graphdef, state.params, frozen)
        results = evaluator(model, step)
        result.evals[step] = results
        eval_writer.write_scalars(step, eval_lib.summary(results))
        if jax.process_index() == 0:
            eval_lib.write_json(results, model_dir / "eval" / f"step_{step}.json")
        eval_writer.flush()

    ckpt.install_sigterm_handler()
    bar = ProgressBar(total_steps, initial_step=start, disable=not progress)
    watchdog = StepWatchdog(step_timeout)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    window_start, window_tokens = time.perf_counter(), 0
    try:
        if start == 0 and eval_at_start and start < total_steps:
            run_eval(0)
        step = start
        while step < total_steps:
            local = next(reader)
            window_tokens += int(np.sum(local["decoder_loss_weights"] > 0)) * jax.process_count()
            state, metrics = step_fn(state, parallel.global_batch(local, mesh, rules),
                                     *frozen_args)
            step += 1
            pending.append((step, metrics))
            stop = ckpt.should_stop(step)
            saving = stop or step == total_steps or step % checkpoint_every == 0
            if step % log_every == 0 or saving:  # never save a step not checked finite
                fetched = jax.device_get(pending)
                pending.clear()
                _check_finite(fetched, ckpt, on_nonfinite)
                now = time.perf_counter()
                rates = throughput(steps=len(fetched), tokens=window_tokens,
                                   seconds=max(now - window_start, 1e-9))
                window_start, window_tokens = now, 0
                last = fetched[-1][1]
                train_writer.write_scalars(step, {**{k: float(v) for k, v in last.items()},
                                                  **rates})
                bar.update(step, loss=float(last["loss"]), tokens_per_s=rates["tokens_per_s"],
                           mfu=rates.get("mfu"))
            ckpt.maybe_save(step, state,
                            lambda: data_lib.reader_position(reader, data_cfg,
                                                             jax.process_count()),
                            force=stop or step == total_steps)
            if eval_every and step % eval_every == 0 and step != total_steps:
                run_eval(step)
            if stop:
                result.stopped_early = True
                break
            watchdog.beat(step)
        result.step = step
        watchdog.pause()
        if not result.stopped_early and step == total_steps and (step > start or finishing):
            if step > start or need_eval:
                run_eval(step)
            ckpt.wait()
            if step > start or need_export:
                kill_point("before_export")  # (tests: a real SIGKILL after the checkpoint)
                params = state.params
                if adapters is not None:
                    _on_process_0(state.params, lambda host, alone: save_adapters(
                        model_dir / "adapters", adapters, host, base=str(init_from),
                        overwrite=True, alone=alone), "adapters")
                if isinstance(adapters, LoraConfig):
                    params = jax.jit(functools.partial(merge_lora, cfg=lora),
                                     out_shardings=frozen_shard)(frozen, state.params)
                elif adapters is not None:  # a prompt: the base plus it (cfg has its length)
                    params = {**frozen, **state.params}
                _export(model_dir / "model", cfg, params, data_cfg)
    finally:
        watchdog.close()
        reader.close()  # release workers / the tf.data iterator before exit (can hang)
        bar.close()
        ckpt.close()
        train_writer.close()
        eval_writer.close()
    return result


def _graphdef(abstract):
    from flax import nnx
    return nnx.graphdef(abstract)


def _merge(graphdef, params, frozen=None):
    from flax import nnx
    return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, frozen, params)


def _initial_state(ckpt: Checkpointer, run: RunSetup, seed: int, init_from: str | None,
                   state_shard: TrainState, frozen_shard: Any
                   ) -> tuple[int, TrainState, dict[str, Any] | None, Any]:
    """(step, state, data position, frozen params): restored from the latest good
    checkpoint, else fresh: `init_from`'s weights read straight into their shardings, or
    initialised from `seed`. An adapters-only run's state is its adapters (fresh:
    `run.initial_adapters`: LoRA's B zero, a prompt of the base's embeddings) and its frozen
    params `init_from`'s, read every time; otherwise nothing is frozen (None)."""
    from flan_jax.model.io import load_sharded
    cfg, optimizer, only_adapters = run.model_cfg, run.optimizer, run.adapters is not None
    frozen = load_sharded(init_from, run.base_cfg, frozen_shard) if only_adapters else None

    def fresh(frozen) -> TrainState:
        if only_adapters:
            return init_state(run.initial_adapters(frozen, seed), optimizer)
        return init_state(params_of(create_model(cfg, seed)), optimizer)

    if ckpt.latest_step() is None:
        if init_from is None or only_adapters:
            return 0, jax.jit(fresh, out_shardings=state_shard)(frozen), None, frozen
        params = load_sharded(init_from, cfg, state_shard.params)
        opt_state = jax.jit(optimizer.init, out_shardings=state_shard.opt_state)(params)
        step = jax.device_put(np.zeros((), np.int32), state_shard.step)
        return 0, TrainState(step, params, opt_state), None, None
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(fresh, frozen), state_shard)
    try:
        step, restored, position = ckpt.restore(abstract.as_dict())
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{e}\n{_mismatch_hint(e, ckpt.directory.parent)}",
                                      e.mismatches, missing=e.missing,
                                      unexpected=e.unexpected) from None
    log.info("resumed from %s at step %d", ckpt.directory / str(step), step)
    return step, TrainState.from_dict(restored), position, frozen


def _mismatch_hint(error: CheckpointMismatchError, model_dir: Path) -> str:
    """Which gin setting most likely differs from the run that wrote the checkpoint."""
    if any("/lora/" in name for name in error.unexpected):
        return ("It holds a LoRA run's adapters: resume with the LoraConfig bindings of "
                f"{model_dir / 'config.gin'} (e.g. --gin_file=peft/lora.gin).")
    if any("/lora/" in name for name in error.missing):
        return ("This run trains LoRA adapters (LoraConfig.rank > 0) but it holds a full "
                "run's state: train in a fresh model_dir, or drop the LoRA bindings.")
    prompt_stored, prompt_wanted = ("params/prompt" in error.unexpected,
                                    "params/prompt" in error.missing)
    if prompt_stored and not prompt_wanted:
        return ("It holds a prompt-tuning run's soft prompt: resume with the PromptConfig "
                f"bindings of {model_dir / 'config.gin'} "
                "(e.g. --gin_file=peft/prompt_tuning.gin).")
    if prompt_wanted and not prompt_stored:
        return ("This run trains a soft prompt (PromptConfig.length > 0) but it holds another "
                "run's state: train in a fresh model_dir, or drop the PromptConfig bindings.")
    if not error.missing and not error.unexpected and all(
            name.startswith("opt_state/") and math.prod(have) == math.prod(want)
            for name, have, want in error.mismatches):
        stored_3d = all(len(have) > len(want) for _, have, want in error.mismatches)
        return ("Only the optimizer state's layout differs: the checkpoint's Adafactor saw "
                f"attention kernels {'as stored' if stored_3d else 'in t5x 2-D shapes'}. "
                "Resume with --gin.make_optimizer.adafactor_factor_like_t5x="
                f"{not stored_3d} (the setting that wrote it).")
    return (f"Resume with the model and optimizer bindings of {model_dir / 'config.gin'} "
            "(saved by the run that wrote it), or train in a fresh model_dir.")


def _bytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _check_model_dir(model_dir: Path, checkpoint_bytes: int) -> None:
    """Refuses a model_dir that can't be written, or whose disk can't hold one more
    checkpoint, before anything is built or written (the error names the binding)."""
    existing = model_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"train.model_dir={str(model_dir)!r}: {existing} is a file, not a "
                          "directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.model_dir={str(model_dir)!r}: {existing} is not writable "
                          "(Permission denied); choose another model_dir")
    free = shutil.disk_usage(existing).free
    if free < checkpoint_bytes:
        raise ConfigError(
            f"train.model_dir={str(model_dir)!r}: {free / 2**30:.2f} GiB free on its disk, "
            f"but one checkpoint (params + optimizer state) takes {checkpoint_bytes / 2**30:.2f}"
            " GiB; free some space or choose another model_dir")


def _check_finite(fetched: list[tuple[int, dict[str, Any]]], ckpt: Checkpointer,
                  on_nonfinite: str) -> None:
    for step, metrics in fetched:
        loss = float(metrics["loss"])
        if math.isfinite(loss):
            continue
        if on_nonfinite == "skip":
            log.warning("step %d: loss %s, update skipped", step, loss)
            continue
        last = ckpt.latest_step()
        where = (f"the last good checkpoint is {ckpt.directory / str(last)}" if last is not None
                 else "no checkpoint was saved yet")
        raise NonFiniteLossError(
            f"step {step}: loss is {loss}; stopping ({where}). Lower the learning rate, or "
            f"bind train.on_nonfinite='skip' to drop such updates.")


def _export(path: Path, cfg: T5Config, params: Any, data: data_lib.DataConfig) -> None:
    """The final model as a flan-jax dir with `eval_lib.TRAINED_ON` (what it trained on, so
    `flan-jax infer` / `eval` prompt it as it trained), written by process 0 in one atomic
    rename (every process must call)."""
    from flan_jax.model.io import save_pretrained

    def record(tmp: Path) -> None:
        eval_lib.write_trained_on(tmp, data)
        _write_vocabulary(tmp, data)

    _on_process_0(params, lambda host, alone: save_pretrained(
        path, cfg, host, overwrite=True, alone=alone, extra=record), "export")


def _write_vocabulary(directory: Path, data: data_lib.DataConfig) -> None:
    """The mixture's vocabulary beside the model when it isn't the shipped one (a Galactica
    or T5 vocabulary), so `flan-jax infer` and the printed generations decode with it."""
    import seqio

    from flan_jax.data.vocab import write_model_file

    try:
        task = seqio.get_mixture_or_task(data.mixture_or_task_name)
    except ValueError:  # (a run whose mixture is not registered here can't have trained)
        return
    if "targets" in task.output_features:
        write_model_file(task.output_features["targets"].vocabulary, directory)


BASE_RECORD = "frozen_base.json"
OLD_BASE_RECORD = "lora_base.json"  # its name before prompt tuning shared it; still read


def _check_base(model_dir: Path, init_from: str, *, resuming: bool) -> None:
    """An adapters-only run's checkpoints hold only adapters, trained on `init_from` as it
    was: a resume on another base would continue silently wrong. The first start records the
    base's `checksums.fingerprint`; a resume must find the same files (moved is fine)."""
    from flan_jax.atomic import atomic_file
    from flan_jax.train.checksums import fingerprint
    record = model_dir / BASE_RECORD
    if not record.is_file() and (model_dir / OLD_BASE_RECORD).is_file():
        record = model_dir / OLD_BASE_RECORD
    now = {"init_from": str(init_from), "files": fingerprint(Path(init_from))}
    if resuming and record.is_file():
        then = json.loads(record.read_text())
        changed = sorted(set(then["files"]) ^ set(now["files"]) | {
            f for f in set(then["files"]) & set(now["files"])
            if then["files"][f] != now["files"][f]})
        if changed:
            raise ConfigError(
                f"train.init_from={init_from!r} is not the base model this run started "
                f"from ({then['init_from']}; {changed[0]} differs, {len(changed)} files in "
                f"all, see {record}): its adapters only fit that base. Give the original "
                "base, or a new train.model_dir to train adapters on this one")
        return
    if jax.process_index() == 0:
        with atomic_file(record) as f:
            f.write(json.dumps(now, indent=1) + "\n")


def _on_process_0(params: Any, write, what: str) -> None:
    """`write(host_params, alone)` on process 0, the params gathered from every host first
    (they may span hosts); every process must call."""
    if jax.process_count() == 1:
        write(jax.device_get(params), False)
        return
    from jax.experimental import multihost_utils
    host = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        write(host, True)
    multihost_utils.sync_global_devices(f"flan_jax.train.{what}")
