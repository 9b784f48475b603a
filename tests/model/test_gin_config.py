"""gin/models/*.gin describe exactly the presets; a misspelt binding fails with its name."""

from pathlib import Path

import gin
import pytest

from flan_jax.model import get_config
from flan_jax.model.gin_config import model_config

GIN_DIR = Path(__file__).resolve().parents[2] / "gin" / "models"
FILES = sorted(p.stem for p in GIN_DIR.glob("*.gin"))


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _preset(stem: str) -> str:
    if stem == "tiny":
        return "tiny"
    variant, size = stem.rsplit("_", 1)
    return f"{variant}-{size}"


def test_every_preset_has_a_gin_file():
    assert len(FILES) == 17
    assert {"flan_t5_small", "t5_1_0_small", "t5_1_1_xxl", "tiny"} <= set(FILES)


@pytest.mark.parametrize("stem", FILES)
def test_gin_model_file_equals_preset(stem):
    gin.parse_config_file(str(GIN_DIR / f"{stem}.gin"))
    assert model_config() == get_config(_preset(stem))


def test_override_binding_and_misspelt_binding():
    gin.parse_config_files_and_bindings([str(GIN_DIR / "tiny.gin")],
                                        ["T5Config.dropout_rate = 0.1"])
    assert model_config() == get_config("tiny", dropout_rate=0.1)
    gin.clear_config()
    with pytest.raises(ValueError, match="d_modle"):
        gin.parse_config_files_and_bindings([str(GIN_DIR / "tiny.gin")], ["T5Config.d_modle = 3"])
