"""Subprocess entry for tests/test_parallel.py: JAX fixes its device count when the backend
starts, so the multi-device checks run here with forced CPU devices and print JSON.

    python -m tests.parallel_worker meshes                  # 8 devices, one process
    python -m tests.parallel_worker train SPEC_JSON         # 8 devices: train steps per run
    python -m tests.parallel_worker multiprocess PORT I N   # process I of N, 2 devices each
"""

import os
import sys

_DEVICES = 8 if sys.argv[1] in ("meshes", "train") else 2
os.environ["JAX_PLATFORMS"] = "cpu"
# LLVM optimization level 0 cuts CPU compile times by half or more; the single-device
# reference is compiled the same way, so the comparison is unaffected.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={_DEVICES}"
                           + " --xla_backend_optimization_level=0")

import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from flan_jax import parallel as par  # noqa: E402
from flan_jax.model import get_config  # noqa: E402
from flan_jax.model.losses import mean_cross_entropy  # noqa: E402
from flan_jax.model.params import abstract_model, create_model, param_axes, params_of  # noqa: E402

MESHES = {
    "data": par.MeshConfig(data=-1),
    "fsdp": par.MeshConfig(data=1, fsdp=-1),
    "model": par.MeshConfig(data=1, model=-1),
    "data2_model4": par.MeshConfig(data=2, model=4),
    "data2_fsdp2_model2": par.MeshConfig(data=2, fsdp=2, model=2),
}
WATCHED = ("token_embedder/embedding", "logits_dense", "encoder/layers/0/self_attn/q",
           "decoder/layers/0/mlp/wo", "encoder/relpos/embedding")
OPTIMIZER_MESH = "data2_fsdp2_model2"  # uses every mesh axis; one is enough to check the rule


def packed_batch(b=8, le=16, ld=8, vocab=512, seed=0):
    """Two examples per row, some padding: exercises segment ids and restarting positions."""
    rng = np.random.default_rng(seed)

    def segments(length, split, pad):
        seg = np.array([1] * split + [2] * (length - split - pad) + [0] * pad, np.int32)
        pos = np.concatenate([np.arange(split), np.arange(length - split - pad),
                              np.zeros(pad, int)]).astype(np.int32)
        return seg, pos

    enc_seg, enc_pos = zip(*(segments(le, 5 + i % 3, i % 4) for i in range(b)))
    dec_seg, dec_pos = zip(*(segments(ld, 3, i % 2) for i in range(b)))
    enc_seg, enc_pos, dec_seg, dec_pos = map(np.stack, (enc_seg, enc_pos, dec_seg, dec_pos))
    enc = rng.integers(2, vocab, (b, le)).astype(np.int32) * (enc_seg > 0)
    tgt = rng.integers(2, vocab, (b, ld)).astype(np.int32) * (dec_seg > 0)
    dec_in = np.where(dec_pos == 0, 0, np.roll(tgt, 1, axis=1)).astype(np.int32)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (dec_seg > 0).astype(np.int32),
            "encoder_segment_ids": enc_seg, "decoder_segment_ids": dec_seg,
            "encoder_positions": enc_pos, "decoder_positions": dec_pos}


