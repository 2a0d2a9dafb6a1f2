"""bench-serve cannot rot: its request generator gives valid requests, and the benchmark script runs end to end (--smoke)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from widedeep.serve.bench import Latency, bench_serve, synthetic_request
from widedeep.serve.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_request_is_valid_and_splits_context_from_candidates(tiny_model: Path):
    s = Scorer.load(tiny_model)
    ctx, cands = synthetic_request(s, 30, context_columns=["country", "installed_apps", "user_id", "age"])
    assert set(ctx) == {"country", "installed_apps", "user_id", "age"}
    assert len(cands) == 30 and all(set(c) == {"impression_app", "price"} for c in cands)
    assert len(s.recommend(ctx, cands, k=5)) == 5
    with pytest.raises(ValueError, match="not an input"):
        synthetic_request(s, 3, context_columns=["nope"])


def test_latency_percentiles():
    lat = Latency.of([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert lat.n == 100 and 50 <= lat.p50 <= 51 and 90 <= lat.p90 <= 91 and 99 <= lat.p99 <= 100


def test_in_process_table(tiny_model: Path):
    r = bench_serve(tiny_model, candidates=12, splits=((12, 1), (6, 2)), requests=5, warmup=1, http=False, log=lambda m: None)
    assert set(r.in_process) == {(12, 1), (6, 2)} and not r.http
    table = r.markdown()
    assert "| 12 x 1 | - |" in table and "| 6 x 2 | - |" in table and "Bare network forward" in table


@pytest.mark.parametrize("flags", [[], ["--int8"]])
def test_benchmark_script_smoke(flags: list[str]):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--smoke", *flags], capture_output=True,
                         text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("hybrid int8 backend" in out.stdout) == bool(flags)
    assert "| sub-batch x threads | paper (client-side) | in-process | in-process CPU | over HTTP (client-side) |" in out.stdout
    assert "| 10 x 2 | - |" in out.stdout and "requests/s" in out.stdout
