"""`flan-jax train --gin_file=runs/finetune.gin --gin_file=peft/prompt_tuning.gin` on a tiny
flan-jax model dir: only the soft prompt trains and is checkpointed, the loss falls, the
exported model dir (the base + its prompt, `T5Config.prompt_length`) loads with the normal
loader and gives the trained model's logits; a run resumed from a checkpoint
continues exactly; packed rows are refused naming DataConfig.pack before any work;
`flan-jax plan` counts prompt_length * d_model trainable params."""

import concurrent.futures
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.train.test_lora_train import FAST, SHAPES, _stored_names
from tests.train.test_loop import _cli, _losses

STEPS, HALF, LENGTH = 6, 3, 4


def _args(base, model_dir, steps=STEPS, extra=()):
    return ["train", "--gin_file=runs/finetune.gin", "--gin_file=peft/prompt_tuning.gin",
            f"--gin.PromptConfig.length={LENGTH}",
            f"--gin.train.init_from='{base}'", f"--gin.train.model_dir='{model_dir}'",
            f"--gin.train.total_steps={steps}", f"--gin.train.checkpoint_every={HALF}",
            "--gin.train.evaluate=False", "--gin.train.log_every=1",
            "--gin.DataConfig.batch_size=4", "--gin.DataConfig.workers=0",
            "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}", *extra]