def flat(tree):
    """{"encoder/layers/0/mlp/wo": leaf, ...}: the path names the logs and tests use."""
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                     for k in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def rel_err(got, want):
    """Max |got - want| relative to the leaf's largest |want| (elementwise ratios blow up on
    entries that are ~0 in both)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def meshes() -> dict:
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("flan_jax.parallel").addHandler(handler)

    # One layer per stack keeps compile times down; every kind of param is still there.
    cfg = get_config("t5_1_1-tiny", num_encoder_layers=1, num_decoder_layers=1)
    model = abstract_model(cfg)
    graphdef, axes = nnx.graphdef(model), param_axes(model)
    params = jax.jit(lambda: params_of(create_model(cfg, seed=0)))()
    batch = packed_batch()

    def loss_fn(p, b):
        logits = nnx.merge(graphdef, p)(
            b["encoder_input_tokens"], b["decoder_input_tokens"],
            encoder_segment_ids=b["encoder_segment_ids"],
            decoder_segment_ids=b["decoder_segment_ids"],
            encoder_positions=b["encoder_positions"], decoder_positions=b["decoder_positions"])
        return mean_cross_entropy(logits, b["decoder_target_tokens"], b["decoder_loss_weights"])

    opt = optax.adafactor(1e-2, min_dim_size_to_factor=8)
    step = jax.value_and_grad(loss_fn)
    ref_loss, ref_grads = jax.jit(step)(params, batch)  # one device: nothing is committed
    ref_updates, _ = jax.jit(opt.update)(ref_grads, jax.jit(opt.init)(params), params)
    ref_grads, ref_updates = flat(ref_grads), flat(ref_updates)

    out = {"devices": jax.device_count(), "ref_loss": float(ref_loss), "meshes": {}}
    rules = par.logical_axis_rules()
    for name, mesh_cfg in MESHES.items():
        warnings.clear()
        mesh = par.make_mesh(mesh_cfg)
        shardings = par.param_shardings(params, axes, rules, mesh)
        sharded = par.shard_params(params, shardings)
        gb = par.global_batch(batch, mesh, rules)
        batch_shardings = {k: par.batch_sharding(mesh, rules, v.ndim) for k, v in batch.items()}
        loss, grads = jax.jit(step, in_shardings=(shardings, batch_shardings),
                              out_shardings=(par.replicated(mesh), shardings))(sharded, gb)

        fp, fs, fg = flat(sharded), flat(shardings), flat(grads)
        enc = gb["encoder_input_tokens"]
        result = out["meshes"][name] = {
            "mesh": dict(mesh.shape),
            "loss_rel": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
            "grad_rel": max(rel_err(fg[k], ref_grads[k]) for k in ref_grads),
            "params_placed": all(fp[k].sharding.is_equivalent_to(fs[k], fp[k].ndim) for k in fp),
            "grads_placed": all(fg[k].sharding.is_equivalent_to(fs[k], fg[k].ndim) for k in fg),
            "specs": {k: list(map(_spec_str, fs[k].spec)) for k in WATCHED},
            "shard_shapes": {k: list(fp[k].addressable_shards[0].data.shape) for k in WATCHED},
            "batch_spec": list(map(_spec_str, enc.sharding.spec)),
            "batch_shard_shape": list(enc.addressable_shards[0].data.shape),
            "batch_shape": list(enc.shape),
            "warnings": list(warnings),
        }
        if name == OPTIMIZER_MESH:
            result.update(_optimizer_check(opt, params, sharded, grads, shardings, ref_updates))
    try:
        par.global_batch({"encoder_input_tokens": np.zeros((6, 4), np.int32)},
                         par.make_mesh(MESHES["data"]), rules)
        out["indivisible_batch_error"] = None
    except ValueError as e:
        out["indivisible_batch_error"] = str(e)
    return out


def _optimizer_check(opt, params, sharded, grads, shardings, ref_updates) -> dict:
    state_shardings = par.optimizer_state_shardings(jax.eval_shape(opt.init, params), params,
                                                    shardings)
    state = jax.jit(opt.init, out_shardings=state_shardings)(sharded)
    updates, _ = jax.jit(opt.update, out_shardings=(shardings, state_shardings))(
        grads, state, sharded)
    fstate, fstate_sh = flat(state), flat(state_shardings)
    return {
        "update_rel": max(rel_err(v, ref_updates[k]) for k, v in flat(updates).items()),
        "state_placed": all(fstate[k].sharding.is_equivalent_to(fstate_sh[k], fstate[k].ndim)
                            for k in fstate),
        "state_shard_shapes": {k: list(fstate[k].addressable_shards[0].data.shape)
                               for k in fstate if k.endswith("encoder/layers/0/self_attn/q")},
    }


def train(spec: dict) -> dict:
    """`spec["steps"]` train steps of each run in `spec["runs"]` ({name: {"files": gin files,
    "bindings": [...]}}), built as `flan-jax train` builds them (`setup_run`: the model,
    optimizer, loss, schedule and rules gin describes; the step jitted with the loop's
    shardings), on 1 device and on each of `spec["meshes"]`, from the same initial state and
    batches (random examples packed by the DataConfig's feature converter). -> per run and
    mesh: the losses, and how far the params' total update is from 1 device's."""
    import gin

    from flan_jax import gin_utils
    from flan_jax.train.setup import setup_run
    from flan_jax.train.step import TrainState, init_state, train_step

    out = {}
    for name, run_spec in spec["runs"].items():
        gin.clear_config()
        gin_utils.parse(run_spec["files"], run_spec["bindings"], finalize=False)
        run = setup_run(import_modules=False)
        cfg, data = run.model_cfg, run.data
        batches = [_packed_rows(data, cfg.vocab_size, seed) for seed in range(spec["steps"])]
        # One initial state for every mesh, made on one device and placed on each.
        initial = jax.device_get(jax.jit(lambda: init_state(
            params_of(create_model(cfg, seed=0)), run.optimizer))())
        abstract_params = run.abstract_params
        abstract_opt = jax.eval_shape(run.optimizer.init, abstract_params)
        step = functools.partial(train_step, graphdef=nnx.graphdef(run.abstract_model),
                                 optimizer=run.optimizer, loss_cfg=run.loss,
                                 schedule=run.schedule)
        result = out[name] = {"architecture": cfg.architecture,
                              "feature_converter": data.feature_converter,
                              "features": sorted(batches[0]), "meshes": {}}
        start, ref_update = flat(initial.params), None
        for mesh_name in ["one_device", *spec["meshes"]]:
            mesh = (par.make_mesh(par.MeshConfig(data=1), devices=jax.devices()[:1])
                    if mesh_name == "one_device" else par.make_mesh(MESHES[mesh_name]))
            p_shard = par.param_shardings(abstract_params, run.param_axes, run.rules, mesh)
            rep = par.replicated(mesh)
            state_shard = TrainState(step=rep, params=p_shard, opt_state=(
                par.optimizer_state_shardings(abstract_opt, abstract_params, p_shard)))
            step_fn = jax.jit(step, in_shardings=(state_shard, par.batch_sharding(
                mesh, run.rules)), out_shardings=(state_shard, rep), donate_argnums=0)
            state, losses = jax.device_put(initial, state_shard), []
            for batch in batches:
                state, metrics = step_fn(state, par.global_batch(batch, mesh, run.rules))
                losses.append(float(metrics["loss"]))
            update = {k: v - start[k] for k, v in flat(jax.device_get(state.params)).items()}
            ref_update = update if ref_update is None else ref_update
            result["meshes"][mesh_name] = {
                "mesh": dict(mesh.shape), "losses": losses,
                "update_norm": float(np.sqrt(sum(np.sum(v ** 2) for v in update.values()))),
                "update_rel": max(rel_err(update[k], ref_update[k]) for k in ref_update)}
    gin.clear_config()
    return out


def _packed_rows(data, vocab: int, seed: int) -> dict:
    """A batch of random (inputs, targets) examples packed as DataConfig `data` packs them
    (segment ids, positions, prefix / encoded-span marks: the reader's feature writer)."""
    from flan_jax.data.reader.packing import pack

    rng, rows, lengths = np.random.default_rng(seed), data.batch_size, data.task_feature_lengths
    examples = [(list(rng.integers(2, vocab, rng.integers(3, lengths["inputs"] // 2))),
                 list(rng.integers(2, vocab, rng.integers(2, lengths["targets"] // 2))))
                for _ in range(8 * rows)]
    features = pack(examples, lengths["inputs"], lengths["targets"], data.feature_converter)
    assert len(features["decoder_target_tokens"]) >= rows
    return {k: v[:rows] for k, v in features.items()}


def multiprocess(port: int, process_id: int, num_processes: int) -> dict:
    """Each process feeds its own rows; the sharded result must see the whole global batch."""
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
    rules = par.logical_axis_rules()
    mesh = par.make_mesh(par.MeshConfig(data=-1))
    rows = 2 * jax.local_device_count()
    full = np.arange(rows * num_processes * 3, dtype=np.float32).reshape(-1, 3)
    local = full[process_id * rows:(process_id + 1) * rows]
    gb = par.global_batch({"x": local}, mesh, rules)["x"]
    weights = np.arange(full.shape[0], dtype=np.float32)  # row order matters, not just rows
    total = jax.jit(lambda x: jnp.sum(x * weights[:, None]),
                    out_shardings=par.replicated(mesh))(gb)

    fsdp = par.make_mesh(par.MeshConfig(data=1, fsdp=-1))
    w_sharding = jax.sharding.NamedSharding(
        fsdp, par.logical_to_spec(("embed", "mlp"), rules, fsdp))
    w = par.shard_params({"w": np.ones((8, 4), np.float32)}, {"w": w_sharding})["w"]
    return {"process": process_id, "global_shape": list(gb.shape),
            "local_shards": len(gb.addressable_shards),
            "spec": list(map(_spec_str, gb.sharding.spec)),
            "total": float(total), "expected": float(np.sum(full * weights[:, None])),
            "w_shard_shape": list(w.addressable_shards[0].data.shape),
            "w_sum": float(jax.jit(jnp.sum, out_shardings=par.replicated(fsdp))(w))}


def _spec_str(entry):
    return entry if entry is None or isinstance(entry, str) else list(entry)


if __name__ == "__main__":
    if sys.argv[1] == "meshes":
        result = meshes()
    elif sys.argv[1] == "train":
        result = train(json.loads(sys.argv[2]))
    else:
        result = multiprocess(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    print("RESULT " + json.dumps(result))
