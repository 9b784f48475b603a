"""Every gin/runs and gin/mesh file parses and describes what its comment says."""

import gin
import pytest

import flan_jax.train.loop  # noqa: F401  (registers the configurables)
from flan_jax import gin_utils
from flan_jax.model.gin_config import model_config
from flan_jax.train.data import DataConfig
from flan_jax.train.evaluate import EvalConfig

REQUIRED = ["train.model_dir = '/tmp/x'", "train.init_from = '/tmp/m'"]


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("name, d_model, batch", [("runs/demo.gin", 128, 16), ("runs/small.gin", 128, 32),
                                                  ("runs/train.gin", 512, 128),
                                                  ("runs/finetune.gin", None, 64),
                                                  ("runs/science_tiny.gin", 128, 8)])
def test_run_files(name, d_model, batch):
    gin_utils.parse([name], REQUIRED, finalize=False)
    assert DataConfig().batch_size == batch
    assert gin.query_parameter("train.total_steps") > 0
    if d_model:
        assert model_config().d_model == d_model


def test_science_tiny_trains_and_evaluates_the_science_mixtures():
    gin_utils.parse(["runs/science_tiny.gin"], REQUIRED, finalize=False)
    assert DataConfig().mixture_or_task_name == "flan_jax_science"
    cfg = EvalConfig()
    assert cfg.groups_of == "flan_jax_science"
    assert dict(cfg.groups) == {"held_in": "flan_jax_science_held_in",
                                "held_out": "flan_jax_science_held_out"}


def test_eval_file_reads_whole_splits():
    gin_utils.parse(["runs/eval.gin"], [], finalize=False)
    cfg = EvalConfig()
    assert cfg.num_examples is None and set(cfg.groups) == {"held_in", "held_out"}


def test_search_path_and_errors():
    assert any(p.name == "gin" for p in gin_utils.search_paths())
    with pytest.raises(gin_utils.GinConfigError, match="'runs/nope.gin' not found"):
        gin_utils.parse(["runs/nope.gin"], [], finalize=False)
    with pytest.raises(gin_utils.GinConfigError, match=r"--gin.DataConfig.batch_sise=3"):
        gin_utils.parse([], ["DataConfig.batch_sise = 3"], finalize=False)


def test_split_gin_args():
    rest, files, bindings = gin_utils.split_gin_args(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.train.total_steps=5", "--x"])
    assert (rest, files, bindings) == (["--x"], ["a.gin", "b.gin"],
                                       ["train.total_steps = 5"])
    with pytest.raises(gin_utils.GinConfigError, match="NAME=VALUE"):
        gin_utils.split_gin_args(["--gin.train.total_steps"])


def test_infer_file_sets_beam_search_and_flags_override_it():
    import dataclasses

    from flan_jax.cli import build_parser, decode_config
    from flan_jax.train.infer import DecodeConfig

    gin_utils.parse(["runs/infer.gin"], [], finalize=False)
    cfg = DecodeConfig()
    assert (cfg.method, cfg.beam_size, cfg.max_decode_len) == ("beam", 4, 128)
    kwargs = cfg.generate_kwargs()
    assert kwargs["method"] == "beam" and kwargs["length_penalty"] == 0.6
    assert "temperature" not in kwargs
    args = build_parser().parse_args(["infer", "--checkpoint", "x", "--method", "sample",
                                      "--top_p", "0.9"])
    given = decode_config(args)
    assert dataclasses.replace(given, method="beam", top_p=1.0) == cfg  # only the two flags
    sampled = given.generate_kwargs()
    assert sampled["top_p"] == 0.9 and sampled["max_decode_len"] == 128 and "rng" in sampled
    with pytest.raises(ValueError, match="DecodeConfig.method='nucleus'"):
        DecodeConfig(method="nucleus")


@pytest.mark.parametrize("binding, message", [
    ("train.total_steps = 'abc'", "--gin.train.total_steps='abc': expected int, got str"),
    ("DataConfig.batch_size = 2.5", "--gin.DataConfig.batch_size=2.5: expected int, got float"),
    ("T5Config.dropout_rate = 'x'", "--gin.T5Config.dropout_rate='x': expected float, got str"),
    ("train.evaluate = 1", "--gin.train.evaluate=1: expected bool, got int"),
    ("train.init_from = 3", "--gin.train.init_from=3: expected str or None, got int"),
    ("DataConfig.task_feature_lengths = 5", "expected Mapping, got int"),
])
def test_a_value_of_the_wrong_type_is_refused_at_parse_time_naming_the_binding(binding,
                                                                               message):
    with pytest.raises(gin_utils.GinConfigError, match=message.replace("(", r"\(")):
        gin_utils.parse(["runs/demo.gin"], ["train.model_dir = '/tmp/x'", binding])


def test_values_of_the_right_type_pass_the_check():
    gin_utils.parse(["runs/demo.gin"], [
        "train.model_dir = '/tmp/x'", "train.init_from = None", "T5Config.dropout_rate = 0",
        "DataConfig.module_imports = ('a', 'b')", "EvalConfig.groups = {'a': 'b'}"],
        finalize=False)


def test_a_required_value_left_unset_names_the_binding_and_how_to_give_it():
    with pytest.raises(gin_utils.GinConfigError, match="--gin.train.init_from=VALUE"):
        gin_utils.parse(["runs/finetune.gin"], ["train.model_dir = '/tmp/x'"])
