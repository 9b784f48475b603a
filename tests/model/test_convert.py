"""Hugging Face <-> flan-jax conversion: round trips, sharded checkpoints, and clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from flan_jax.model import model_from_params
from flan_jax.model.convert import (CheckpointError, load_hf_checkpoint, params_to_hf_tensors,
                                    save_hf_checkpoint)
from flan_jax.model.io import load_pretrained, save_pretrained
from tests.model.hf_reference import make_hf_model, padded_batch, save_hf_model


def _assert_bit_exact(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_import_export_import_is_bit_exact_and_loads_in_transformers(hf_pair, tmp_path):
    variant, hf, _, cfg, model = hf_pair
    cfg1, params1 = load_pretrained(hf_pair[2])
    exported = save_hf_checkpoint(tmp_path / "export", cfg1, params1)
    cfg2, params2 = load_hf_checkpoint(exported)
    assert cfg2 == cfg1
    _assert_bit_exact(params1, params2)

    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(exported).eval()
    rng = np.random.default_rng(5)
    x, xm = padded_batch(rng, cfg.vocab_size, 3, 20)
    dec = np.asarray(padded_batch(rng, cfg.vocab_size, 3, 9)[0])
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                  decoder_input_ids=torch.tensor(dec)).logits.numpy()
        got = reloaded(input_ids=torch.tensor(x), attention_mask=torch.tensor(xm),
                       decoder_input_ids=torch.tensor(dec)).logits.numpy()
    np.testing.assert_array_equal(got, want)


def test_flan_jax_directory_round_trip(hf_pair, tmp_path):
    _, _, hf_dir, cfg, _ = hf_pair
    _, params = load_hf_checkpoint(hf_dir)
    out = save_pretrained(tmp_path / "fj", cfg, params)
    cfg2, params2 = load_pretrained(out)
    assert cfg2 == cfg
    _assert_bit_exact(params, jax.tree.map(np.asarray, params2))


def test_sharded_safetensors_index_loads(tmp_path):
    hf = make_hf_model("t5_1_1", seed=4)
    hf.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    cfg, params = load_hf_checkpoint(tmp_path / "sharded")
    hf.save_pretrained(tmp_path / "single", safe_serialization=True)
    _, want = load_hf_checkpoint(tmp_path / "single")
    _assert_bit_exact(params, want)


def test_bfloat16_checkpoint_is_read(tmp_path):
    hf = make_hf_model("t5_1_1", seed=4).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16", safe_serialization=True)
    cfg, params = load_hf_checkpoint(tmp_path / "bf16")
    assert {np.asarray(p).dtype for p in jax.tree.leaves(params)} == {np.dtype("float32")}
    cfg, params = load_hf_checkpoint(tmp_path / "bf16", param_dtype="bfloat16")
    model = model_from_params(cfg, params)
    assert model.token_embedder.embedding[...].dtype == jnp.bfloat16


@pytest.fixture()
def hf_dir(tmp_path):
    return save_hf_model(make_hf_model("t5_1_1", seed=2), tmp_path / "hf")


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor_is_named(hf_dir):
    name = "decoder.block.2.layer.2.DenseReluDense.wi_1.weight"
    _edit_tensors(hf_dir, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        load_hf_checkpoint(hf_dir)


def test_unexpected_tensor_is_named(hf_dir):
    _edit_tensors(hf_dir, lambda t: t.update({"encoder.block.9.extra.weight": np.ones(2)}))
    with pytest.raises(CheckpointError, match="unexpected.*encoder.block.9.extra.weight"):
        load_hf_checkpoint(hf_dir)


def test_embedding_aliases_must_equal_shared(hf_dir):
    tensors = load_file(hf_dir / "model.safetensors")
    shared = tensors["shared.weight"]
    _edit_tensors(hf_dir, lambda t: t.update({"encoder.embed_tokens.weight": shared.copy()}))
    load_hf_checkpoint(hf_dir)  # an equal copy is fine
    _edit_tensors(hf_dir, lambda t: t.update({"decoder.embed_tokens.weight": shared + 1}))
    with pytest.raises(CheckpointError, match="'decoder.embed_tokens.weight' differs"):
        load_hf_checkpoint(hf_dir)


def test_wrong_shape_is_named(hf_dir):
    name = "encoder.block.1.layer.0.SelfAttention.k.weight"
    _edit_tensors(hf_dir, lambda t: t.update({name: np.ones((7, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"'{name}' has shape \(7, 32\), expected \(32, 32\)"):
        load_hf_checkpoint(hf_dir)


@pytest.mark.parametrize("field,value,message", [
    ("feed_forward_proj", "gated-silu", "feed_forward_proj='gated-silu' is not supported"),
    ("model_type", "bart", "model_type='bart' is not supported"),
    ("is_encoder_decoder", False, "is_encoder_decoder=false"),
    ("d_model", None, "required field 'd_model' is missing"),
])
def test_unsupported_config_is_named(hf_dir, field, value, message):
    _edit_config(hf_dir, **{field: value})
    with pytest.raises(CheckpointError, match=message) as err:
        load_hf_checkpoint(hf_dir)
    assert "config.json" in str(err.value)


def test_pickle_only_directory_is_refused(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="never loads pickle"):
        load_hf_checkpoint(hf_dir)


def test_missing_shard_is_named(tmp_path):
    hf = make_hf_model("t5_1_0", seed=4)
    hf.save_pretrained(tmp_path / "sh", safe_serialization=True, max_shard_size="20KB")
    shard = sorted((tmp_path / "sh").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"names shard '{shard.name}', which is missing"):
        load_hf_checkpoint(tmp_path / "sh")


def test_export_never_clobbers_or_half_writes(hf_dir, tmp_path):
    cfg, params = load_hf_checkpoint(hf_dir)
    target = tmp_path / "out"
    save_hf_checkpoint(target, cfg, params)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError):
        save_hf_checkpoint(target, cfg, params)
    # A failing export (params that don't fit the config) leaves the old directory intact.
    broken = dict(params)
    broken.pop("logits_dense")
    with pytest.raises(CheckpointError, match="missing logits_dense"):
        save_hf_checkpoint(target, cfg, broken, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["hf", "out"]  # no temp dirs left
    save_hf_checkpoint(target, cfg, params, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(before)


def test_tied_export_carries_lm_head_copy(tmp_path):
    cfg, params = load_hf_checkpoint(save_hf_model(make_hf_model("t5_1_0"), tmp_path / "m"))
    assert cfg.tie_embeddings and "logits_dense" not in params
    tensors = params_to_hf_tensors(params, cfg)
    np.testing.assert_array_equal(tensors["lm_head.weight"], tensors["shared.weight"])


def test_a_decoder_only_model_is_not_exported_as_a_hugging_face_t5(tmp_path):
    from flan_jax.model import create_model, get_config, params_of

    cfg = get_config("tiny", architecture="decoder_only")
    with pytest.raises(CheckpointError, match="architecture='decoder_only'"):
        save_hf_checkpoint(tmp_path / "hf", cfg, params_of(create_model(cfg)))
    assert not (tmp_path / "hf").exists()


def test_a_prompt_tuned_model_has_no_hf_layout(tmp_path):
    """HF's T5 has no soft prompt: the export is refused rather than dropping it."""
    from flan_jax.model import create_model, get_config, params_of
    from flan_jax.model.convert import save_hf_checkpoint

    cfg = get_config("tiny", prompt_length=3)
    with pytest.raises(CheckpointError, match="prompt_length=3: Hugging Face's T5 has no soft"):
        save_hf_checkpoint(tmp_path / "hf", cfg, params_of(create_model(cfg)))
    assert not (tmp_path / "hf").exists()
