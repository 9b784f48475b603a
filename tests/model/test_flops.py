"""The analytic FLOP count agrees with XLA's own cost analysis of the compiled forward."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from flan_jax.model import create_model, get_config
from flan_jax.model.flops import forward_flops, train_flops


@pytest.mark.parametrize("preset", ["tiny", "t5_1_0-tiny"])
def test_forward_flops_match_xla_cost_analysis(preset):
    cfg = get_config(preset, num_decoder_layers=3)
    graphdef, state = nnx.split(create_model(cfg))
    b, le, ld = 2, 48, 16

    def fwd(state, x, y):
        return nnx.merge(graphdef, state)(x, y)

    x = jnp.ones((b, le), jnp.int32)
    y = jnp.ones((b, ld), jnp.int32)
    cost = jax.jit(fwd).lower(state, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla = float(cost["flops"])
    ours = forward_flops(cfg, b, le, ld)
    # XLA also counts elementwise work (softmax, norms, GELU), so it is a little higher.
    assert 0.8 * xla <= ours <= xla, (ours, xla)
    assert train_flops(cfg, b, le, ld) == 3 * ours


@pytest.mark.parametrize("architecture,connector", [("decoder_only", "linear"),
                                                    ("semi_causal", "linear"),
                                                    ("semi_causal", "pooled")])
def test_decoder_only_forward_flops_match_xla_cost_analysis(architecture, connector):
    """One sequence of inputs + targets tokens through num_decoder_layers layers (and, for
    the semi-causal model, the encoder's layers and the connector over it)."""
    cfg = get_config("tiny", architecture=architecture, num_decoder_layers=3,
                     num_encoder_layers=2, connector=connector)
    graphdef, state = nnx.split(create_model(cfg))
    b, le, ld = 2, 48, 16

    def fwd(state, x):
        model = nnx.merge(graphdef, state)
        return model(x) if architecture == "decoder_only" else model(
            x, decoder_encoded_span=(x > 0).astype(jnp.int32))

    x = jnp.ones((b, le + ld), jnp.int32)
    cost = jax.jit(fwd).lower(state, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla = float(cost["flops"])
    ours = forward_flops(cfg, b, le, ld)
    assert 0.8 * xla <= ours <= xla, (ours, xla)
