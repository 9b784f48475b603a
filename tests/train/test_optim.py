"""Schedules and optimizer construction."""

import jax
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


# --- Adafactor in t5x's shapes -----------------------------------------------------------------

# One of each kind of param, sized so that t5x's 2-D views have both dims >= 128 (factored)
# while the 3-D attention kernels have head_dim 64 < 128 (optax alone would not factor them).
SHAPES = {"q": (256, 4, 64), "o": (4, 64, 256), "wi": (256, 384), "scale": (256,),
          "relpos": (4, 32)}
AXES = {"q": ("embed", "heads", "kv"), "o": ("heads", "kv", "embed"), "wi": ("embed", "mlp"),
        "scale": ("embed",), "relpos": ("heads", "relpos_buckets")}
VIEWS = {"q": (256, 256), "o": (256, 256), "wi": (256, 384), "scale": (256,), "relpos": (4, 32)}


def _random(seed, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return {name: scale * jax.random.normal(k, shape) for k, (name, shape)
            in zip(keys, SHAPES.items())}


def _view(tree):
    return {name: x.reshape(VIEWS[name]) for name, x in tree.items()}


def test_t5x_shape_merges_heads_and_kv_only():
    got = {name: optim.t5x_shape(shape, AXES[name]) for name, shape in SHAPES.items()}
    assert got == VIEWS
    with pytest.raises(ValueError, match="do not match shape"):
        optim.t5x_shape((4, 8), ("heads", "kv", "embed"))


@pytest.mark.parametrize("options", [{}, {"adafactor_momentum": 0.9, "weight_decay": 1e-2}])
def test_update_is_optax_adafactors_on_the_2d_view_reshaped_back(options):
    schedule = optim.learning_rate_schedule("constant", learning_rate=1e-2)
    opt = optim.make_optimizer("adafactor", schedule=schedule, param_axes=AXES, **options)
    ref = optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0,
                          momentum=options.get("adafactor_momentum"),
                          multiply_by_parameter_scale=True,
                          weight_decay_rate=options.get("weight_decay"))
    params = _random(0)
    state, ref_state = opt.init(params), ref.init(_view(params))
    for step in range(3):  # fresh gradients and params each step, state carried
        grads, params = _random(10 + step, scale=10.0 ** (step - 1)), _random(20 + step)
        updates, state = opt.update(grads, state, params)
        want, ref_state = ref.update(_view(grads), ref_state, _view(params))
        for name, shape in SHAPES.items():
            assert updates[name].shape == shape
            np.testing.assert_array_equal(updates[name], want[name].reshape(shape))
        jax.tree.map(np.testing.assert_array_equal, state, ref_state)
    rms = optax.tree_utils.tree_get(state, "v_row")
    assert rms["q"].shape == rms["o"].shape == (256,)  # factored, as t5x does
    assert optax.tree_utils.tree_get(state, "v")["q"].shape == (1,)


def test_rms_clipping_and_parameter_scale_do_not_see_the_shape():
    grads, params = _random(1, scale=100.0), _random(2)
    x, p = grads["q"], params["q"]
    for tx in (optax.clip_by_block_rms(1.0), optax.scale_by_param_block_rms()):
        got, _ = tx.update({"q": x}, tx.init({"q": p}), {"q": p})
        flat, _ = tx.update({"q": x.reshape(256, 256)}, tx.init({"q": p.reshape(256, 256)}),
                            {"q": p.reshape(256, 256)})
        np.testing.assert_allclose(got["q"], flat["q"].reshape(x.shape), rtol=1e-6)
        assert not np.allclose(got["q"], x)  # the transformation did act
    # With factoring off, the whole Adafactor update is the same in either shape.
    schedule = optax.constant_schedule(1e-2)
    plain = optax.adafactor(schedule, factored=False)
    viewed = optim.factor_like_t5x(optax.adafactor(schedule, factored=False), AXES)
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = viewed.update(grads, viewed.init(params), params)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), a, b)


def test_the_switch_or_missing_axes_leave_3d_kernels_unfactored(caplog):
    params = _random(0)
    off = optim.make_optimizer("adafactor", param_axes=AXES, adafactor_factor_like_t5x=False)
    assert optax.tree_utils.tree_get(off.init(params), "v")["q"].shape == SHAPES["q"]
    optim._warned_no_axes = False  # noqa: SLF001 - the warning is logged once per process
    with caplog.at_level("WARNING", logger="flan_jax.train.optim"):
        for _ in range(2):
            bare = optim.make_optimizer("adafactor")
    assert len([r for r in caplog.records if "no param_axes" in r.message]) == 1
    assert optax.tree_utils.tree_get(bare.init(params), "v")["q"].shape == SHAPES["q"]
    adamw = optim.make_optimizer("adamw", param_axes=AXES)  # AdamW is shape-blind anyway
    assert optax.tree_utils.tree_get(adamw.init(params), "mu")["q"].shape == SHAPES["q"]


def test_axes_that_do_not_fit_the_params_are_refused():
    opt = optim.factor_like_t5x(optax.adafactor(1e-3), {"q": AXES["q"]})
    with pytest.raises(ValueError, match="tree structure"):
        opt.init(_random(0))


def test_parameter_scale_switch():
    """Off (prompt tuning, as Lester et al.), the update no longer grows with the param's
    RMS: params 10x larger get the same update; on (t5x's default), a 10x larger one."""
    grads, params = _random(1), _random(2)
    big = jax.tree.map(lambda p: 10.0 * p, params)
    schedule = optax.constant_schedule(1e-2)

    def update(params, **kw):
        opt = optim.make_optimizer("adafactor", schedule=schedule, param_axes=AXES, **kw)
        return opt.update(grads, opt.init(params), params)[0]["q"]

    off = dict(adafactor_multiply_by_parameter_scale=False)
    np.testing.assert_allclose(update(big, **off), update(params, **off), rtol=1e-5)
    np.testing.assert_allclose(update(big), 10.0 * update(params), rtol=1e-4)
