"""benchmarks/serve_transform.py cannot rot: it runs end to end (--smoke) and finds both transform paths equal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_transform_benchmark_smoke():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_transform.py"), "--smoke"], capture_output=True,
                         text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "small-batch path" in out.stdout and "Arrow path" in out.stdout