def _half_then_resumed(base, model_dir):
    """A run that stops at its step-3 checkpoint, then the same dir resumed to step 6."""
    return {"half": _cli(*_args(base, model_dir, steps=HALF), env=FAST),
            "resumed": _cli(*_args(base, model_dir), env=FAST)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from flan_jax.model import create_model, get_config, params_of
    from flan_jax.model.io import save_pretrained

    root = tmp_path_factory.mktemp("prompt")
    cfg = get_config("flan_t5-tiny", **SHAPES)
    save_pretrained(root / "base", cfg, params_of(create_model(cfg, seed=0)))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # (each run: mostly one core)
        straight = pool.submit(_cli, *_args(root / "base", root / "straight"), env=FAST)
        resumed = pool.submit(_half_then_resumed, root / "base", root / "resumed")
        return {"root": root, "cfg": cfg, "straight": straight.result(), **resumed.result()}


def test_only_the_prompt_trains_and_the_export_is_the_base_with_it(runs):
    from flan_jax.model.io import load_pretrained
    from flan_jax.model.lora import load_adapters
    from flan_jax.model.params import model_from_params
    from flan_jax.model.prompt import PromptConfig
    from flan_jax.train.infer import load
    from flan_jax.train.step import forward

    root, cfg, proc = runs["root"], runs["cfg"], runs["straight"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = root / "straight"
    losses = _losses(d)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1], losses  # (Adafactor, lr 0.3, as peft/prompt_tuning.gin)
    # The checkpoint: step, the prompt and its Adafactor state; no base weight.
    names = _stored_names(d / "checkpoints" / str(STEPS))
    assert {n for n in names if n.startswith("params/")} == {"params/prompt"}
    assert all(n == "step" or "prompt" in n or n.endswith("count") for n in names), names
    # adapters/: the prompt alone; model/: the base, untouched, with the trained prompt.
    prompt_cfg, adapters = load_adapters(d / "adapters", cfg, kind=PromptConfig)
    assert prompt_cfg == PromptConfig(length=LENGTH)
    assert json.loads((d / "adapters" / "prompt_config.json").read_text())["base_model"] == (
        str(root / "base"))
    _, base = load_pretrained(root / "base")
    got_cfg, exported = load_pretrained(d / "model")
    assert got_cfg == cfg.replace(prompt_length=LENGTH, dropout_rate=0.05)
    assert (d / "model" / "trained_on.json").exists()
    np.testing.assert_array_equal(exported.pop("prompt"), adapters["prompt"])
    assert jax.tree.all(jax.tree.map(np.array_equal, exported, base))
    # It started at rows of the base's embedding (sampled vocab) and moved off them.
    embedding = np.asarray(base["token_embedder"]["embedding"])
    assert all(np.abs(embedding - row).max(axis=1).min() > 1e-3 for row in adapters["prompt"])
    # The normal loader (infer / eval) gives the trained model's logits.
    model, _ = load(d / "model")
    trained = model_from_params(got_cfg, {**base, "prompt": adapters["prompt"]})
    rng = np.random.default_rng(0)
    batch = {"encoder_input_tokens": jnp.asarray(rng.integers(2, 512, (2, 9)), jnp.int32),
             "decoder_input_tokens": jnp.asarray(rng.integers(2, 512, (2, 5)), jnp.int32)}
    logits = nnx.jit(forward)  # (one compilation: the two have one graph)
    assert model.cfg.prompt_length == LENGTH
    np.testing.assert_array_equal(logits(model, batch), logits(trained, batch))


def test_a_prompt_tuning_run_resumed_from_a_checkpoint_continues_exactly(runs):
    from flan_jax.model.io import load_pretrained

    root = runs["root"]
    for name in ("straight", "half", "resumed"):
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    assert "| 3/6 [" in runs["resumed"].stderr  # (its progress starts at the checkpoint)
    want, got = root / "straight", root / "resumed"
    assert _losses(got) == _losses(want)  # exactly
    (_, params), (_, ref) = load_pretrained(got / "model"), load_pretrained(want / "model")
    assert jax.tree.all(jax.tree.map(np.array_equal, params, ref))


FINETUNE = ["runs/finetune.gin", "peft/prompt_tuning.gin"]
# (gin files, bindings, what the error says); a finetune's train.init_from does not exist:
# each is refused before it would be read.
REFUSED = {
    "packed": (FINETUNE, ["DataConfig.pack=True"],
               r"DataConfig.pack=True with PromptConfig.length=20: .* set DataConfig.pack=False"),
    "with_lora": (["runs/finetune.gin", "peft/lora.gin", "peft/prompt_tuning.gin"], [],
                  r"LoraConfig.rank=8 and PromptConfig.length=20: a run trains one kind"),
    "decoder_only": (["runs/demo.gin", "arch/decoder_only.gin", "peft/prompt_tuning.gin"],
                     [], r"PromptConfig.length=20: .*T5Config.architecture='decoder_only'"),
    "bound_length": (["runs/demo.gin"], ["T5Config.prompt_length=4"],
                     r"T5Config.prompt_length: .* set PromptConfig.length"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_prompt_tuning_cannot_do_is_refused_naming_the_bindings_before_any_work(
        case, tmp_path):
    from flan_jax import gin_utils
    from flan_jax.errors import ConfigError
    from flan_jax.train.loop import train

    files, bindings, match = REFUSED[case]
    gin.clear_config()
    try:
        base = [f"train.init_from='{tmp_path / 'no_base'}'"] if files[0] == FINETUNE[0] else []
        gin_utils.parse(files, [*base, f"train.model_dir='{tmp_path / 'run'}'", *bindings],
                        finalize=False)
        with pytest.raises(ConfigError, match=match):
            train()
    finally:
        gin.clear_config()
    assert not (tmp_path / "run").exists()


def test_plan_counts_the_prompt_as_the_trainable_params(runs, capsys):
    from flan_jax import cli

    argv = ["plan", "--devices", "1", "--gin_file=runs/finetune.gin",
            "--gin_file=peft/prompt_tuning.gin", f"--gin.train.init_from='{runs['root']}/base'",
            "--gin.train.model_dir='/tmp/unused'",
            "--gin.DataConfig.task_feature_lengths={'inputs': 64, 'targets': 16}", "--json"]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    plan = json.loads(capsys.readouterr().out)
    d_model = runs["cfg"].d_model
    assert plan["trainable_param_count"] == 20 * d_model  # peft/prompt_tuning.gin's 20
    assert plan["gradients"] == 4 * 20 * d_model and plan["optimizer_name"] == "adafactor"
    assert plan["peft"].startswith("a soft prompt of 20 vectors")
    assert plan["stacks"][0]["length"] == 20 + 64  # the encoder runs over the prompt too
