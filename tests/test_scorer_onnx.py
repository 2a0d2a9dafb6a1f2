"""The onnxruntime backend: the Scorer serves the ONNX export with the torch backend's numbers, in process and over HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.onnx import export_onnx
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "de", "installed_apps": ["app1", "app4", "app9"], "user_id": 7, "age": None}


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(tiny_model, model)
    export_onnx(model)
    return model


def test_onnxruntime_backend_matches_torch(exported: Path):
    cands = [{"impression_app": f"app{i % 31}", "price": i / 10} for i in range(90)]
    torch_ = Scorer.load(exported, backend="torch", sub_batch=90)
    ort = Scorer.load(exported, backend="onnxruntime", sub_batch=30, threads=3)
    try:
        a, b = torch_.recommend(CONTEXT, cands, k=90), ort.recommend(CONTEXT, cands, k=90)
        np.testing.assert_allclose(b.score[np.argsort(b.index)], a.score[np.argsort(a.index)], rtol=1e-4, atol=1e-5)
        assert ort.meta["backend"] == "onnxruntime" and ort.version == torch_.version
        rows = [{**CONTEXT, **c} for c in cands[:5]]
        np.testing.assert_allclose(ort.score(rows), torch_.score(rows), rtol=1e-4, atol=1e-5)
    finally:
        ort.close()


def test_http_with_onnxruntime_backend(exported: Path):
    live = LiveScorer(exported, lambda p: Scorer.load(p, backend="onnxruntime"))
    with BackgroundServer(create_app(live)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": [{"impression_app": "app3", "price": 2.0}] * 3, "k": 2})
        assert r.status_code == 200, r.text
        # Three identical candidates: onnxruntime's scores of identical rows can differ in the last bit, so which two
        # come first is not fixed.
        picked = [it["index"] for it in r.json()["items"]]
        assert len(picked) == 2 and len(set(picked)) == 2 and set(picked) <= {0, 1, 2}, picked
        assert client.get("/v1/model").json()["backend"] == "onnxruntime"
        bad = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": [{"impression_app": 3.5, "price": 1}]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "candidates[0].impression_app"
