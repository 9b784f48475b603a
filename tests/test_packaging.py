"""The wheel's package list covers the source tree: code, gin files and the vocabulary."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_package_and_gin_directory_is_listed():
    listed = set(_config()["packages"])
    code = {".".join(p.parent.relative_to(ROOT).parts)
            for top in ("flan_jax", "mixtures") for p in (ROOT / top).rglob("__init__.py")}
    gin_dirs = {"flan_jax.gin_configs" + "".join(f".{part}" for part in d.relative_to(
        ROOT / "gin").parts) for d in [ROOT / "gin", *(ROOT / "gin").rglob("*")] if d.is_dir()}
    assert code <= listed, code - listed
    assert gin_dirs <= listed, gin_dirs - listed
    assert "flan_jax.data.assets" in listed
    assert (ROOT / "flan_jax" / "data" / "assets" / "default_spm.model").exists()
    assert _config()["package-dir"]["flan_jax.gin_configs"] == "gin"
