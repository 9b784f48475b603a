"""The train step: losses, normalization, accumulation, dropout keys, learning on a batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flan_jax.model.config import get_config
from flan_jax.model.losses import mean_cross_entropy, token_losses
from flan_jax.model.params import create_model, param_axes, params_of
from flan_jax.train import optim
from flan_jax.train.step import LossConfig, init_state, train_step

CFG = get_config("t5_1_1-tiny", num_encoder_layers=1, num_decoder_layers=1, vocab_size=64)


def _batch(b=4, le=12, ld=6, seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, CFG.vocab_size, (b, le)).astype(np.int32)
    tgt = rng.integers(2, CFG.vocab_size, (b, ld)).astype(np.int32)
    enc[0, -3:] = 0  # some padding
    tgt[1, -2:] = 0
    weights = (tgt > 0).astype(np.int32)
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": weights}


def _run(loss_cfg=LossConfig(z_loss=0.0), microbatches=1, opt=None, steps=1, batch=None,
         dropout_seed=None, cfg=CFG):
    model = create_model(cfg, seed=0)
    graphdef = nnx.graphdef(model)
    opt = opt or optax.sgd(0.1)
    state = init_state(params_of(model), opt)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=opt,
                                     loss_cfg=loss_cfg, microbatches=microbatches,
                                     dropout_seed=dropout_seed))
    batch = batch or _batch()
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history, model


def test_loss_is_the_mean_cross_entropy_over_real_target_tokens():
    _, (metrics,), model = _run()
    b = _batch()
    logits = model(b["encoder_input_tokens"], b["decoder_input_tokens"])
    want = mean_cross_entropy(logits, b["decoder_target_tokens"], b["decoder_loss_weights"])
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    assert metrics["target_tokens"] == b["decoder_loss_weights"].sum()
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_accumulating_microbatches_equals_one_big_batch():
    s1, (m1,), _ = _run(microbatches=1)
    s2, (m2,), _ = _run(microbatches=2)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="can't be split into 3 microbatches"):
        _run(microbatches=3)


def test_z_loss_and_label_smoothing_match_their_definitions():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 3, 10)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 10, (2, 3)))
    loss, z = token_losses(logits, targets, z_loss=1e-2)
    log_z = jax.nn.logsumexp(logits, -1)
    np.testing.assert_allclose(z, 1e-2 * log_z**2, rtol=1e-6)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(loss, ce + z, rtol=1e-5)
    smooth, _ = token_losses(logits, targets, label_smoothing=0.1)
    soft = jax.nn.one_hot(targets, 10) * 0.9 + (1 - jax.nn.one_hot(targets, 10)) * 0.1 / 9
    entropy = -jnp.sum(soft * jnp.log(soft), -1)
    np.testing.assert_allclose(smooth, optax.softmax_cross_entropy(logits, soft) - entropy,
                               rtol=1e-5, atol=1e-6)
    # a model predicting exactly the smoothed distribution scores zero
    perfect, _ = token_losses(jnp.log(soft), targets, label_smoothing=0.1)
    np.testing.assert_allclose(perfect, 0.0, atol=1e-5)


def test_constant_normalization_divides_by_the_factor():
    _, (tok,), _ = _run(LossConfig(z_loss=0.0))
    _, (const,), _ = _run(LossConfig(z_loss=0.0, normalization="constant",
                                     normalizing_factor=100.0))
    np.testing.assert_allclose(const["loss"] * 100.0, tok["loss"] * tok["target_tokens"],
                               rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"normalization": "mean"}, "normalization='mean'"),
    ({"normalization": "constant"}, "normalizing_factor"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_bad_loss_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_dropout_is_keyed_by_seed_and_step():
    cfg = get_config("t5_1_1-tiny", num_encoder_layers=1, num_decoder_layers=1,
                     vocab_size=64, dropout_rate=0.3)
    _, a, _ = _run(dropout_seed=1, cfg=cfg, steps=2)
    _, b, _ = _run(dropout_seed=1, cfg=cfg, steps=2)
    _, c, _ = _run(dropout_seed=2, cfg=cfg, steps=2)
    _, off, _ = _run(dropout_seed=None, cfg=cfg, steps=1)
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert a[0]["loss"] != c[0]["loss"] and a[0]["loss"] != off[0]["loss"]


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_each_optimizer_fits_a_fixed_batch(name):
    schedule = optim.learning_rate_schedule("constant", learning_rate=1e-2 if name == "adamw"
                                            else 3e-2)
    opt = optim.make_optimizer(name, schedule=schedule, clip_grad_norm=1.0,
                               param_axes=param_axes(create_model(CFG)))
    _, history, _ = _run(LossConfig(), opt=opt, steps=30)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert all(np.isfinite(m["loss"]) for m in history)
