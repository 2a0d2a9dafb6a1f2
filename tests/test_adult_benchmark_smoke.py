"""The Adult benchmark's --smoke size runs, so the script cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_adult_benchmark_smoke() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adult.py"), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"adult \(smoke, 1 runs, seeds 0\): wall min [\d.]+ s, median [\d.]+ s = [\d.]+ x the 5 s target \| "
        r"import torch [\d.]+ s \([\d.]+x\) \| test AUC 0\.\d{4} \| load [\d.]+ -> [\d.]+$",
        r.stdout.strip(),
    ), r.stdout
