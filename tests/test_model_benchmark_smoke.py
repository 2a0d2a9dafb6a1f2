"""The model-step benchmark still runs (its --smoke size) and prints its figures as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "model_step.py"


def test_model_step_benchmark_smoke() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["deep_input_dim"] == 26 * 32 + 13 * 2
    assert result["train_step_examples_per_s"] > 0 and result["bare_mlp_examples_per_s"] > 0
    assert 0.0 < result["wide_sparsity"] < 1.0
