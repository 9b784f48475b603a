"""LoRA adapters: B = 0 is the base exactly (every architecture), gradients reach only the
adapters, merge_lora's plain model equals the adapted one, targets / stacks pick exactly the
named projections, and every adapter has logical axes the rules shard."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from flan_jax import parallel
from flan_jax.model import create_model, get_config, params_of
from flan_jax.model.lora import (TARGETS, LoraConfig, abstract_lora_model, apply_lora,
                                 load_adapters, merge_lora, save_adapters, split_axes,
                                 split_params)
from flan_jax.model.params import model_from_params
from flan_jax.train.step import LossConfig, forward, init_state, train_step

ARCHS = ("encoder_decoder", "decoder_only", "semi_causal")
EVERYTHING = LoraConfig(rank=4, targets=TARGETS)


def config(arch, **overrides):
    extra = {"semi_causal": {"connector": "pooled", "connector_tokens": 2}}.get(arch, {})
    return get_config("flan_t5-tiny", architecture=arch, **{
        "vocab_size": 64, "num_encoder_layers": 1, "num_decoder_layers": 2, **extra,
        **overrides})


def batch_for(arch, rows=2):
    rng = np.random.default_rng(0)
    tokens = lambda n: jnp.asarray(rng.integers(2, 64, (rows, n)), jnp.int32)  # noqa: E731
    targets = tokens(6)
    if arch == "encoder_decoder":
        b = {"encoder_input_tokens": tokens(7), "decoder_input_tokens": jnp.pad(
            targets[:, :-1], ((0, 0), (1, 0)))}
    else:
        b = {"decoder_input_tokens": jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))}
        if arch == "semi_causal":
            b["decoder_encoded_span"] = jnp.asarray([[0, 1, 1, 1, 0, 0]] * rows, jnp.int32)
    return {**b, "decoder_target_tokens": targets,
            "decoder_loss_weights": jnp.ones_like(targets, jnp.float32)}


def randomize_b(model, seed=1):
    """B ~ N(0, 0.3^2): the adapters then change the model."""
    state = nnx.state(model, nnx.LoRAParam)
    key = jax.random.key(seed)

    def draw(path, x):
        if path[-1].key != "lora_b":
            return x
        salt = zlib.crc32(jax.tree_util.keystr(path).encode())
        return 0.3 * jax.random.normal(jax.random.fold_in(key, salt), x.shape, x.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(
        draw, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return model


def adapter_paths(model):
    return {"/".join(map(str, path[:-1])) for path, _ in
            nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_b_is_the_base_exactly_and_a_nonzero_b_changes_it(arch):
    cfg = config(arch, dropout_rate=0.1)
    model = create_model(cfg, seed=0)
    batch = batch_for(arch)
    base, base_train = forward(model, batch), forward(model, batch, nnx.Rngs(dropout=3))
    params_before = params_of(model)
    apply_lora(model, EVERYTHING, rngs=nnx.Rngs(params=1))
    assert np.array_equal(forward(model, batch), base)
    # with LoRA dropout 0, training draws the base's dropout masks as before
    assert np.array_equal(forward(model, batch, nnx.Rngs(dropout=3)), base_train)
    assert jax.tree.all(jax.tree.map(np.array_equal, split_params(model)[0], params_before))
    randomize_b(model)
    assert not np.allclose(forward(model, batch), base, atol=1e-3)


def test_lora_off_leaves_the_model_as_it_was():
    cfg = config("encoder_decoder")
    model = create_model(cfg, seed=0)
    before = params_of(model)
    assert apply_lora(model, LoraConfig(), rngs=nnx.Rngs(params=1)) is model
    assert split_params(model)[1] == {}
    assert jax.tree.structure(params_of(model)) == jax.tree.structure(before)
    assert model.encoder.layers[0].self_attn.lora is None
    assert model.decoder.layers[0].mlp.lora is None


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_gradients_reach_only_the_adapters(arch):
    """The step differentiates the state's params (adapters) and not `frozen` (the base):
    its update touches the adapters alone; with B = 0, A's gradient is zero (LoRA's math)."""
    cfg = config(arch)
    lora = LoraConfig(rank=4, targets=("q", "v", "mlp_out"))
    model = apply_lora(create_model(cfg, seed=0), lora, rngs=nnx.Rngs(params=1))
    graphdef = nnx.graphdef(model)
    base, adapters = split_params(model)
    state = init_state(adapters, optax.sgd(1.0))
    new, metrics = jax.jit(lambda s, b, f: train_step(
        s, b, f, graphdef=graphdef, optimizer=optax.sgd(1.0), loss_cfg=LossConfig()))(
        state, batch_for(arch), base)
    assert jax.tree.structure(new.params) == jax.tree.structure(adapters)
    assert metrics["grad_norm"] > 0
    for path, before in jax.tree_util.tree_leaves_with_path(adapters):
        after = new.params
        for key in path:
            after = after[key.key]
        moved = not np.array_equal(after, before)
        assert moved == (path[-1].key == "lora_b"), path  # grad of A is A-independent: B = 0


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_plain_model_equals_the_adapted_one(arch):
    cfg = config(arch)
    lora = LoraConfig(rank=3, alpha=6.0, targets=TARGETS)
    model = randomize_b(apply_lora(create_model(cfg, seed=0), lora, rngs=nnx.Rngs(params=1)))
    batch = batch_for(arch)
    adapted = forward(model, batch)
    base, adapters = split_params(model)
    merged = merge_lora(base, adapters, lora)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    plain = forward(model_from_params(cfg, merged), batch)
    np.testing.assert_allclose(plain, adapted, atol=1e-5, rtol=0)  # (measured: 5e-6)
    assert not np.allclose(forward(model_from_params(cfg, base), batch), adapted, atol=1e-3)
    with pytest.raises(ValueError, match="LoraConfig.rank=4"):
        merge_lora(base, adapters, LoraConfig(rank=4))


def test_targets_and_stacks_select_exactly_the_named_projections():
    t5 = create_model(config("encoder_decoder"), seed=0)
    apply_lora(t5, LoraConfig(rank=2, targets=("q", "v"), stacks=("decoder",)),
               rngs=nnx.Rngs(params=1))
    want = {f"decoder/layers/{i}/{kind}_attn/lora/{p}" for i in range(2)
            for kind in ("self", "cross") for p in "qv"}
    assert adapter_paths(t5) == want
    t5 = create_model(config("encoder_decoder"), seed=0)
    apply_lora(t5, LoraConfig(rank=2, targets=("cross_o", "mlp_in", "mlp_out")),
               rngs=nnx.Rngs(params=1))
    want = {f"{stack}/layers/{i}/mlp/lora/{w}" for stack, n in (("encoder", 1), ("decoder", 2))
            for i in range(n) for w in ("wi_0", "wi_1", "wo")}
    assert adapter_paths(t5) == want | {f"decoder/layers/{i}/cross_attn/lora/o" for i in range(2)}
    relu = create_model(config("encoder_decoder", feed_forward="relu"), seed=0)
    apply_lora(relu, LoraConfig(rank=2, targets=("mlp_in",), stacks=("encoder",)),
               rngs=nnx.Rngs(params=1))
    assert adapter_paths(relu) == {"encoder/layers/0/mlp/lora/wi"}
    semi = create_model(config("semi_causal"), seed=0)
    apply_lora(semi, LoraConfig(rank=2, targets=("q", "k", "v", "o"), stacks=("encoder",)),
               rngs=nnx.Rngs(params=1))  # the pooled connector's attention is not a stack's
    assert adapter_paths(semi) == {f"encoder_layers/0/self_attn/lora/{p}" for p in "qkvo"}
    dec = create_model(config("decoder_only"), seed=0)
    apply_lora(dec, LoraConfig(rank=2), rngs=nnx.Rngs(params=1))
    assert adapter_paths(dec) == {f"layers/{i}/self_attn/lora/{p}" for i in range(2) for p in "qv"}
    with pytest.raises(ValueError, match="select no projection"):
        apply_lora(create_model(config("decoder_only"), seed=0),
                   LoraConfig(rank=2, targets=("cross_q",)), rngs=nnx.Rngs(params=1))
    with pytest.raises(ValueError, match="adapters already"):
        apply_lora(dec, LoraConfig(rank=2), rngs=nnx.Rngs(params=1))


@pytest.mark.parametrize("field, value, match", [
    ("targets", ("q", "query"), r"LoraConfig.targets=\('q', 'query'\): unknown \['query'\]; "
                                r"choose from \('q', 'k'"),
    ("stacks", ("middle",), r"LoraConfig.stacks=\('middle',\).*choose from \('encoder', "),
    ("targets", (), "LoraConfig.targets=.*empty"),
    ("rank", -1, "LoraConfig.rank=-1"),
    ("dropout", 1.0, r"LoraConfig.dropout=1.0: not in \[0, 1\)"),
])
def test_bad_settings_are_refused_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**{"rank": 8, field: value})


def test_shapes_init_and_scale():
    cfg = config("encoder_decoder")
    model = apply_lora(create_model(cfg, seed=0), LoraConfig(rank=4, alpha=8.0, targets=TARGETS),
                       rngs=nnx.Rngs(params=1))
    attn = model.decoder.layers[0].self_attn.lora
    e, h, d = cfg.d_model, cfg.num_heads, cfg.head_dim
    assert attn["q"].lora_a.get_value().shape == (e, 4)
    assert attn["q"].lora_b.get_value().shape == (4, h, d)
    assert attn["o"].lora_a.get_value().shape == (h, d, 4)
    assert attn["o"].scale == 2.0
    a = np.asarray(attn["o"].lora_a.get_value())
    bound = (h * d) ** -0.5  # U(+-1/sqrt(fan_in)), fan_in = heads x head_dim
    assert np.abs(a).max() <= bound and a.std() > 0.3 * bound
    assert not np.any(attn["o"].lora_b.get_value())
    assert model.decoder.layers[0].mlp.lora["wo"].lora_a.get_value().shape == (cfg.d_ff, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_have_logical_axes_and_shard_on_eight_devices(arch):
    model = abstract_lora_model(config(arch), LoraConfig(rank=4, targets=TARGETS))
    _, adapters = split_params(model)
    _, axes = split_axes(model)
    assert jax.tree.structure(adapters) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, tuple))
    mesh = AbstractMesh((2, 2, 2), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    shardings = parallel.param_shardings(adapters, axes, parallel.DEFAULT_RULES, mesh)
    flat_axes = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, tuple)))
    for path, sh in jax.tree_util.tree_leaves_with_path(shardings):
        names = flat_axes[path]
        leaf = adapters
        for key in path:
            leaf = leaf[key.key]
        assert len(names) == len(leaf.shape) and "lora_rank" in names
        spec = tuple(sh.spec) + (None,) * (len(names) - len(sh.spec))
        assert spec[names.index("lora_rank")] is None
        assert all(s == {"embed": "fsdp", "heads": "model", "mlp": "model"}.get(n)
                   for n, s in zip(names, spec)), (path, names, spec)
    if arch == "encoder_decoder":
        q = shardings["decoder"]["layers"][0]["cross_attn"]["lora"]["q"]
        assert q["lora_a"].spec == P("fsdp", None) and q["lora_b"].spec == P(None, "model", None)


def test_adapters_round_trip_through_their_directory(tmp_path):
    cfg = config("decoder_only")
    lora = LoraConfig(rank=2, targets=("k", "o"))
    model = randomize_b(apply_lora(create_model(cfg, seed=0), lora, rngs=nnx.Rngs(params=1)))
    adapters = split_params(model)[1]
    save_adapters(tmp_path / "adapters", lora, adapters, base="/models/base")
    got_cfg, got = load_adapters(tmp_path / "adapters", cfg)
    assert got_cfg == lora
    assert jax.tree.all(jax.tree.map(np.array_equal, got, adapters))
