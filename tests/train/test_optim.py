"""Schedules and optimizer construction."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax.train import optim


def test_rsqrt_holds_through_warmup_then_decays_like_t5x():
    s = optim.learning_rate_schedule("rsqrt", learning_rate=1.0, warmup_steps=10_000)
    np.testing.assert_allclose([s(0), s(5_000), s(10_000), s(40_000)],
                               [0.01, 0.01, 0.01, 0.005], rtol=1e-6)


def test_constant_with_linear_warmup():
    s = optim.learning_rate_schedule("constant", learning_rate=1e-3, warmup_steps=10)
    np.testing.assert_allclose([s(0), s(5), s(10), s(1000)], [0.0, 5e-4, 1e-3, 1e-3],
                               rtol=1e-6)


def test_cosine_decays_to_the_final_fraction():
    s = optim.learning_rate_schedule("cosine", learning_rate=1.0, warmup_steps=10,
                                     total_steps=110, final_fraction=0.1)
    np.testing.assert_allclose([s(10), s(60), s(110)], [1.0, 0.55, 0.1], rtol=1e-5)
    with pytest.raises(ValueError, match="total_steps"):
        optim.learning_rate_schedule("cosine")


def test_unknown_names_are_refused_with_the_binding():
    with pytest.raises(ValueError, match="learning_rate_schedule.name='linear'"):
        optim.learning_rate_schedule("linear")
    with pytest.raises(ValueError, match="make_optimizer.name='sgd'"):
        optim.make_optimizer("sgd")


def test_adafactor_factors_big_matrices_and_clipping_chains_in_front():
    params = {"w": jnp.ones((256, 512)), "b": jnp.ones((512,))}
    state = optim.make_optimizer("adafactor").init(params)
    factored = [x for x in optax.tree_utils.tree_get_all_with_path(state, "v_row")]
    assert factored  # second moments kept as row / column factors
    clipped = optim.make_optimizer("adamw", clip_grad_norm=1.0)
    huge = {"w": jnp.full((256, 512), 1e6), "b": jnp.zeros((512,))}
    updates, _ = clipped.update(huge, clipped.init(params), params)
    assert np.all(np.isfinite(updates["w"]))
