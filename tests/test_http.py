"""The ranking API over real HTTP: a uvicorn server on a free loopback port, real requests, the trained tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5}
GOOD = {"impression_app": "app3", "price": 1.5}


def cands(n: int) -> list[dict]:
    return [{"impression_app": f"app{i % 30}", "price": float(i % 7)} for i in range(n)]


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    live = LiveScorer(tiny_model, lambda p: Scorer.load(p, sub_batch=16, threads=2))
    app = create_app(live, Limits(max_body_bytes=64 * 1024, max_candidates=50, max_string_bytes=1000))
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
        # booleans are neither numbers nor categories, in a scalar or in a list
        (_bad(context={**CONTEXT, "age": True}), 422, "context.age"),
        (_bad(candidates=[GOOD, GOOD, {"impression_app": True, "price": 1}]), 422, "candidates[2].impression_app"),
        (_bad(candidates=[GOOD, {"impression_app": "app1", "price": False}]), 422, "candidates[1].price"),
        (_bad(context={**CONTEXT, "installed_apps": ["app1", False]}), 422, "context.installed_apps[1]"),
        (_bad(context={**CONTEXT, "user_id": True}), 422, "context.user_id"),
        # strings past max_string_bytes (UTF-8 bytes, not characters)
        (_bad(candidates=[GOOD, {"impression_app": "x" * 1001, "price": 1}]), 422, "candidates[1].impression_app"),
        (_bad(candidates=[GOOD, {"impression_app": "é" * 501, "price": 1}]), 422, "candidates[1].impression_app"),
        (_bad(context={**CONTEXT, "installed_apps": ["app1", "y" * 1001]}), 422, "context.installed_apps[1]"),
        (_bad(context={**CONTEXT, "user_id": "7" * 1001}), 422, "context.user_id"),
        # ... in a body of many values, also when escaped quotes split the string
        (_bad(candidates=[GOOD] * 40 + [{"impression_app": "z" * 1001, "price": 1}]), 422, "candidates[40].impression_app"),
        (_bad(candidates=[GOOD] * 40 + [{"impression_app": 'say "hi" ' * 120, "price": 1}]), 422, "candidates[40].impression_app"),
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

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
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
    assert h == {"status": "ok", "model_version": live.scorer.version, "pid": os.getpid()}  # the process that answered
    r = client.get("/readyz")  # a model directory: always ready once loaded
    assert r.status_code == 200 and r.json() == {"status": "ready", "model_version": live.scorer.version, "registry_version": None}
    m = client.get("/v1/model").json()
    assert m["version"] == live.scorer.version and m["backend"] == "torch"
    assert m["precision"]["chosen"] == "fp32" and m["precision"]["requested"] == "fp32"  # what the scorer was loaded with
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


def test_values_just_within_the_limits_and_string_booleans_are_scored(server):
    client, _ = server
    cands = [{"impression_app": "x" * 1000, "price": 1}, {"impression_app": "é" * 500, "price": 2}, {"impression_app": "true", "price": 3}]
    r = client.post("/v1/recommend", json={"context": {**CONTEXT, "country": "false"}, "candidates": cands, "k": 3})
    assert r.status_code == 200, r.text
    r = client.post("/v1/score", json={"instances": [{**CONTEXT, "age": True, **GOOD}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "instances[0].age"
    r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": [GOOD], "k": True})
    assert r.status_code == 422 and r.json()["error"]["field"] == "k"


@pytest.mark.parametrize(
    "headers,content",
    [
        ({"content-type": "text/plain"}, json.dumps({"context": CONTEXT, "candidates": [GOOD]})),
        ({"content-type": "application/x-www-form-urlencoded"}, "context=1&candidates=2"),
        ({"content-type": "multipart/form-data; boundary=b"}, '--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n'),
        ({}, json.dumps({"context": CONTEXT, "candidates": [GOOD]})),
        ({"content-type": "application/json; charset=latin-1"}, json.dumps({"context": CONTEXT, "candidates": [GOOD]})),
        ({"content-type": "application/jsonx"}, json.dumps({"context": CONTEXT, "candidates": [GOOD]})),
    ],
)
def test_a_body_that_is_not_declared_json_gets_415_naming_the_header(server, headers: dict, content: str):
    client, _ = server
    for path in ("/v1/recommend", "/v1/score"):
        r = client.post(path, content=content.encode(), headers=headers)
        assert r.status_code == 415, r.text
        assert r.json()["error"]["field"] == "Content-Type" and "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"])
def test_json_with_or_without_a_utf8_charset_is_accepted(server, content_type: str):
    client, _ = server
    body = json.dumps({"context": CONTEXT, "candidates": [GOOD]}).encode()
    assert client.post("/v1/recommend", content=body, headers={"content-type": content_type}).status_code == 200


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_model_info_shows_the_training_metadata_and_no_local_path(server, tiny_model: Path):
    client, live = server
    m = client.get("/v1/model").json()
    assert m["version"] == live.scorer.version
    assert m["training"]["parameters"]["total"] > 0 and m["training"]["library_versions"]["torch"]
    assert m["metrics"]["eval"]["auc"] > 0.5 and m["limits"]["max_string_bytes"] == 1000
    found = _strings(m)
    roots = {str(tiny_model), str(tiny_model.resolve()), str(tiny_model.parent), str(Path.home())}
    leaks = [s for s in found if s.startswith(("/", "~")) or any(r in s for r in roots)]
    assert found and not leaks, leaks


def test_an_app_mounted_under_a_prefix_answers_through_its_fastapi_routes(server, tiny_model: Path):
    """The ranking routes are answered ahead of FastAPI only at their own paths; mounted under a prefix, the same app
    answers them through FastAPI's routes, alike, errors included."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    client, live = server
    body = {"context": CONTEXT, "candidates": cands(12), "k": 4}
    direct = client.post("/v1/recommend", json=body).json()
    outer = Starlette(routes=[Mount("/api", app=create_app(live))])
    with BackgroundServer(outer) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        mounted = c.post("/api/v1/recommend", json=body)
        assert mounted.status_code == 200, mounted.text
        assert mounted.json()["items"] == direct["items"]
        bad = c.post("/api/v1/recommend", json={"context": CONTEXT})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "candidates"
