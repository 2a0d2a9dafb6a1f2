"""`python benchmarks/serve_logging.py --smoke`, run from the repository root as the docs show it: two real `widedeep serve`
processes (logging off and on) timed in alternating rounds; the table, the overhead line, and every row logged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = re.compile(r"machine: .+ \| flags .+ \| \d+ of \d+ CPUs usable \| load average [\d.]+ [\d.]+ [\d.]+ \| python ")


def test_serve_logging_smoke() -> None:
    r = subprocess.run([sys.executable, "benchmarks/serve_logging.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"serve_logging.py --smoke failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    first, _, out = r.stdout.partition("\n")
    assert MACHINE.match(first), f"the first line should describe the machine: {first!r}"
    assert re.search(r"20 candidates, k = 10, 2 rounds x 5 requests per setting, alternating", out), out
    for label in ("off", r"on \(--log-dir\)"):
        assert re.search(rf"^\| {label} \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms \| 10 \|$", out, re.M), out
    assert re.search(r"p50 overhead of logging: [+-][\d.]+ ms = [+-][\d.]+% of the request \(target <= 5%: ", out), out
    assert "logged: 120 of 120 impression rows in " in out and " 0 dropped" in out, out  # (2 warm-up + 10) x 10 rows
