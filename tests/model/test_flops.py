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


@pytest.mark.parametrize("architecture", ["encoder_decoder", "decoder_only"])
def test_lora_train_flops_match_xla_cost_analysis_of_the_adapter_gradient(architecture):
    """A LoRA step differentiates only the adapters: XLA drops the frozen base's weight
    gradients, and the count (2 forwards + the adapters' forward and backward) follows."""
    from flan_jax.model.lora import LoraConfig, apply_lora

    cfg = get_config("tiny", architecture=architecture, num_decoder_layers=3)
    lora = LoraConfig(rank=4, targets=("q", "v", "o", "mlp_in"))
    model = apply_lora(create_model(cfg), lora, rngs=nnx.Rngs(params=0))
    graphdef, adapters, base = nnx.split(model, nnx.LoRAParam, ...)
    b, le, ld = 2, 48, 16
    x = jnp.ones((b, le), jnp.int32)
    y = jnp.ones((b, ld if architecture == "encoder_decoder" else le + ld), jnp.int32)

    def loss(adapters, base):
        m = nnx.merge(graphdef, adapters, base)
        return (m(x, y) if architecture == "encoder_decoder" else m(y)).sum()

    cost = jax.jit(jax.grad(loss)).lower(adapters, base).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla = float(cost["flops"])
    ours = train_flops(cfg, b, le, ld, lora)
    assert 0.8 * xla <= ours <= 1.05 * xla, (ours, xla)
    full = train_flops(cfg, b, le, ld)  # 3 forwards
    assert 2 / 3 * full < ours < full


def test_a_frozen_base_costs_two_forwards():
    """A prompt-tuning run: no weight gradients anywhere but the prompt's (negligible)."""
    cfg = get_config("tiny")
    assert train_flops(cfg, 2, 48, 16, frozen_base=True) == 2 * forward_flops(cfg, 2, 48, 16)
