"""bench-serve cannot rot: its request generator gives valid requests and its tables are built (benchmarks/serve.py's
smoke run is in test_benchmarks_smoke.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from widedeep.serve.bench import Latency, bench_serve, synthetic_request
from widedeep.serve.scorer import Scorer


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
