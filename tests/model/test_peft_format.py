"""LoRA adapters in Hugging Face PEFT's layout: what flan-jax exports, peft loads onto the HF
base with the same logits; what peft makes, flan-jax imports with the same logits; the merged
model exported to HF equals the unmerged flan-jax one; what doesn't fit is refused by name."""

import json

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

from flan_jax.errors import CheckpointError, ConfigError
from flan_jax.model import model_from_params
from flan_jax.model.convert import load_hf_checkpoint, save_hf_checkpoint
from flan_jax.model.lora import LoraConfig, apply_lora, merge_lora, split_params
from flan_jax.model.peft_format import (CONFIG, WEIGHTS, base_of, is_adapters_dir,
                                        is_peft_dir, load_any_adapters, load_peft, save_peft)
from tests.model.hf_reference import make_hf_model, padded_batch, save_hf_model
from tests.model.test_lora import randomize_b

TOL = 1e-4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(HF base dir, flan-jax cfg, base params): a gated T5 1.1 of 2 + 3 layers."""
    path = save_hf_model(make_hf_model("t5_1_1", seed=3),
                         tmp_path_factory.mktemp("peft") / "hf")
    cfg, params = load_hf_checkpoint(path)
    return path, cfg, params


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x, xm = padded_batch(rng, 99, batch=3, max_len=19)
    y, ym = padded_batch(rng, 99, batch=3, max_len=11)
    dec = np.concatenate([np.zeros_like(y[:, :1]), y[:, :-1] * ym[:, :-1]], axis=1)
    return x, xm, dec, ym


def hf_logits(model, batch):
    x, xm, dec, _ = batch
    with torch.no_grad():
        return model(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()


def ours_logits(model, batch):
    x, _, dec, _ = batch
    return np.asarray(model(jnp.asarray(x), jnp.asarray(dec)))


def rel_err(got, want, ym):
    mask = np.broadcast_to(ym[..., None] == 1, want.shape)
    return np.max(np.abs(got - want)[mask]) / np.max(np.abs(want)[mask])


def adapted(cfg, params, lora, seed=1):
    """The base with `lora`'s adapters, B random so that they matter."""
    return randomize_b(apply_lora(model_from_params(cfg, params), lora,
                                  rngs=nnx.Rngs(params=seed)), seed)


def hf_base(path):
    import transformers
    return transformers.T5ForConditionalGeneration.from_pretrained(path).eval()


# Every layout (q/k/v [e, h, d], o [h, d, e], gated MLP) and, second, a selection that
# peft's short names can't say (decoder self-attention q only) and so goes out as a regex.
@pytest.mark.parametrize("lora,names", [
    (LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "mlp_in", "mlp_out")),
     ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]),
    (LoraConfig(rank=2, targets=("self_q",), stacks=("decoder",)), None)])
