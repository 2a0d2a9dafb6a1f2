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


def test_the_socket_client_keeps_its_connection_and_reconnects_after_an_idle_timeout(tiny_model: Path):
    import json
    import time

    from widedeep.serve.bench import Client
    from widedeep.serve.http import BackgroundServer, create_app
    from widedeep.serve.limits import Limits
    from widedeep.serve.live import LiveScorer

    live = LiveScorer(tiny_model, lambda p: Scorer.load(p))
    ctx, cands = synthetic_request(live.scorer, 7)
    body = json.dumps({"context": ctx, "candidates": cands, "k": 3}).encode()
    with BackgroundServer(create_app(live, Limits(keep_alive_timeout=0.3))) as srv:
        client = Client(srv.url)
        try:
            status, answer = client.post(body)
            first = client.sock
            assert status == 200 and len(json.loads(answer)["items"]) == 3
            assert client.post(body)[0] == 200 and client.sock is first  # kept alive
            time.sleep(0.8)  # the server closes the idle connection; the next post connects again
            status, again = client.post(body)
            assert status == 200 and client.sock is not first
            assert json.loads(again)["items"] == json.loads(answer)["items"]
            status, error = client.post(b'{"context": {}, "candidates": "x"}')
            assert status == 422 and json.loads(error)["error"]["field"] == "candidates"
        finally:
            client.close()
