"""The ranking API over real HTTP: a uvicorn server on a free loopback port, real requests, the trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5}
GOOD = {"impression_app": "app3", "price": 1.5}


def cands(n: int) -> list[dict]:
    return [{"impression_app": f"app{i % 30}", "price": float(i % 7)} for i in range(n)]


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    live = LiveScorer(tiny_model, lambda p: Scorer.load(p, sub_batch=16, threads=2))
    app = create_app(live, max_body_bytes=64 * 1024, max_candidates=50)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, live


def test_recommend_returns_top_k_in_ranked_order(server):
    client, live = server
    r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(40), "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == live.scorer.version
    scores = [it["score"] for it in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    want = live.scorer.score([{**CONTEXT, **c} for c in cands(40)])
    assert [it["index"] for it in body["items"]] == np.lexsort((np.arange(40), -want))[:5].tolist()
    np.testing.assert_allclose(scores, want[[it["index"] for it in body["items"]]], rtol=1e-6)


def test_score_returns_one_probability_per_instance(server):
    client, live = server
    rows = [{**CONTEXT, **c} for c in cands(7)]
    r = client.post("/v1/score", json={"instances": rows})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["scores"], live.scorer.score(rows), rtol=1e-6)


def test_unknown_categorical_values_are_not_errors(server):
    client, _ = server
    r = client.post("/v1/recommend", json={"context": {**CONTEXT, "country": "atlantis"}, "candidates": [{"impression_app": "zzz", "price": 2}]})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["index"] == 0


def _bad(**changes):
    doc = {"context": CONTEXT, "candidates": [GOOD, GOOD, GOOD, GOOD], "k": 3}
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "body,status,field",
    [
        (_bad(candidates=[GOOD] * 3 + [{"impression_app": "app1", "price": "abc"}]), 422, "candidates[3].price"),
        (_bad(candidates=[GOOD, {"impression_app": "app1"}]), 422, "candidates[1].price"),
        (_bad(context={k: v for k, v in CONTEXT.items() if k != "user_id"}), 422, "context.user_id"),
        (_bad(candidates=[GOOD, {"impression_app": "app1", "price": float("nan")}]), 422, "candidates[1].price"),
        (_bad(context={**CONTEXT, "age": float("inf")}), 422, "context.age"),
        (_bad(candidates=[GOOD, {"impression_app": ["app1", "app2"], "price": 1}]), 422, "candidates[1].impression_app"),
        (_bad(context={**CONTEXT, "age": [30]}), 422, "context.age"),
        (_bad(candidates=[]), 422, "candidates"),
        (_bad(candidates=[GOOD] * 51), 422, "candidates"),
        (_bad(candidates="app1"), 422, "candidates"),
        (_bad(k=-1), 422, "k"),
        (_bad(k="3"), 422, "k"),
        (json.dumps({"context": CONTEXT}), 422, "candidates"),
        ("{not json", 400, ""),
        ("[1, 2]", 400, ""),
        (_bad(candidates=[{"impression_app": "x" * 2000, "price": 1}] * 49), 413, ""),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server, body: str, status: int, field: str):
    client, _ = server
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]


def test_oversized_chunked_body_is_refused_while_reading(server):
    client, _ = server

    def chunks():
        yield b'{"context": {}, "candidates": ['
        for _ in range(200):
            yield b'{"impression_app": "' + b"y" * 500 + b'", "price": 1},'
        yield b"{}]}"

    r = client.post("/v1/recommend", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("body exceeds")


def test_garbage_never_gets_a_5xx(server):
    client, _ = server
    rng = np.random.default_rng(0)
    values = [None, 1, -1.5, "", "x", [], {}, [1, "a"], {"a": 1}, True, 10**30, "app1", ["app1"]]
    fields = ["country", "installed_apps", "impression_app", "user_id", "age", "price", "other"]
    for _ in range(30):
        ctx = {f: values[rng.integers(len(values))] for f in rng.choice(fields, rng.integers(0, 6), replace=False)}
        cand = [{f: values[rng.integers(len(values))] for f in rng.choice(fields, rng.integers(0, 4), replace=False)} for _ in range(3)]
        k = values[rng.integers(len(values))]
        for path, doc in (("/v1/recommend", {"context": ctx, "candidates": cand, "k": k}), ("/v1/score", {"instances": cand})):
            r = client.post(path, json=doc)
            assert r.status_code < 500, (doc, r.text)
            if r.status_code >= 400:
                assert isinstance(r.json()["error"]["field"], str)
    assert client.get("/healthz").status_code == 200  # and it is still up


def test_model_health_metrics_and_docs(server):
    client, live = server
    h = client.get("/healthz").json()
    assert h == {"status": "ok", "model_version": live.scorer.version}
    m = client.get("/v1/model").json()
    assert m["version"] == live.scorer.version and m["backend"] == "torch"
    assert {f["name"] for f in m["features"]} == {"country", "installed_apps", "impression_app", "user_id", "age", "price"}
    assert "auc" in json.dumps(m["metrics"]).lower()
    client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(3)})
    text = client.get("/metrics").text
    assert 'widedeep_requests_total{route="/v1/recommend",status="200"}' in text
    assert 'widedeep_request_seconds_bucket{route="/v1/recommend",le="+Inf"}' in text
    assert f'widedeep_model_info{{version="{live.scorer.version}"}} 1' in text
    spec = client.get("/openapi.json").json()
    assert "candidates" in json.dumps(spec["paths"]["/v1/recommend"]["post"]["requestBody"])
    assert client.get("/docs").status_code == 200