def test_exported_adapters_load_in_peft_with_the_same_logits(base, batch, tmp_path, lora,
                                                             names):
    path, cfg, params = base
    model = adapted(cfg, params, lora)
    out = save_peft(tmp_path / "peft", cfg, lora, split_params(model)[1], base=str(path))
    config = json.loads((out / CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (
        lora.rank, lora.alpha, "SEQ_2_SEQ_LM")
    if names is not None:
        assert config["target_modules"] == names
    else:  # a regex peft full-matches against module names
        assert config["target_modules"] == (
            r"decoder\.block\.\d+\.layer\.0\.SelfAttention\.(?:q)")
    hf = peft.PeftModel.from_pretrained(hf_base(path), out).eval()
    n = sum(1 for name, _ in hf.named_modules() if name.endswith(".lora_A.default"))
    assert n == sum(1 for p in _leaf_paths(split_params(model)[1]) if p[-1] == "lora_a")
    assert rel_err(ours_logits(model, batch), hf_logits(hf, batch), batch[3]) <= TOL
    # ... and it comes back as it went out
    got_cfg, got = load_peft(out, cfg)
    assert got_cfg == lora
    want = dict(_leaf_paths(split_params(model)[1], values=True))
    assert all(np.array_equal(v, want[p]) for p, v in _leaf_paths(got, values=True))


def test_a_peft_made_adapter_imports_with_the_same_logits(base, batch, tmp_path):
    path, cfg, params = base
    made = peft.get_peft_model(hf_base(path), peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["q", "v", "wo"], task_type="SEQ_2_SEQ_LM",
        init_lora_weights=False))  # (B random too: the adapters change the model)
    made.save_pretrained(tmp_path / "made")
    lora, adapters = load_any_adapters(tmp_path / "made", cfg)
    assert lora == LoraConfig(rank=3, alpha=6.0, targets=("q", "v", "mlp_out"))
    model = apply_lora(model_from_params(cfg, params), lora, rngs=nnx.Rngs(params=0))
    nnx.update(model, nnx.state(model_from_params(cfg, params)))  # (the base, unchanged)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.replace_by_pure_dict(state, adapters)
    nnx.update(model, state)
    assert rel_err(ours_logits(model, batch), hf_logits(made.eval(), batch), batch[3]) <= TOL


def test_merged_model_exported_to_hf_equals_the_unmerged_one(base, batch, tmp_path):
    path, cfg, params = base
    lora = LoraConfig(rank=4, targets=("q", "o", "mlp_in"))
    model = adapted(cfg, params, lora)
    merged = merge_lora(params, split_params(model)[1], lora)
    out = save_hf_checkpoint(tmp_path / "merged", cfg, merged)
    assert rel_err(ours_logits(model, batch), hf_logits(hf_base(out), batch), batch[3]) <= TOL


def test_what_flan_jax_lora_cannot_express_is_refused_by_name(base, tmp_path):
    path, cfg, params = base
    made = peft.get_peft_model(hf_base(path), peft.LoraConfig(
        r=2, target_modules=["q"], task_type="SEQ_2_SEQ_LM", use_dora=True))
    made.save_pretrained(tmp_path / "dora")
    with pytest.raises(ConfigError, match=r"adapter_config.json: use_dora=True"):
        load_peft(tmp_path / "dora", cfg)
    few = peft.get_peft_model(hf_base(path), peft.LoraConfig(
        r=2, target_modules=r"encoder\.block\.0\.layer\.0\.SelfAttention\.q",
        task_type="SEQ_2_SEQ_LM"))  # one layer only
    few.save_pretrained(tmp_path / "few")
    with pytest.raises(ConfigError, match=r"not one LoraConfig.*no adapter on encoder/layers/1"):
        load_peft(tmp_path / "few", cfg)
    config = json.loads((tmp_path / "few" / CONFIG).read_text())
    (tmp_path / "few" / CONFIG).write_text(json.dumps({**config, "r": 5}))
    with pytest.raises(ConfigError, match=r"SelfAttention.q has rank 2, .* r=5"):
        load_peft(tmp_path / "few", cfg)
    with pytest.raises(CheckpointError, match="neither a flan-jax adapters dir"):
        load_any_adapters(path, cfg)


def test_decoder_only_adapters_have_no_peft_layout(base, tmp_path):
    _, cfg, _ = base
    import dataclasses
    lone = dataclasses.replace(cfg, architecture="decoder_only")
    with pytest.raises(ConfigError, match="architecture='decoder_only'.*flan-jax's layout"):
        save_peft(tmp_path / "x", lone, LoraConfig(rank=2), {})
    assert not (tmp_path / "x").exists()


def test_dir_kinds_and_recorded_base(base, tmp_path):
    path, cfg, params = base
    lora = LoraConfig(rank=2)
    adapters = split_params(adapted(cfg, params, lora))[1]
    from flan_jax.model.lora import save_adapters
    ours = save_adapters(tmp_path / "ours", lora, adapters, base="/models/b")
    theirs = save_peft(tmp_path / "theirs", cfg, lora, adapters, base="google/flan-t5-small")
    assert (is_adapters_dir(ours), is_peft_dir(ours)) == (True, False)
    assert (is_adapters_dir(theirs), is_peft_dir(theirs)) == (False, True)
    assert (base_of(ours), base_of(theirs)) == ("/models/b", "google/flan-t5-small")
    assert (theirs / WEIGHTS).is_file()


def _leaf_paths(tree, prefix=(), values=False):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaf_paths(v, prefix + (k,), values)
        else:
            yield (prefix + (k,), np.asarray(v)) if values else prefix + (k,)


def test_convert_command_moves_adapters_between_layouts_and_merges(base, tmp_path, capsys):
    from flan_jax.cli import main
    from flan_jax.model.lora import save_adapters
    path, cfg, params = base
    lora = LoraConfig(rank=2, targets=("q", "mlp_out"))
    adapters = split_params(adapted(cfg, params, lora))[1]
    ours = save_adapters(tmp_path / "run" / "adapters", lora, adapters, base=str(path))
    assert main(["convert", str(ours), str(tmp_path / "peft"),
                 "--base_name", "google/flan-t5-small"]) == 0
    assert "wrote peft adapters (LoRA rank 2" in capsys.readouterr().out
    assert base_of(tmp_path / "peft") == "google/flan-t5-small"
    # What it records is no directory here: the command says to give --base.
    assert main(["convert", str(tmp_path / "peft"), str(tmp_path / "back")]) == 2
    assert "give the model the adapters were trained on with --base" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "peft"), str(tmp_path / "back"),
                 "--base", str(path)]) == 0
    assert load_any_adapters(tmp_path / "back", cfg)[0] == lora
    assert main(["convert", str(tmp_path / "back"), str(tmp_path / "merged"), "--merge"]) == 0
    assert "wrote hf model" in capsys.readouterr().out  # (the base's own format)
    _, merged = load_hf_checkpoint(tmp_path / "merged")
    want = merge_lora(params, adapters, lora)
    for p, v in _leaf_paths(merged, values=True):
        np.testing.assert_allclose(v, np.asarray(_get(want, p)), atol=1e-6)
    # Flags that only mean something for adapters are refused for a model dir, and back.
    assert main(["convert", str(path), str(tmp_path / "x"), "--merge"]) == 2
    assert "is a model dir; --merge" in capsys.readouterr().err
    assert main(["convert", str(ours), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "add --merge" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree
