"""The demo benchmark's --smoke size runs, so the script cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_benchmark_smoke() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "demo.py"), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"demo \(smoke, 2000 rows, 2 threads\): [\d.]+ s wall, [\d.]+ x the 180 s bound \| eval AUC wide ", r.stdout)
    assert "winner: " in r.stdout
