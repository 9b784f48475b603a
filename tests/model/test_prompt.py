"""Prompt tuning: a prompt of length 0 is the model as before, a prompt made of token
embeddings is exactly those tokens written before the inputs (encoder, cross-attention and the
decoding cache alike: an independent reference), gradients reach only the prompt, padding rows
change nothing, and the prompt inits, validates, shards and round-trips through its dir."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from flan_jax import parallel
from flan_jax.decode import greedy_decode
from flan_jax.errors import ConfigError
from flan_jax.model import create_model, get_config, params_of
from flan_jax.model.config import T5Config
from flan_jax.model.lora import load_adapters, save_adapters, split_axes, split_params
from flan_jax.model.prompt import PromptConfig, PromptParam, init_prompt
from flan_jax.train.step import LossConfig, forward, init_state, train_step

PROMPT_IDS = np.asarray([5, 9, 11], np.int32)  # (no pad / eos: their segment ids are 1 too)


def config(**overrides):
    return get_config("flan_t5-tiny", **{"vocab_size": 64, "num_encoder_layers": 1,
                                         "num_decoder_layers": 2, **overrides})


def batch(rows=3, le=7, ld=5):
    """Rows of different lengths; the last is all padding (loss weight 0)."""
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 64, (rows, le)).astype(np.int32)
    enc[1, 4:] = 0
    enc[-1] = 0
    targets = rng.integers(2, 64, (rows, ld)).astype(np.int32)
    weights = np.ones((rows, ld), np.float32)
    weights[-1] = 0
    return {"encoder_input_tokens": jnp.asarray(enc),
            "decoder_input_tokens": jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0)))),
            "decoder_target_tokens": jnp.asarray(targets),
            "decoder_loss_weights": jnp.asarray(weights)}


def prompted_pair(ids=PROMPT_IDS, seed=0):
    """(plain model, the same model with a prompt of the embeddings of `ids`)."""
    cfg = config()
    plain = create_model(cfg, seed=seed)
    prompted = create_model(cfg.replace(prompt_length=len(ids)), seed=seed)
    prompted.prompt[...] = prompted.token_embedder.embedding[...][ids]
    return plain, prompted


def test_prompt_length_zero_is_the_model_as_before():
    cfg = config()
    assert cfg.prompt_length == 0 and create_model(cfg).prompt is None
    assert "prompt" not in params_of(create_model(cfg))
    # A config.json written before the field loads with no prompt.
    old = {k: v for k, v in cfg.to_dict().items() if k != "prompt_length"}
    assert T5Config.from_dict(old) == cfg
    # A prompt is drawn last: every other param of the same seed is the plain model's.
    plain = params_of(create_model(cfg, seed=3))
    base, adapters = split_params(create_model(cfg.replace(prompt_length=4), seed=3))
    assert jax.tree.all(jax.tree.map(np.array_equal, base, plain))
    assert jax.tree.map(np.shape, adapters) == {"prompt": (4, cfg.d_model)}


def test_a_prompt_of_token_embeddings_is_those_tokens_before_the_inputs():
    """The reference: the plain model on [prompt ids, inputs] sees the same positions,
    segments and cross-attention mask as the prompted model on the inputs."""
    plain, prompted = prompted_pair()
    b = batch()
    enc = b["encoder_input_tokens"]
    joined = jnp.concatenate([jnp.broadcast_to(PROMPT_IDS, (enc.shape[0], 3)), enc], axis=1)
    run = nnx.jit(lambda model, b: (model.encode(b["encoder_input_tokens"]), forward(model, b)))
    encoded, got = run(prompted, b)
    want_encoded, want = run(plain, {**b, "encoder_input_tokens": joined})
    assert encoded.shape == (3, 3 + 7, prompted.cfg.d_model)
    np.testing.assert_allclose(encoded, want_encoded, atol=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # ...and the decoding cache (init_cache covers the prompt in the cross-attention mask)
    decoded = greedy_decode(prompted, enc, max_decode_len=4, return_logits=True)
    reference = greedy_decode(plain, joined, max_decode_len=4, return_logits=True)
    np.testing.assert_array_equal(decoded.tokens, reference.tokens)
    np.testing.assert_allclose(decoded.step_logits, reference.step_logits, atol=1e-5)
    # The prompt matters: to the encoded tokens and, through cross-attention, the decoder
    # (the all-pad row's decoder sees the prompt alone).
    other = create_model(prompted.cfg, seed=0)
    other.prompt[...] = prompted.prompt[...] + 0.5
    other_encoded, other_logits = run(other, b)
    assert not np.allclose(other_encoded[:, 3:], encoded[:, 3:], atol=1e-3)
    moved = np.abs(np.asarray(other_logits - got)).max(axis=(1, 2))
    assert (moved > 1e-3).all(), moved


def test_gradients_reach_only_the_prompt_and_padding_rows_change_nothing():
    _, model = prompted_pair()
    graphdef = nnx.graphdef(model)
    frozen, prompt = split_params(model)
    optimizer = optax.adafactor(0.3)
    step = jax.jit(lambda s, b, f: train_step(s, b, f, graphdef=graphdef, optimizer=optimizer,
                                              loss_cfg=LossConfig()))
    b = batch()
    state, metrics = step(init_state(prompt, optimizer), b, frozen)
    assert set(state.params) == {"prompt"} and np.isfinite(metrics["loss"])
    assert not np.array_equal(state.params["prompt"], prompt["prompt"])
    first = float(metrics["loss"])
    for _ in range(8):
        state, metrics = step(state, b, frozen)
    assert float(metrics["loss"]) < first
    # The all-pad row is inert: whatever its targets, the update is the same (weights 0, and
    # no attention crosses rows), and finite.
    junk = {**b, "decoder_input_tokens": b["decoder_input_tokens"].at[-1].set(7),
            "decoder_target_tokens": b["decoder_target_tokens"].at[-1].set(9)}
    a, _ = step(init_state(prompt, optimizer), b, frozen)
    c, _ = step(init_state(prompt, optimizer), junk, frozen)
    np.testing.assert_array_equal(a.params["prompt"], c.params["prompt"])
    assert np.isfinite(a.params["prompt"]).all()


def test_init_sampled_vocab_and_uniform():
    emb = jnp.arange(40 * 4, dtype=jnp.float32).reshape(40, 4)
    prompt = init_prompt(jax.random.key(0), emb, 6, population=10)
    ids = np.asarray(prompt[:, 0]).astype(int) // 4
    assert prompt.shape == (6, 4) and len(set(ids)) == 6 and ids.max() < 10
    np.testing.assert_array_equal(prompt, emb[ids])
    uniform = init_prompt(jax.random.key(0), emb, 6, init="uniform", scale=0.5)
    assert uniform.shape == (6, 4) and float(jnp.abs(uniform).max()) <= 0.5
    # PromptConfig's init reads the (frozen) base's embeddings
    base = {"token_embedder": {"embedding": emb}}
    got = PromptConfig(length=3, init_vocab=10).initial_params(base, seed=1)["prompt"]
    assert got.shape == (3, 4) and all(float(r[0]) // 4 < 10 for r in got)


@pytest.mark.parametrize("field, value, match", [
    ("length", -1, "PromptConfig.length"), ("init", "zeros", "PromptConfig.init"),
    ("init_vocab", 0, "PromptConfig.init_vocab"), ("init_range", 0.0, "init_range")])
def test_bad_prompt_settings_are_refused_naming_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        PromptConfig(**{field: value})


def test_a_prompt_needs_an_encoder():
    with pytest.raises(ValueError, match="T5Config.prompt_length=4.*'decoder_only'"):
        config(architecture="decoder_only", prompt_length=4)


def test_the_prompt_is_an_adapter_with_axes_the_rules_shard():
    model = PromptConfig(length=4).adapted_model(config())
    assert isinstance(model.prompt, PromptParam) and isinstance(model.prompt, nnx.LoRAParam)
    _, axes = split_axes(model)
    assert axes == {"prompt": ("prompt", "embed")}
    mesh = AbstractMesh((2, 2, 2), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    sh = parallel.param_shardings(split_params(model)[1], axes, parallel.DEFAULT_RULES, mesh)
    assert sh["prompt"].spec == P(None, "fsdp")


def test_the_prompt_round_trips_through_its_adapters_dir(tmp_path):
    cfg = config()
    prompt_cfg = PromptConfig(length=3, init="uniform")
    _, adapters = split_params(create_model(cfg.replace(prompt_length=3), seed=2))
    save_adapters(tmp_path / "adapters", prompt_cfg, adapters, base="/models/base")
    assert (tmp_path / "adapters" / "prompt_config.json").is_file()
    got_cfg, got = load_adapters(tmp_path / "adapters", cfg, kind=PromptConfig)
    assert got_cfg == prompt_cfg
    np.testing.assert_array_equal(got["prompt"], adapters["prompt"])
