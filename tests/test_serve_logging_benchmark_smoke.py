"""`python benchmarks/serve_logging.py --smoke`, run from the repository root as the docs show it: two real `widedeep serve`
processes (logging off and on) timed in alternating rounds; the table, the overhead line, and every row logged."""

from __future__ import annotations

import re

from benchmark_run import run_benchmark


def test_serve_logging_smoke() -> None:
    out = run_benchmark("benchmarks/serve_logging.py", "--smoke")
    assert re.search(r"20 candidates, k = 10, 2 rounds x 5 requests per setting, alternating", out), out
    for label in ("off", r"on \(--log-dir\)"):
        assert re.search(rf"^\| {label} \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms \| 10 \|$", out, re.M), out
    assert re.search(r"p50 overhead of logging: [+-][\d.]+ ms = [+-][\d.]+% of the request \(target <= 5%: ", out), out
    assert "logged: 120 of 120 impression rows in " in out and " 0 dropped" in out, out  # (2 warm-up + 10) x 10 rows
