"""Hot reload: a model promoted in the registry while a client keeps sending requests is served with zero failed requests."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import torch

from widedeep.artifact import Model, save_model
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.registry import Registry
from widedeep.serve.scorer import Scorer

REQUEST = {
    "context": {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5},
    "candidates": [{"impression_app": f"app{i}", "price": float(i % 5)} for i in range(30)],
    "k": 5,
}


def _shifted_copy(model_dir: Path, out: Path, shift: float) -> Path:
    """The same model with its joint bias moved: a different version with different scores."""
    m = Model.load(model_dir)
    with torch.no_grad():
        m.module.bias.add_(shift)
    return save_model(out, m.module, m.features, m.config, m.meta.get("metrics", {}))


def _wait_for(client: httpx.Client, version: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get("/v1/model").json()
        if info["registry_version"] == version:
            return info
        time.sleep(0.05)
    raise AssertionError(f"server did not switch to {version} within {timeout}s (serving {info['registry_version']})")


def test_promotion_under_load_fails_no_request_and_a_broken_one_is_skipped(tiny_model: Path, tiny_config: Path, tmp_path: Path):
    eval_data = tiny_config.parent / "eval.parquet"
    reg = Registry(tmp_path / "registry", create=True)
    reg.add(tiny_model, name="v1")
    reg.promote("v1", data=eval_data)
    reg.add(_shifted_copy(tiny_model, tmp_path / "m2", 0.5), name="v2")

    live = LiveScorer(reg.root, lambda p: Scorer.load(p, sub_batch=10, threads=2), poll_s=0.05)
    v1_sha = live.scorer.version
    assert Scorer.load(reg.root).version == v1_sha  # a registry path loads its current version
    stop, statuses, versions = threading.Event(), [], set()

    with BackgroundServer(create_app(live)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:

        def keep_sending() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v1/recommend", json=REQUEST)
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            versions.add(r.json()["model_version"])
                    except httpx.HTTPError as e:  # a dropped connection is a failure too
                        statuses.append(repr(e))

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            while len(statuses) < 5:
                time.sleep(0.01)
            report = reg.promote("v2", data=eval_data, force=True)
            assert reg.current_version() == "v2", report
            info = _wait_for(client, "v2")
            n = len(statuses)
            while len(statuses) < n + 5:
                time.sleep(0.01)
        finally:
            stop.set()
            sender.join(timeout=30)

        assert statuses and all(s == 200 for s in statuses), [s for s in statuses if s != 200][:5]
        v2_sha = info["version"]
        assert v2_sha != v1_sha and versions == {v1_sha, v2_sha}

        # A promoted version that fails to load (tampered after it was added) is logged and skipped: v2 stays.
        reg.add(tiny_model, name="v3")
        weights = reg.path("v3") / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        tmp = reg.root / ".CURRENT.hand"
        tmp.write_text("v3\n")
        os.replace(tmp, reg.root / "CURRENT")
        deadline = time.monotonic() + 20
        while live.reload_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.reload_failures == 1
        r = client.post("/v1/recommend", json=REQUEST)
        assert r.status_code == 200 and r.json()["model_version"] == v2_sha
        assert client.get("/v1/model").json()["registry_version"] == "v2"
        assert 'widedeep_model_reloads_total{result="failed"} 1' in client.get("/metrics").text

        # ...and readiness says so, naming the version and the reason, without the server's paths.
        r = client.get("/readyz")
        assert r.status_code == 503, r.text
        ready = r.json()
        assert ready["failed_version"] == "v3" and ready["registry_version"] == "v2" and ready["model_version"] == v2_sha
        assert "'v3'" in ready["error"]["message"] and "model.safetensors" in ready["reason"]
        assert str(tmp_path) not in r.text and str(tmp_path.resolve()) not in r.text
        assert client.get("/healthz").status_code == 200  # alive all the same

        # CURRENT back at the served version: ready again.
        tmp.write_text("v2\n")
        os.replace(tmp, reg.root / "CURRENT")
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"status": "ready", "model_version": v2_sha, "registry_version": "v2"}
