"""`python benchmarks/reliability.py --smoke`, run from the repository root exactly as the docs show it: real `widedeep`
processes killed mid-write, tampered artifacts, bad data, an HTTP barrage and a hot swap. Every target must be met (exit 0),
and each area must print its table."""

from __future__ import annotations

import re

from benchmark_run import run_benchmark

TABLES = {
    "area 1: kill -9": ("kill during train", "kill while replacing model/"),
    "area 2: tampered model directories": ("truncated file", "symlink", "pickle renamed to model.safetensors"),
    "area 3: bad data and configs": ("label column", "config keys"),
    "area 4: HTTP fuzz": ("malformed JSON", "oversized bodies, sent in full", "slow clients", "GET /healthz every 50 ms"),
    "area 5: hot swap under load": ("requests while promoting", "promotions", "GET /healthz every 50 ms"),
}


def test_reliability_smoke() -> None:
    out = run_benchmark("benchmarks/reliability.py", "--smoke", timeout=900)  # a missed target exits non-zero
    for title, checks in TABLES.items():
        block = out[out.index(title) :].split("\n\n")[0]
        assert re.search(r"\(\d+\.\d s\): all targets met\n\| check +\| tried \|", block), block
        for check in checks:
            assert re.search(rf"^\| {re.escape(check)} +\| +[1-9]\d* \|", block, re.M), (check, block)
    assert re.search(r"reliability: every target met in \d+ s", out), out[-1000:]
