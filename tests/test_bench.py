"""bench/model_step.py runs end to end on tiny shapes (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_step_benchmark_reports_both_peers_and_mfu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_step.py"), "--model", "tiny", "--batch", "2",
         "--inputs", "32", "--targets", "8", "--steps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "flan-jax / HF" in proc.stdout and "MFU" in proc.stdout
    result = json.loads(out.read_text())
    for key in ("matmul_peak_gflops", "flan_jax_tokens_per_s", "hf_tokens_per_s",
                "speedup_vs_hf", "flan_jax_mfu"):
        assert result[key] > 0, key
    assert result["step_flops"] > 0 and result["inputs"] == 32
