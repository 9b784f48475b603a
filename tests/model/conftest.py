"""Fixtures: random-weight Hugging Face T5 directories and the flan-jax models loaded from them."""

import pytest

from flan_jax.model import model_from_params
from flan_jax.model.convert import load_hf_checkpoint
from tests.model.hf_reference import VARIANTS, make_hf_model, save_hf_model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_pair(request, tmp_path_factory):
    """(variant, hf torch model, hf dir, flan-jax cfg, flan-jax model) on the same weights."""
    variant = request.param
    hf = make_hf_model(variant, seed=1)
    path = save_hf_model(hf, tmp_path_factory.mktemp(variant) / "hf")
    cfg, params = load_hf_checkpoint(path)
    return variant, hf, path, cfg, model_from_params(cfg, params)
