"""`flan-jax plan` numbers: param bytes from a hand count of the preset, FSDP divides them,
Adafactor's factored state is far smaller than AdamW's, activations follow the batch and the
architecture's stacks (a decoder-only model: one stack over inputs + targets)."""

import json
import math
import subprocess
import sys

import gin
import optax
import pytest

from flan_jax import parallel
from flan_jax.model import T5Config, get_config
from flan_jax.plan import Stack, activation_bytes, format_plan, plan
from tests.train.test_architectures import ARCHS

RULES = parallel.DEFAULT_RULES


def hand_count(cfg):
    """T5 1.1 / Flan-T5 parameters, counted from the architecture (untied head, gated FF)."""
    d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    enc_layer = 4 * d * inner + 3 * d * ff + 2 * d  # q k v o, wi_0 wi_1 wo, 2 norms
    dec_layer = 8 * d * inner + 3 * d * ff + 3 * d  # + cross-attention, 3 norms
    relpos = cfg.relative_attention_num_buckets * cfg.num_heads  # one table per stack
    head = 2 * cfg.vocab_size * d  # embedding, logits
    # A decoder-only stack is made of encoder layers (self-attention only) + a final norm.
    decoder_only = head + cfg.num_decoder_layers * enc_layer + relpos + d
    if cfg.architecture == "decoder_only":
        return decoder_only
    encoder = cfg.num_encoder_layers * enc_layer + relpos + d
    if cfg.architecture == "semi_causal":
        connector = (d * d if cfg.connector == "linear"  # a projection, or k queries + attention
                     else cfg.connector_tokens * d + 4 * d * inner)
        return decoder_only + encoder + connector
    return head + encoder + cfg.num_decoder_layers * dec_layer + relpos + d


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
    assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr  # no TF start-up banner
    out = json.loads(proc.stdout)
    assert out["param_count"] == 11_135_332_352  # google/flan-t5-xxl
    assert out["mesh"] == {"data": 1, "fsdp": 32, "model": 1}
    assert abs(out["params"] * 32 / out["param_bytes_total"] - 1) < 0.01
    assert out["total"] == out["params"] + out["optimizer"] + out["gradients"] \
        + out["activations"]


def param_shapes(cfg, t5x=True):
    """Every param of a T5 1.1 preset, listed from the architecture: attention kernels in
    t5x's layout ([embed, joined_kv], [joined_kv, embed]) or ours ([embed, heads, kv], ...)."""
    d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    joined = (inner,) if t5x else (cfg.num_heads, cfg.head_dim)
    attention = [(d, *joined)] * 3 + [(*joined, d)]  # q k v, o
    mlp = [(d, ff), (d, ff), (ff, d)]  # wi_0 wi_1 wo
    enc_layer = attention + mlp + [(d,)] * 2
    dec_layer = attention * 2 + mlp + [(d,)] * 3
    return ([(cfg.vocab_size, d), (d, cfg.vocab_size), (d,), (d,)]  # embedding, logits, norms
            + [(cfg.num_heads, cfg.relative_attention_num_buckets)] * 2
            + enc_layer * cfg.num_encoder_layers + dec_layer * cfg.num_decoder_layers)


