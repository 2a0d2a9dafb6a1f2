"""benchmarks/serve_compare.py cannot rot: it starts a server per configuration (--smoke) and prints the medians table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_compare_benchmark_smoke():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_compare.py"), "--smoke", "--configs", "hybrid:20:1", "torch:10:2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| hybrid:20:1 |") or line.startswith("| torch:10:2 |")]
    assert len(rows) == 2 and all(line.count(" ms |") == 3 for line in rows)


def test_a_malformed_config_is_refused():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_compare.py"), "--smoke", "--configs", "hybrid:20"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode != 0 and "BACKEND:SUB_BATCH:THREADS" in out.stderr
