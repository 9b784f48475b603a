"""`flan-jax plan` numbers: param bytes from a hand count of the preset, FSDP divides them,
Adafactor's factored state is far smaller than AdamW's, activations follow the batch."""

import json
import subprocess
import sys

import optax
import pytest

from flan_jax import parallel
from flan_jax.model import get_config
from flan_jax.plan import activation_bytes, plan

RULES = parallel.DEFAULT_RULES


def hand_count(cfg):
    """T5 1.1 / Flan-T5 parameters, counted from the architecture (untied head, gated FF)."""
    d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    enc_layer = 4 * d * inner + 3 * d * ff + 2 * d  # q k v o, wi_0 wi_1 wo, 2 norms
    dec_layer = 8 * d * inner + 3 * d * ff + 3 * d  # + cross-attention, 3 norms
    relpos = 2 * cfg.relative_attention_num_buckets * cfg.num_heads
    return (2 * cfg.vocab_size * d + cfg.num_encoder_layers * enc_layer
            + cfg.num_decoder_layers * dec_layer + relpos + 2 * d)


def _plan(cfg, mesh, devices, optimizer="adafactor", batch=32, **kw):
    opt = optax.adafactor(1e-3) if optimizer == "adafactor" else optax.adamw(1e-3)
    return plan(cfg, mesh, RULES, opt, optimizer, devices=devices, batch_size=batch,
                input_len=256, target_len=64, **kw)


@pytest.fixture(scope="module")
def small():
    return get_config("flan_t5-small")


def test_param_bytes_match_the_preset(small):
    p = _plan(small, parallel.MeshConfig(data=1), 1)
    assert p.param_count == hand_count(small) == 76_961_152  # google/flan-t5-small
    assert p.param_bytes_total == 4 * p.param_count == p.params == p.gradients


def test_fsdp_divides_params_and_data_divides_the_batch(small):
    one = _plan(small, parallel.MeshConfig(data=1), 1)
    fsdp = _plan(small, parallel.MeshConfig(data=1, fsdp=4), 4)
    assert 3.9 < one.params / fsdp.params <= 4.0  # norms / relpos stay replicated
    assert 3.9 < one.optimizer / fsdp.optimizer <= 4.0
    assert fsdp.mesh == {"data": 1, "fsdp": 4, "model": 1}
    data = _plan(small, parallel.MeshConfig(data=4), 4)
    assert data.params == one.params and data.batch_per_device == 8
    assert abs(data.activations / one.activations - 0.25) < 0.01
    model = _plan(small, parallel.MeshConfig(data=1, model=2), 2)
    assert 1.8 < one.params / model.params < 2.0  # heads / mlp / vocab split, embed not


def test_adafactor_state_is_factored_adamw_keeps_two_moments(small):
    ada = _plan(small, parallel.MeshConfig(data=1), 1)
    adam = _plan(small, parallel.MeshConfig(data=1), 1, optimizer="adamw")
    assert abs(adam.optimizer - 2 * adam.params) < 1024  # mu, nu (+ a step count)
    # optax factors the two largest dims if the smaller is >= 128: embeddings and MLPs are
    # factored; [d_model, heads, head_dim=64] attention kernels keep a full second moment.
    attention = 4 * small.d_model * small.inner_dim * (small.num_encoder_layers
                                                       + 2 * small.num_decoder_layers) * 4
    assert attention < ada.optimizer < attention + 0.02 * ada.params


def test_multislice_mesh_and_remat(small):
    p = _plan(small, parallel.MeshConfig(data=1, fsdp=-1, dcn_data=-1), 16, num_slices=2)
    assert p.mesh == {"data": 2, "fsdp": 8, "model": 1}
    full = activation_bytes(small.replace(remat="full"), 4, 256, 64)
    assert full < activation_bytes(small, 4, 256, 64) / 2


def test_plan_command_for_xxl_on_a_v4_64(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flan_jax", "plan", "--gin_file=models/flan_t5_xxl.gin",
         "--gin_file=mesh/fsdp.gin", "--gin.DataConfig.batch_size=64", "--devices", "32",
         "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["param_count"] == 11_135_332_352  # google/flan-t5-xxl
    assert out["mesh"] == {"data": 1, "fsdp": 32, "model": 1}
    assert abs(out["params"] * 32 / out["param_bytes_total"] - 1) < 0.01
    assert out["total"] == out["params"] + out["optimizer"] + out["gradients"] \
        + out["activations"]