def adafactor_state_bytes(shapes):
    """optax.adafactor's f32 state: factored (row + column means, and a (1,) placeholder)
    where the two largest dims are >= 128, else a full second moment and two (1,)
    placeholders; plus its step count and the schedule's (int32)."""
    total = 4 + 4
    for shape in shapes:
        big = sorted(shape)[-2:]
        if len(shape) >= 2 and big[0] >= 128:
            total += 4 * (math.prod(shape) // big[0] + math.prod(shape) // big[1] + 1)
        else:
            total += 4 * (math.prod(shape) + 2)
    return total


def test_adafactor_state_in_t5x_shapes_is_factored_for_t5_1_1_small():
    from flan_jax.model import param_axes
    from flan_jax.model.params import abstract_model
    from flan_jax.train.optim import make_optimizer

    cfg = get_config("t5_1_1-small")
    shapes = param_shapes(cfg)
    assert sum(math.prod(s) for s in shapes) == hand_count(cfg)
    axes = param_axes(abstract_model(cfg))
    got = {}
    for like_t5x in (True, False):
        opt = make_optimizer("adafactor", schedule=optax.constant_schedule(1e-3),
                             param_axes=axes, adafactor_factor_like_t5x=like_t5x)
        got[like_t5x] = plan(cfg, parallel.MeshConfig(data=1), RULES, opt, "adafactor",
                             devices=1, batch_size=8, input_len=64, target_len=16).optimizer
    assert got[True] == adafactor_state_bytes(shapes)
    # Seen as stored, [512, 6 heads, 64] attention kernels are not factored (64 < 128).
    assert got[False] == adafactor_state_bytes(param_shapes(cfg, t5x=False))
    assert got[True] < 0.02 * got[False]  # 76 MB -> 1 MB


def test_plan_command_counts_the_t5x_shaped_state():
    proc = subprocess.run(
        [sys.executable, "-m", "flan_jax", "plan", "--gin_file=models/t5_1_1_small.gin",
         "--devices", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = get_config("t5_1_1-small")
    assert json.loads(proc.stdout)["optimizer"] == adafactor_state_bytes(param_shapes(cfg))


# --- decoder-only architectures ---------------------------------------------------------------

# vocab 32, d_model 8, 2 heads x 4 (inner 8), gated d_ff 16 (3 x 16 = 48 wide), 3 + 3 layers.
MINI = T5Config(vocab_size=32, d_model=8, num_heads=2, head_dim=4, d_ff=16,
                num_encoder_layers=3, num_decoder_layers=3)


def test_decoder_only_activations_match_a_hand_count():
    """2 rows of 6 inputs + 4 targets, f32 (4 bytes), per layer: (6 d_model + 4 inner + 48)
    = 128 wide values per token, and 2 heads x q_len x kv_len x 2 attention values."""
    enc_dec = activation_bytes(MINI, 2, 6, 4)
    # encoder: 12 tokens x 128 + 2 x 2 x 6 x 6 x 2 = 1824 values; decoder: 8 tokens x (128
    # + 4 x 8 cross q/k/v/o) + 2 x 2 x 4 x (4 + 6) x 2 = 1600; logits 8 x 32 x (f32 + grad).
    assert enc_dec == 4 * (3 * 1824 + 3 * 1600) + 8 * 32 * 8 == 43_136
    # decoder-only: 3 layers over the 10 concatenated tokens, no encoder, no cross-attention:
    # 20 tokens x 128 + 2 x 2 x 10 x 10 x 2 = 3360 values a layer; logits over all 20 tokens.
    only = MINI.replace(architecture="decoder_only")
    assert activation_bytes(only, 2, 6, 4) == 4 * 3 * 3360 + 20 * 32 * 8 == 45_440
    # remat="full": each layer's input (20 x d_model) kept, plus one layer's working set.
    assert activation_bytes(only.replace(remat="full"), 2, 6, 4) == (
        4 * (3 * 20 * 8 + 3360) + 20 * 32 * 8)
    # model=2 halves the heads, the inner and d_ff widths and the logits, not d_model.
    assert activation_bytes(only, 2, 6, 4, model_ways=2) == (
        4 * 3 * (20 * (48 + 16 + 24) + 2 * 1 * 10 * 10 * 2) + 20 * 16 * 8)
    if "semi_causal" in ARCHS:  # + 3 encoder layers over the same stream, a linear connector
        semi = MINI.replace(architecture="semi_causal")
        assert activation_bytes(semi, 2, 6, 4) == 45_440 + 4 * 3 * 3360 + 4 * 20 * 8


def test_decoder_only_params_are_the_models_own_shapes():
    """No encoder, no cross-attention: fewer params than the encoder-decoder of as many
    decoder layers, by exactly those; optimizer state and gradients follow the params."""
    mesh = parallel.MeshConfig(data=1)
    enc_dec, only = (_plan(get_config("tiny", architecture=a), mesh, 1)
                     for a in ("encoder_decoder", "decoder_only"))
    cfg = get_config("tiny")
    d, inner = cfg.d_model, cfg.inner_dim
    encoder = cfg.num_encoder_layers * (4 * d * inner + 3 * d * cfg.d_ff + 2 * d) + d
    cross = cfg.num_decoder_layers * (4 * d * inner + d)  # q k v o + its norm, per layer
    relpos = cfg.relative_attention_num_buckets * cfg.num_heads
    assert enc_dec.param_count - only.param_count == encoder + cross + relpos
    assert only.param_count == hand_count(cfg.replace(architecture="decoder_only"))
    assert only.params == only.gradients == 4 * only.param_count
    assert only.optimizer < enc_dec.optimizer
    assert only.architecture == "decoder_only"
    assert [(s.name, s.layers, s.length) for s in only.stacks] == [("decoder", 2, 320)]


def test_the_printed_plan_names_the_architecture_and_its_stacks():
    mesh = parallel.MeshConfig(data=1)
    text = {a: format_plan(_plan(get_config("tiny", architecture=a), mesh, 1),
                           get_config("tiny", architecture=a))
            for a in ("encoder_decoder", "decoder_only")}
    assert ("encoder-decoder: 2 encoder layers over 256 input tokens, 2 decoder layers over "
            "64 target tokens with cross-attention") in text["encoder_decoder"]
    assert ("decoder-only: 2 decoder layers over 320 tokens (inputs + targets), no encoder, "
            "no cross-attention") in text["decoder_only"]


def _gin_run(files):
    """The run `files` describe, parsed and set up here as `flan-jax plan` does it."""
    import gin

    from flan_jax import gin_utils
    from flan_jax.train.setup import setup_run
    gin.clear_config()
    try:
        gin_utils.parse(files, [], finalize=False)
        return setup_run(import_modules=False)
    finally:
        gin.clear_config()


@pytest.mark.parametrize("arch", ARCHS)
def test_plan_of_each_decoder_only_arch_file(arch):
    run = _gin_run(["runs/demo.gin", f"arch/{arch}.gin"])
    cfg, lengths = run.model_cfg, run.data.task_feature_lengths
    p = plan(cfg, run.mesh, run.rules, run.optimizer, run.optimizer_name, devices=1,
             batch_size=run.data.batch_size, input_len=lengths["inputs"],
             target_len=lengths["targets"], model=run.abstract_model)
    assert cfg.architecture != "encoder_decoder" and p.architecture == cfg.architecture
    assert p.param_count == hand_count(cfg)
    n = lengths["inputs"] + lengths["targets"]
    assert p.stacks[-1] == Stack("decoder", cfg.num_decoder_layers, n, (n,))  # no cross-attn
    assert p.activations == activation_bytes(cfg, run.data.batch_size, lengths["inputs"],
                                             lengths["targets"])


def test_plan_command_for_a_decoder_only_model():
    proc = subprocess.run(
        [sys.executable, "-m", "flan_jax", "plan", "--gin_file=runs/small.gin",
         "--gin_file=arch/decoder_only.gin", "--devices", "1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("decoder-only: 2 decoder layers over 320 tokens (inputs + targets), no encoder, "
            "no cross-attention") in proc.stdout
    assert "model: 0.5M params" in proc.stdout and "activations (rough)" in proc.stdout


# --- LoRA -------------------------------------------------------------------------------------


def test_a_lora_run_plans_optimizer_state_and_gradients_for_its_adapters_only():
    """flan-t5-small with peft/lora.gin (rank 8 on q and v of its 8 + 8 x 2 attentions):
    A [512, 8] + B [8, 6 heads, 64] per projection, by hand; AdamW's two moments of those;
    every weight still counted as params."""
    run = _gin_run(["models/flan_t5_small.gin", "peft/lora.gin"])
    cfg = run.model_cfg
    assert run.lora.rank == 8 and run.optimizer_name == "adamw"
    p = plan(cfg, parallel.MeshConfig(data=1), RULES, run.optimizer, run.optimizer_name,
             devices=1, batch_size=8, input_len=64, target_len=16, model=run.abstract_model)
    adapters = (8 + 2 * 8) * 2 * 8 * (cfg.d_model + cfg.inner_dim)
    assert p.trainable_param_count == adapters == 344_064
    assert p.param_count == hand_count(cfg) + adapters
    assert p.params == 4 * p.param_count and p.gradients == 4 * adapters
    assert abs(p.optimizer - 2 * p.gradients) < 1024  # mu, nu (+ step counts)
    full = _plan(cfg, parallel.MeshConfig(data=1), 1, optimizer="adamw")
    assert full.trainable_param_count == full.param_count and full.peft == ""
    text = format_plan(p, cfg)
    assert "train: 344,064 params (0.45%), LoRA rank 8 on 48 projections" in text
    assert "adapters only" in text
    direct = _plan(cfg, parallel.MeshConfig(data=1), 1, optimizer="adamw", lora=run.lora)
    assert direct.trainable_param_count == adapters
    assert direct.peft == "LoRA rank 8 (alpha 16) on q, v in the encoder and decoder"


def test_plan_command_of_a_lora_run_counts_its_adapters(capsys):
    """`flan-jax plan ... --gin_file=peft/lora.gin`: the CLI passes the run's LoraConfig."""
    from flan_jax import cli

    argv = ["plan", "--devices", "1", "--gin_file=runs/train.gin",
            "--gin_file=models/flan_t5_small.gin", "--gin_file=peft/lora.gin",
            "--gin.train.model_dir='/tmp/unused'"]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    assert "train: 344,064 params (0.45%), LoRA rank 8 (alpha 16) on q, v" in out
    assert "adamw, adapters only" in out
