"""`flan-jax infer` / `eval` prompt a model as it trained: train's export records its features
(`model/trained_on.json`), older exports fall back on the run's config.gin, dirs with neither
(Hugging Face, converted, moved) on the architecture's own features; gin's
DataConfig.feature_converter overrides them all."""

import json

import gin
import pytest

from flan_jax import cli
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
    data = DataConfig(mixture_or_task_name="synth_parity:zs_opt",
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


def test_the_export_records_its_features_and_infer_decodes_a_prefix_lm_as_one(
        prefix_lm_run, bind_features, capsys):
    """`flan-jax infer` prints what `generate` gives with prefix=True (which differs from
    causal decoding for this model and prompt), and the causal one under gin's override."""
    from flan_jax.train import infer

    model_dir = prefix_lm_run / "model"
    assert json.loads((model_dir / TRAINED_ON).read_text()) == {
        "mixture_or_task_name": "synth_parity:zs_opt", "module_imports": ["mixtures"],
        "feature_converter": "prefix_lm"}
    want = TrainedOn("synth_parity:zs_opt", ("mixtures",), "prefix_lm")
    assert trained_data(model_dir, "decoder_only") == want  # the export itself
    assert trained_data(prefix_lm_run, "decoder_only") == want  # its run dir
    text = "Is 12 even or odd? Answer with one word, please, and think first."
    model, vocabulary = infer.load(prefix_lm_run)
    options = dict(max_input_len=24, max_decode_len=6, batch_size=1, method="greedy")
    bidirectional, causal = (infer.generate(model, vocabulary, [text], prefix=p, **options)[0]
                             for p in (True, False))
    assert bidirectional != causal  # (else this test could not tell them apart)
    argv = ["infer", "--checkpoint", str(prefix_lm_run), "--input", text, "--method",
            "greedy", "--max_input_len", "24", "--max_decode_len", "6", "--batch_size", "1"]
    assert cli._infer(cli.build_parser().parse_args(argv)) == 0
    assert capsys.readouterr().out == f"> {text}\n{bidirectional}\n\n"
    bind_features("decoder")  # the user's override: decode it causally
    assert cli._infer(cli.build_parser().parse_args(argv)) == 0
    assert capsys.readouterr().out == f"> {text}\n{causal}\n\n"


def test_eval_of_a_checkpoint_prompts_and_scores_with_its_features(prefix_lm_run,
                                                                     bind_features, capsys):
    """The real evaluator on the run's options task: greedy decodes and rank classification
    with the decoder-only features (enc-dec ones made a decoder-only model fail)."""
    with gin.unlock_config():
        gin.bind_parameter("EvalConfig.num_examples", 4)
        gin.bind_parameter("EvalConfig.batch_size", 4)
        gin.bind_parameter("EvalConfig.task_feature_lengths", {"inputs": 96, "targets": 8})
    args = cli.build_parser().parse_args(["eval", "--checkpoint", str(prefix_lm_run)])
    assert cli._eval(args) == 0
    out = capsys.readouterr().out
    assert "synth_parity:zs_opt" in out and "(rank classification" in out


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


def test_converting_a_model_dir_keeps_what_it_trained_on(prefix_lm_run, tmp_path):
    """`flan-jax convert` to another flan-jax dir (a dtype cast, say) carries the record, so
    the copy is still prompted as a prefix LM."""
    dst = tmp_path / "bf16"
    argv = ["convert", str(prefix_lm_run / "model"), str(dst), "--to", "flan-jax",
            "--dtype", "bfloat16"]
    assert cli.main(argv) == 0
    assert json.loads((dst / "config.json").read_text())["param_dtype"] == "bfloat16"
    assert (dst / TRAINED_ON).read_bytes() == (prefix_lm_run / "model" / TRAINED_ON).read_bytes()
    assert trained_data(dst, "decoder_only").prefix_lm
