"""Mesh, rules and shardings: specs for every tiny-T5 param on five mesh shapes, and sharded
loss / gradients equal to one device's (8 forced CPU devices and 2 processes, in subprocesses).
"""

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import gin
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from flan_jax import parallel as par
from flan_jax.model import get_config
from flan_jax.model.params import abstract_model, param_axes, params_of

ROOT = Path(__file__).resolve().parents[1]
MESH_SHAPES = {  # (data, fsdp, model)
    "data": (8, 1, 1), "fsdp": (1, 8, 1), "model": (1, 1, 8),
    "data2_model4": (2, 1, 4), "data2_fsdp2_model2": (2, 2, 2),
}
# Hand-derived from DEFAULT_RULES and the tiny shapes (embed 64, heads 4, mlp 128, vocab 512).
EXPECTED = {
    "data": {"token_embedder/embedding": P(None, None), "encoder/layers/0/self_attn/q":
             P(None, None, None), "decoder/layers/0/mlp/wo": P(None, None)},
    "fsdp": {"token_embedder/embedding": P(None, "fsdp"), "encoder/layers/0/self_attn/q":
             P("fsdp", None, None), "decoder/layers/0/mlp/wo": P(None, "fsdp")},
    "model": {"token_embedder/embedding": P("model", None), "encoder/layers/0/self_attn/q":
              P(None, None, None), "decoder/layers/0/mlp/wo": P("model", None)},
    "data2_model4": {"token_embedder/embedding": P("model", None),
                     "encoder/layers/0/self_attn/q": P(None, "model", None),
                     "decoder/layers/0/mlp/wo": P("model", None)},
    "data2_fsdp2_model2": {"token_embedder/embedding": P("model", "fsdp"),
                           "encoder/layers/0/self_attn/q": P("fsdp", "model", None),
                           "decoder/layers/0/mlp/wo": P("model", "fsdp")},
}
GIN_MESHES = {
    "single": par.MeshConfig(data=1, fsdp=1, model=1),
    "data_parallel": par.MeshConfig(data=-1, fsdp=1, model=1),
    "fsdp": par.MeshConfig(data=1, fsdp=-1, model=1),
    "tensor_parallel": par.MeshConfig(data=1, fsdp=1, model=-1),
    "2d": par.MeshConfig(data=-1, fsdp=1, model=2),
    "multislice": par.MeshConfig(data=1, fsdp=-1, model=1, dcn_data=-1),
}


