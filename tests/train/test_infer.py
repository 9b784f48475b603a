"""`flan-jax infer` / `eval` prompt a model as it trained: train's export records its features
(`model/trained_on.json`), older exports fall back on the run's config.gin, dirs with neither
(Hugging Face, converted, moved) on the architecture's own features; gin's
DataConfig.feature_converter overrides them all."""

import json

import gin
import numpy as np
import pytest

from flan_jax import cli
from flan_jax import decode as dec
from flan_jax.errors import ConfigError
from flan_jax.model import create_model, get_config, params_of
from flan_jax.train import evaluate, loop
from flan_jax.train.data import DataConfig
from flan_jax.train.evaluate import TRAINED_ON, TrainedOn, trained_data


@pytest.fixture(scope="module")
def prefix_lm_run(tmp_path_factory):
    """A run dir whose model/ export (train's own helper) is a tiny prefix LM's."""
    run = tmp_path_factory.mktemp("prefix") / "run"
    cfg = get_config("tiny", architecture="decoder_only")  # the shipped vocabulary's size
    data = DataConfig(mixture_or_task_name="synth_arithmetic:zs_noopt",
                      feature_converter="prefix_lm")
    loop._export(run / "model", cfg, params_of(create_model(cfg, seed=0)), data)
    return run


@pytest.fixture
def bind_features():
    """Binds gin's DataConfig.feature_converter (what a --gin flag does); cleared after."""
    def bind(value):
        with gin.unlock_config():
            gin.bind_parameter("DataConfig.feature_converter", value)
    yield bind
    gin.clear_config()


def _spy_on_decode(monkeypatch):
    """Records each decode's `prefix`; decodes nothing (tests/test_decode.py checks that)."""
    seen = []

    def decode(model, tokens, *, max_decode_len, prefix, **kwargs):
        seen.append(prefix)
        b = tokens.shape[0]
        return dec.DecodeResult(np.zeros((b, max_decode_len), np.int32),
                                np.zeros((b,), np.int32), None)

    monkeypatch.setattr(dec, "decode", decode)
    return seen


def test_the_export_records_its_features_and_infer_decodes_a_prefix_lm_as_one(
        prefix_lm_run, monkeypatch, bind_features, capsys):
    model_dir = prefix_lm_run / "model"
    assert json.loads((model_dir / TRAINED_ON).read_text()) == {
        "mixture_or_task_name": "synth_arithmetic:zs_noopt", "module_imports": ["mixtures"],
        "feature_converter": "prefix_lm"}
    want = TrainedOn("synth_arithmetic:zs_noopt", ("mixtures",), "prefix_lm")
    assert trained_data(model_dir, "decoder_only") == want  # the export itself
    assert trained_data(prefix_lm_run, "decoder_only") == want  # its run dir
    seen = _spy_on_decode(monkeypatch)
    argv = ["infer", "--checkpoint", str(prefix_lm_run), "--input", "2 + 3 =", "--method",
            "greedy", "--max_input_len", "8", "--max_decode_len", "2", "--batch_size", "1"]
    assert cli._infer(cli.build_parser().parse_args(argv)) == 0
    bind_features("decoder")  # the user's override: decode it causally
    assert cli._infer(cli.build_parser().parse_args(argv)) == 0
    assert seen == [True, False]
    assert capsys.readouterr().out.count("> 2 + 3 =") == 2


def test_eval_of_a_checkpoint_prompts_and_scores_with_its_features(prefix_lm_run,
                                                                     monkeypatch, capsys):
    built = []

    class Evaluator:  # records how `flan-jax eval` builds it; evaluates nothing
        def __init__(self, cfg, trained, modules, feature_converter="enc_dec"):
            built.append((trained, modules, feature_converter))

        def __call__(self, model, step=None):
            return {}

    monkeypatch.setattr(evaluate, "Evaluator", Evaluator)
    args = cli.build_parser().parse_args(["eval", "--checkpoint", str(prefix_lm_run)])
    assert cli._eval(args) == 0
    assert built == [("synth_arithmetic:zs_noopt", ("mixtures",), "prefix_lm")]


def test_older_exports_read_the_runs_config_gin_and_bare_dirs_their_architectures(
        tmp_path, bind_features):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.gin").write_text("DataConfig.feature_converter = 'prefix_lm'\n"
                                    "DataConfig.mixture_or_task_name = 'synth_x'\n")
    want = TrainedOn("synth_x", ("mixtures",), "prefix_lm")
    assert trained_data(run / "model", "decoder_only") == want == trained_data(run,
                                                                               "decoder_only")
    # Neither record nor run (a Hugging Face, converted or moved dir): the architecture's own.
    bare = tmp_path / "bare"
    bare.mkdir()
    assert [trained_data(bare, arch).feature_converter
            for arch in ("encoder_decoder", "decoder_only", "semi_causal")] == [
        "enc_dec", "decoder", "semi_causal"]
    # The export's record wins over the run's config.gin.
    evaluate.write_trained_on(run / "model", DataConfig(feature_converter="decoder"))
    assert not trained_data(run, "decoder_only").prefix_lm
    # gin's binding wins over both; features the model can't read are refused naming both.
    bind_features("prefix_lm")
    assert trained_data(run, "decoder_only").prefix_lm
    with pytest.raises(ConfigError, match=r"--gin.DataConfig.feature_converter: "
                       r"DataConfig.feature_converter='prefix_lm', but .* "
                       r"T5Config.architecture='encoder_decoder' model, which reads "
                       r"\('enc_dec',\)"):
        trained_data(bare, "encoder_decoder")
