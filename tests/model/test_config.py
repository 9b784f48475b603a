"""Presets have the published shapes and parameter counts; overrides and errors are checked."""

import jax
import numpy as np
import pytest

from flan_jax.model import T5Config, get_config, params_of, preset_names
from flan_jax.model.params import abstract_model

# Parameter counts as transformers reports them for the public checkpoints.
PUBLISHED = {
    "t5_1_0-small": 60_506_624,    # t5-small
    "t5_1_0-base": 222_903_552,    # t5-base
    "t5_1_1-small": 76_961_152,    # google/t5-v1_1-small
    "flan_t5-base": 247_577_856,   # google/flan-t5-base
    "flan_t5-large": 783_150_080,  # google/flan-t5-large
    "flan_t5-xl": 2_849_757_184,   # google/flan-t5-xl
    "flan_t5-xxl": 11_135_332_352,  # google/flan-t5-xxl
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_published_parameter_counts(name):
    params = params_of(abstract_model(get_config(name)))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == PUBLISHED[name]


def test_variants_differ_as_published():
    v10, v11 = get_config("t5_1_0-small"), get_config("t5_1_1-small")
    assert (v10.feed_forward, v10.tie_embeddings, v10.scale_decoder_outputs) == (
        "relu", True, True)
    assert (v11.feed_forward, v11.tie_embeddings, v11.scale_decoder_outputs) == (
        "gated-gelu", False, False)
    assert get_config("small") == get_config("flan_t5-small") == v11
    assert get_config("t5_1_0-3b") == get_config("t5_1_0-xl")
    assert len(preset_names()) == 18


def test_overrides_and_errors():
    cfg = get_config("flan_t5-base", dropout_rate=0.1, attention_backend="auto")
    assert cfg.dropout_rate == 0.1 and cfg.d_model == 768
    with pytest.raises(ValueError, match="unknown model preset 'flan_t5-huge'"):
        get_config("flan_t5-huge")
    with pytest.raises(ValueError, match="unknown T5Config field.*d_modle"):
        get_config("tiny", d_modle=3)
    with pytest.raises(ValueError, match="feed_forward='gated-silu'"):
        T5Config(feed_forward="gated-silu")
    with pytest.raises(ValueError, match="param_dtype='float33'"):
        T5Config(param_dtype="float33")
    assert T5Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["t5_1_0-small", "flan_t5-base"])
def test_abstract_model_is_what_eval_shape_of_the_constructor_gives(name):
    """abstract_model builds without tracing (layers.shapes_only); the result must be the
    same module as nnx.eval_shape's: graph, leaves (ShapeDtypeStructs) and logical axes."""
    from flax import nnx

    from flan_jax.model import create_model, param_axes
    from flan_jax.model.layers import shapes_only
    from flan_jax.model.t5 import T5

    cfg = get_config(name)
    got = abstract_model(cfg)
    want = nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(params=0)))
    (got_def, got_state), (want_def, want_state) = nnx.split(got), nnx.split(want)
    assert got_def == want_def
    got_leaves = jax.tree_util.tree_leaves_with_path(got_state)
    assert got_leaves == jax.tree_util.tree_leaves_with_path(want_state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for _, x in got_leaves)
    assert param_axes(got) == param_axes(want)
    with shapes_only():
        pass
    tiny = create_model(get_config("tiny"))  # the switch is off again: real arrays
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params_of(tiny)))


def test_architecture_is_validated_and_round_trips_through_config_json(tmp_path):
    """A decoder-only config survives config.json; an old config.json without the field
    loads as encoder-decoder; `architecture` is a shape field (a checkpoint decides it)."""
    import json

    from flan_jax.model.config import RUN_FIELDS
    from flan_jax.model.io import FORMAT, load_config

    with pytest.raises(ValueError, match="T5Config.architecture='decoder'"):
        get_config("tiny", architecture="decoder")
    cfg = get_config("tiny", architecture="decoder_only", num_decoder_layers=3)
    assert "architecture" not in RUN_FIELDS
    assert T5Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for name, d in {"new": cfg.to_dict(),
                    "old": {k: v for k, v in get_config("tiny").to_dict().items()
                            if k != "architecture"}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"format": FORMAT, **d}))
    assert load_config(tmp_path / "new") == cfg
    assert load_config(tmp_path / "old") == get_config("tiny")
    assert load_config(tmp_path / "old").architecture == "encoder_decoder"