def abstract_mesh(shape):
    return AbstractMesh(shape, par.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def flat(tree):
    """{"encoder/layers/0/mlp/wo": leaf, ...}: the path names the logs and tests use."""
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                     for k in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mesh_axes_of(entry):
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


@pytest.fixture(scope="module")
def tiny():
    model = abstract_model(get_config("t5_1_1-tiny"))
    return params_of(model), param_axes(model)


@pytest.fixture
def fresh_log(monkeypatch):
    monkeypatch.setattr(par, "_logged_fallbacks", set())


# --- rules -> specs (abstract meshes: only axis sizes matter) --------------------------------


@pytest.mark.parametrize("mesh_name", sorted(MESH_SHAPES))
def test_every_tiny_param_gets_a_valid_spec(tiny, mesh_name):
    params, axes = tiny
    mesh = abstract_mesh(MESH_SHAPES[mesh_name])
    shardings = flat(par.param_shardings(params, axes, par.DEFAULT_RULES, mesh))
    shapes = flat(params)
    assert shardings.keys() == shapes.keys()
    for path, sharding in shardings.items():
        shape = shapes[path].shape
        spec = tuple(sharding.spec)
        assert len(spec) == len(shape), path
        used = [a for entry in spec for a in mesh_axes_of(entry)]
        assert len(used) == len(set(used)), (path, spec)
        for size, entry in zip(shape, spec):
            assert size % np.prod([mesh.shape[a] for a in mesh_axes_of(entry)]) == 0, (path, spec)
    for path, spec in EXPECTED[mesh_name].items():
        assert shardings[path].spec == spec, path


def test_heads_not_divisible_fall_back_to_replication_logged_once(tiny, fresh_log, caplog):
    params, axes = tiny  # 4 heads over model=8
    mesh = abstract_mesh((1, 1, 8))
    with caplog.at_level(logging.WARNING, logger="flan_jax.parallel"):
        shardings = flat(par.param_shardings(params, axes, par.DEFAULT_RULES, mesh))
        par.param_shardings(params, axes, par.DEFAULT_RULES, mesh)
    assert shardings["encoder/layers/0/self_attn/o"].spec == P(None, None, None)
    assert shardings["encoder/relpos/embedding"].spec == P(None, None)
    assert shardings["encoder/layers/0/mlp/wi_0"].spec == P(None, "model")  # the rest still shards
    [record] = caplog.records
    # 2 encoder layers x 4 + 2 decoder layers x 8 attention weights + 2 relative-bias tables
    assert "heads=4 over model=8 in 26 param(s): decoder/layers/0/cross_attn/k" in (
        record.getMessage())


def test_no_fallback_no_log(tiny, fresh_log, caplog):
    params, axes = tiny
    with caplog.at_level(logging.WARNING, logger="flan_jax.parallel"):
        par.param_shardings(params, axes, par.DEFAULT_RULES, abstract_mesh((2, 2, 2)))
    assert not caplog.records


def test_a_mesh_axis_is_never_used_twice_in_one_spec():
    mesh = abstract_mesh((2, 2, 2))
    assert par.logical_to_spec(("embed", "embed"), par.DEFAULT_RULES, mesh) == P("fsdp", None)
    # batch takes data and fsdp, so embed (fsdp) must stay whole in an activation.
    assert par.logical_to_spec(("batch", "length", "embed"), par.DEFAULT_RULES, mesh) == P(
        ("data", "fsdp"), None, None)


def test_next_rule_is_tried_when_the_first_does_not_divide():
    rules = [("heads", "model"), ("heads", "data"), ("embed", None)]
    mesh = abstract_mesh((2, 1, 8))
    assert par.logical_to_spec(("heads",), rules, mesh, shape=(4,)) == P("data")
    assert par.logical_to_spec(("heads",), rules, mesh, shape=(16,)) == P("model")
    assert par.logical_to_spec(("heads",), rules, mesh) == P("model")  # no shape: no check


def test_size_one_mesh_axes_are_left_out_of_specs():
    mesh = abstract_mesh((4, 1, 2))
    assert par.logical_to_spec(("batch", "vocab"), par.DEFAULT_RULES, mesh) == P("data", "model")
    assert par.batch_sharding(mesh, par.DEFAULT_RULES).spec == P("data", None)
    assert par.batch_sharding(abstract_mesh((1, 1, 8)), par.DEFAULT_RULES, 1).spec == P(None)


def test_unknown_logical_axis_and_unknown_mesh_axis_fail_with_their_names():
    mesh = abstract_mesh((2, 2, 2))
    with pytest.raises(ValueError, match="'experts' has no rule"):
        par.logical_to_spec(("experts",), par.DEFAULT_RULES, mesh)
    with pytest.raises(ValueError, match="mesh axis 'tensor'"):
        par.logical_to_spec(("mlp",), [("mlp", "tensor")], mesh)
    with pytest.raises(ValueError, match="do not match shape"):
        par.logical_to_spec(("mlp",), par.DEFAULT_RULES, mesh, shape=(4, 4))
    with pytest.raises(ValueError, match="expected \\(logical_name, mesh_axes\\)"):
        par.logical_axis_rules([("mlp",)])


# --- optimizer state ---------------------------------------------------------------------------


def test_adam_moments_take_their_params_shardings(tiny):
    params, axes = tiny
    mesh = abstract_mesh((2, 2, 2))
    shardings = par.param_shardings(params, axes, par.DEFAULT_RULES, mesh)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = par.optimizer_state_shardings(jax.eval_shape(opt.init, params), params, shardings)
    adam = state[1][0]
    assert adam.count.spec == P()
    assert jax.tree.map(lambda s: s.spec, adam.mu) == jax.tree.map(lambda s: s.spec, shardings)
    assert jax.tree.map(lambda s: s.spec, adam.nu) == jax.tree.map(lambda s: s.spec, shardings)


def test_adafactor_factored_moments_keep_the_surviving_dims_axes(tiny):
    params, axes = tiny
    mesh = abstract_mesh((2, 2, 2))
    shardings = par.param_shardings(params, axes, par.DEFAULT_RULES, mesh)
    opt = optax.adafactor(1e-3, min_dim_size_to_factor=8)
    abstract_state = jax.eval_shape(opt.init, params)
    state = flat(par.optimizer_state_shardings(abstract_state, params, shardings))
    shapes = flat(abstract_state)
    q = "encoder/layers/0/self_attn/q"  # [embed 64, heads 4, kv 16] -> P(fsdp, model, None)
    assert shapes[f"0/v_row/{q}"].shape == (4, 16) and state[f"0/v_row/{q}"].spec == P(
        "model", None)
    assert shapes[f"0/v_col/{q}"].shape == (64, 4) and state[f"0/v_col/{q}"].spec == P(
        "fsdp", "model")
    assert shapes[f"0/v/{q}"].shape == (1,) and state[f"0/v/{q}"].spec == P()
    scale = "encoder/final_norm/scale"  # not factored: v mirrors the param
    assert state[f"0/v/{scale}"].spec == P("fsdp")
    assert state[f"0/v_row/{scale}"].spec == P()


def test_equal_dims_keep_only_the_axes_every_reading_agrees_on():
    mesh = abstract_mesh((1, 2, 2))
    params = {"w": jax.ShapeDtypeStruct((8, 8, 3), np.float32)}
    shardings = par.param_shardings(params, {"w": ("embed", "mlp", "kv")}, par.DEFAULT_RULES,
                                    mesh)
    assert shardings["w"].spec == P("fsdp", "model", None)
    opt = optax.adafactor(1e-3, min_dim_size_to_factor=2)
    abstract_state = jax.eval_shape(opt.init, params)
    factored = par.optimizer_state_shardings(abstract_state, params, shardings)[0]
    # v_row and v_col each drop one of the two 8s, so (8, 3) reads both ways: the surviving 8
    # would be fsdp by one reading and model by the other, and is left whole.
    assert abstract_state[0].v_row["w"].shape == abstract_state[0].v_col["w"].shape == (8, 3)
    assert factored.v_row["w"].spec == P(None, None)
    assert factored.v_col["w"].spec == P(None, None)


def test_state_of_params_seen_in_t5x_shapes_takes_the_merged_dims_axes(tiny):
    from flan_jax.train.optim import factor_like_t5x

    params, axes = tiny
    mesh = abstract_mesh((2, 2, 2))
    shardings = par.param_shardings(params, axes, par.DEFAULT_RULES, mesh)
    q, o = "encoder/layers/0/self_attn/q", "encoder/layers/0/self_attn/o"
    assert flat(shardings)[o].spec == P("model", None, "fsdp")  # [heads 4, kv 16, embed 64]
    # Unfactored (dims < 128): v is the whole [embed, heads * kv] view.
    opt = factor_like_t5x(optax.adafactor(1e-3), axes)
    abstract_state = jax.eval_shape(opt.init, params)
    state, shapes = flat(par.optimizer_state_shardings(abstract_state, params, shardings)), \
        flat(abstract_state)
    assert shapes[f"0/v/{q}"].shape == (64, 64) and state[f"0/v/{q}"].spec == P("fsdp", "model")
    assert shapes[f"0/v/{o}"].shape == (64, 64) and state[f"0/v/{o}"].spec == P("model", "fsdp")
    # Factored: [32, 4, 16] seen as [32, 64] keeps a (32,) and a (64,) moment; the (64,) one
    # is heads * kv merged, so it takes the heads' axis (kv is unsharded).
    w = {"w": jax.ShapeDtypeStruct((32, 4, 16), np.float32)}
    w_axes = {"w": ("embed", "heads", "kv")}
    w_shard = par.param_shardings(w, w_axes, par.DEFAULT_RULES, mesh)
    opt = factor_like_t5x(optax.adafactor(1e-3, min_dim_size_to_factor=8), w_axes)
    abstract_state = jax.eval_shape(opt.init, w)
    factored = par.optimizer_state_shardings(abstract_state, w, w_shard)[0]
    assert abstract_state[0].v_row["w"].shape == (32,) and factored.v_row["w"].spec == P("fsdp")
    assert abstract_state[0].v_col["w"].shape == (64,) and factored.v_col["w"].spec == P("model")


def test_a_merged_dim_with_a_sharded_inner_dim_is_replicated():
    mesh = abstract_mesh((1, 2, 2))
    params = {"w": jax.ShapeDtypeStruct((8, 4, 6), np.float32)}
    shardings = {"w": jax.sharding.NamedSharding(mesh, P("fsdp", "model", None))}
    state = {"a": {"w": jax.ShapeDtypeStruct((8, 24), np.float32)},  # 24 = 4 (model) x 6
             "b": {"w": jax.ShapeDtypeStruct((32, 6), np.float32)}}  # 32 = 8 x 4 (model)
    got = par.optimizer_state_shardings(state, params, shardings)
    assert got["a"]["w"].spec == P("fsdp", "model")
    assert got["b"]["w"].spec == P(None, None)  # fsdp-then-model blocks aren't contiguous


# --- mesh config and gin -----------------------------------------------------------------------


def test_mesh_config_errors_name_the_axes_and_the_device_count():
    with pytest.raises(ValueError, match=r"mesh data=3 x fsdp=1 x model=1 needs 3 devices, "
                                         r"have 8"):
        par.MeshConfig(data=3).shape(8)
    with pytest.raises(ValueError, match=r"data=-1 x fsdp=1 x model=3: the fixed axes \(3 "
                                         r"devices\) do not divide the 8 devices"):
        par.MeshConfig(data=-1, model=3).shape(8)
    with pytest.raises(ValueError, match=r"only one axis may be -1, got \['data', 'model'\]"):
        par.MeshConfig(data=-1, model=-1)
    with pytest.raises(ValueError, match="MeshConfig.fsdp=0"):
        par.MeshConfig(fsdp=0)
    with pytest.raises(ValueError, match="needs 2 devices, have 1"):
        par.make_mesh(par.MeshConfig(data=2))
    assert par.MeshConfig(data=2, model=-1).shape(8) == (2, 1, 4)
    assert par.MeshConfig(data=2, fsdp=2, model=2).shape(8) == (2, 2, 2)


def test_dcn_axes_multiply_the_per_slice_axes():
    multi = par.MeshConfig(data=1, fsdp=-1, dcn_data=-1)
    assert multi.multislice and not par.MeshConfig().multislice
    assert multi.shape(256, num_slices=4) == (4, 64, 1)  # 4 slices x 64 chips
    assert par.MeshConfig(data=1, fsdp=-1, model=4, dcn_data=2, dcn_fsdp=2).shape(
        64, num_slices=4) == (2, 8, 4)
    with pytest.raises(ValueError, match=r"dcn_data=3 .* needs 3 slices, have 4"):
        par.MeshConfig(dcn_data=3).shape(8, num_slices=4)
    with pytest.raises(ValueError, match=r"only one axis may be -1, got \['dcn_data', "
                                         r"'dcn_model'\]"):
        par.MeshConfig(dcn_data=-1, dcn_model=-1)
    with pytest.raises(ValueError, match="8 devices do not split into 3 slices"):
        multi.shape(8, num_slices=3)
    # One process, no slice_index on CPU devices: one slice, so dcn_data=-1 is just 1.
    mesh = par.make_mesh(multi)
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "model": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_has_auto_axes_in_data_fsdp_model_order():
    mesh = par.make_mesh(par.MeshConfig())
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_global_batch_on_one_device():
    mesh = par.make_mesh(par.MeshConfig())
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = par.global_batch({"x": x}, mesh, par.DEFAULT_RULES)["x"]
    np.testing.assert_array_equal(np.asarray(out), x)
    assert out.sharding.spec == P(None, None)


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("stem", sorted(GIN_MESHES))
def test_gin_mesh_file_binds_the_intended_config(clean_gin, stem):
    gin.parse_config_file(str(ROOT / "gin" / "mesh" / f"{stem}.gin"))
    assert par.MeshConfig() == GIN_MESHES[stem]
    assert par.logical_axis_rules() == par.DEFAULT_RULES


def test_every_gin_mesh_file_is_tested():
    assert {p.stem for p in (ROOT / "gin" / "mesh").glob("*.gin")} == set(GIN_MESHES)


def test_gin_binds_rules_and_rejects_misspelt_fields(clean_gin):
    gin.parse_config('logical_axis_rules.rules = [("batch", ["data", "fsdp"]), ("embed", None)]')
    assert par.logical_axis_rules() == (("batch", ("data", "fsdp")), ("embed", None))
    with pytest.raises(ValueError, match="dtaa"):
        gin.parse_config("MeshConfig.dtaa = 2")


# --- 8 forced CPU devices / 2 processes (subprocesses) -----------------------------------------


def _run_worker(*args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "tests.parallel_worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(next(line for line in proc.stdout.splitlines()
                           if line.startswith("RESULT "))[len("RESULT "):])


