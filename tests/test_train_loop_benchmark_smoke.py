"""benchmarks/train.py --smoke runs end to end (tiny data, tiny model), so the training benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train.py"), "--smoke", "--work", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    result = json.loads(text[: text.index("\n}\n") + 2])
    p, b = result["paper_config"], result["bf16_vs_fp32"]
    assert p["examples_per_s"] > 0 and p["mlp_bound_examples_per_s"] > 0 and p["mlp_input_grad_bound_examples_per_s"] > 0
    assert 50 < p["peak_rss_mb"] < 4096  # the training process's own peak (torch alone is over 50 MB)
    assert p["steps"] == 12  # one epoch of 3000 rows at batch 256
    assert 0.0 <= p["eval_auc"] <= 1.0 and 0.0 <= b["bf16_eval_auc"] <= 1.0 and 0.0 <= b["fp32_eval_auc"] <= 1.0
    if (ROOT / "examples" / "adult.toml").exists():
        a = result["adult"]
        assert a["batch_size"] == 256 and 0.5 < a["test_auc"] <= 1.0 and a["wall_s"] > 0
