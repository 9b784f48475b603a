"""Sharded restore: a checkpoint's parameters go straight into their shardings, each block
read from the file on its own (no full host copy), equal to what the host loader reads."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from flan_jax.model.convert import OUT, QKV, SAME, TRANSPOSE, _hf_shape, _to_hf, read_ours

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("layout,shape", [(SAME, (12, 6)), (TRANSPOSE, (6, 10)),
                                          (QKV, (6, 4, 3)), (OUT, (4, 3, 6))])
def test_every_block_of_every_layout_reads_what_the_full_transform_gives(layout, shape):
    ours = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    hf = _to_hf(layout, ours)
    assert hf.shape == _hf_shape(layout, shape)
    np.testing.assert_array_equal(read_ours(hf, layout, shape), ours)
    rng = np.random.default_rng(1)
    for _ in range(20):
        index = []
        for n in shape:
            a = int(rng.integers(0, n))
            index.append(slice(a, int(rng.integers(a + 1, n + 1))))
        index = tuple(index)
        np.testing.assert_array_equal(read_ours(hf, layout, shape, index), ours[index])


def test_sharded_load_on_8_devices_equals_the_host_load(tmp_path):
    """HF and flan-jax dirs, fsdp x model sharded, cast to bfloat16: every array holds the
    host loader's values in the sharding asked for, and each device holds only its block."""
    sys.path.insert(0, str(ROOT / "tests" / "model"))
    from hf_reference import make_hf_model

    hf_dir = tmp_path / "hf"
    make_hf_model("t5_1_1", seed=3, num_heads=4, d_ff=64).save_pretrained(
        hf_dir, safe_serialization=True)
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from flan_jax import parallel
        from flan_jax.model.io import load_config, load_pretrained, load_sharded, save_pretrained
        from flan_jax.model.params import abstract_model, param_axes, params_of
        mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, model=2))
        rules = parallel.logical_axis_rules()
        save_pretrained({str(tmp_path / 'fj')!r}, *load_pretrained({str(hf_dir)!r}))
        for d in ({str(hf_dir)!r}, {str(tmp_path / 'fj')!r}):
            cfg = load_config(d, param_dtype="bfloat16")
            model = abstract_model(cfg)
            shard = parallel.param_shardings(params_of(model), param_axes(model), rules, mesh)
            got = load_sharded(d, cfg, shard)
            _, want = load_pretrained(d, param_dtype="bfloat16")
            sharded = 0
            for (path, g), w, s in zip(jax.tree_util.tree_leaves_with_path(got),
                                       jax.tree.leaves(want), jax.tree.leaves(shard)):
                assert g.sharding == s, (path, g.sharding, s)
                assert g.dtype == jax.numpy.bfloat16, (path, g.dtype)
                np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
                block = s.shard_shape(g.shape)
                assert all(x.data.shape == block for x in g.addressable_shards)
                sharded += block != g.shape
            assert sharded > 10, sharded
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