@pytest.fixture(scope="module")
def eight_devices():
    return _run_worker("meshes")


@pytest.mark.parametrize("mesh_name", sorted(MESH_SHAPES))
def test_sharded_loss_and_grads_equal_one_device(eight_devices, mesh_name):
    assert eight_devices["devices"] == 8
    result = eight_devices["meshes"][mesh_name]
    assert tuple(result["mesh"].values()) == MESH_SHAPES[mesh_name]
    assert result["loss_rel"] < 1e-5
    assert result["grad_rel"] < 1e-5
    assert result["params_placed"] and result["grads_placed"]
    for path, spec in EXPECTED[mesh_name].items():
        assert P(*[tuple(e) if isinstance(e, list) else e for e in result["specs"][path]]) == spec


def test_params_are_really_split_across_devices(eight_devices):
    shards = {name: r["shard_shapes"] for name, r in eight_devices["meshes"].items()}
    assert shards["data"]["token_embedder/embedding"] == [512, 64]
    assert shards["fsdp"]["token_embedder/embedding"] == [512, 8]
    assert shards["model"]["token_embedder/embedding"] == [64, 64]
    assert shards["model"]["encoder/layers/0/self_attn/q"] == [64, 4, 16]  # heads fell back
    assert shards["data2_model4"]["encoder/layers/0/self_attn/q"] == [64, 1, 16]
    assert shards["data2_fsdp2_model2"]["logits_dense"] == [32, 256]
    assert shards["data2_fsdp2_model2"]["decoder/layers/0/mlp/wo"] == [64, 32]


def test_global_batch_is_split_over_the_batch_axes(eight_devices):
    meshes = eight_devices["meshes"]
    assert meshes["data"]["batch_spec"] == ["data", None]
    assert meshes["fsdp"]["batch_spec"] == ["fsdp", None]
    assert meshes["model"]["batch_spec"] == [None, None]
    assert meshes["data2_model4"]["batch_spec"] == ["data", None]
    assert meshes["data2_fsdp2_model2"]["batch_spec"] == [["data", "fsdp"], None]
    rows = {name: r["batch_shard_shape"][0] for name, r in meshes.items()}
    assert rows == {"data": 1, "fsdp": 1, "model": 8, "data2_model4": 4, "data2_fsdp2_model2": 2}
    assert all(r["batch_shape"] == [8, 16] for r in meshes.values())
    assert "6 local rows" in eight_devices["indivisible_batch_error"]
    assert "8 batch shards" in eight_devices["indivisible_batch_error"]


def test_fallback_is_logged_only_where_it_happens(eight_devices):
    meshes = eight_devices["meshes"]
    [warning] = meshes["model"]["warnings"]
    assert "heads=4 over model=8" in warning
    assert all(not r["warnings"] for name, r in meshes.items() if name != "model")


def test_sharded_adafactor_state_and_update(eight_devices):
    result = eight_devices["meshes"]["data2_fsdp2_model2"]
    assert result["state_placed"]
    assert result["update_rel"] < 1e-5
    q = "encoder/layers/0/self_attn/q"  # [64, 4, 16] on P(fsdp, model, None)
    assert result["state_shard_shapes"] == {f"0/v_row/{q}": [2, 16], f"0/v_col/{q}": [32, 2],
                                            f"0/v/{q}": [1]}


def test_global_batch_across_two_processes():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.parallel_worker", "multiprocess",
                               str(port), str(i), "2"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-4000:]
        results.append(json.loads(next(line for line in out.splitlines()
                                       if line.startswith("RESULT "))[len("RESULT "):]))
    for r in results:
        assert r["global_shape"] == [8, 3] and r["local_shards"] == 2
        assert r["spec"] == ["data", None]
        assert r["total"] == r["expected"]  # each process's rows landed in their global place
        assert r["w_shard_shape"] == [2, 4] and r["w_sum"] == 32.0
