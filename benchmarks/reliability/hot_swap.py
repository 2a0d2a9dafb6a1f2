"""Area 5: hot swap under load. A registry holds the reference model (promoted in process); `widedeep serve REGISTRY`
answers 4 client threads sending /v1/recommend back to back while the main thread runs
`widedeep promote NEW --registry REGISTRY --data HOLDOUT` several times. Every request must
succeed, each promoted version must reach the clients (its `model_version` seen in an answer), and /healthz must not
stall. The versions are the reference model with its joint bias moved a little: other weights, same ranking quality,
so each promotion passes validation on the holdout."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import threading
import time
from pathlib import Path

from .common import Area, Prober, Row, last_line, run_cli, serving
from .http_fuzz import Requests

CLIENTS = 4
SERVE_TIMEOUT_S = 30.0  # a promoted version must be answering within this long


def shifted_copy(model_dir: Path, out: Path, shift: float) -> str:
    """Save the model at `model_dir` with its bias moved by `shift` to `out`; returns the new model's version."""
    import torch

    from widedeep.artifact import Model, save_model

    m = Model.load(model_dir)
    with torch.no_grad():
        m.module.bias.add_(shift)
    save_model(out, m.module, m.features, m.config, m.meta.get("metrics", {}))
    return Model.load(out).version


class Clients:
    """`CLIENTS` threads, each on one keep-alive connection, sending valid ranking requests until stopped."""

    def __init__(self, port: int, reqs: Requests):
        self.port = port
        self.bodies = [json.dumps(reqs.recommend(20)).encode() for _ in range(16)]
        self.sent = self.failed = self.http_5xx = 0
        self.errors: list[str] = []
        self.versions: list[str] = []  # model_version of each answer, in arrival order
        self.longest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def seen(self, version: str) -> bool:
        with self._lock:
            return version in self.versions

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = index
        while not self._stop.is_set():
            body, i = self.bodies[i % len(self.bodies)], i + 1
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status, error = resp.status, "" if resp.status == 200 else f"answered {resp.status}: {data[:120]!r}"
            except (OSError, http.client.HTTPException) as e:
                status, error = None, f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self._lock:
                self.sent += 1
                self.longest = max(self.longest, time.monotonic() - t0)
                if error:
                    self.failed += 1
                    self.http_5xx += status is not None and status >= 500
                    self.errors.append(error)
                else:
                    self.versions.append(json.loads(data)["model_version"])
        conn.close()


def run_area(model_dir: Path, eval_file: Path, root: Path, *, promotions: int, seed: int) -> Area:
    """Promote the reference into a new registry (in process), serve it, then promote `promotions` more versions under
    load with `widedeep promote`."""
    from widedeep.artifact import Model
    from widedeep.serve.registry import Registry

    t0 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    registry = root / "registry"
    names = [f"v{i}" for i in range(promotions + 1)]
    sources, versions = [model_dir], []
    versions.append(Model.load(model_dir).version)
    for i in range(1, promotions + 1):
        sources.append(root / f"model-{names[i]}")
        versions.append(shifted_copy(model_dir, sources[-1], 0.02 * i * (-1) ** i))
    promote = Row("promotions")
    first = Registry(registry, create=True).promote(str(model_dir), data=str(eval_file), name=names[0])  # sets up the registry
    if not first.passed:
        raise RuntimeError(f"promoting {model_dir} into a new registry failed:\n{first.to_text()}")
    requests = Row("requests while promoting", http_5xx=0)
    with serving(registry, root / "serve.log", "--poll", "0.1") as port, Prober(port) as prober:
        with Clients(port, Requests(eval_file, random.Random(f"{seed}:swap"))) as clients:
            _wait(lambda: clients.sent >= 20, 30)
            for name, source, version in zip(names[1:], sources[1:], versions[1:]):
                promote.tried += 1
                r = run_cli(["promote", str(source), "--registry", str(registry), "--data", str(eval_file), "--name", name], root)
                if r.returncode != 0:
                    promote.failed += 1
                    promote.note(f"{name}: `widedeep promote` exited {r.returncode}: {last_line(r.stderr) or last_line(r.stdout)}")
                    continue
                if not _wait(lambda: clients.seen(version), SERVE_TIMEOUT_S):
                    promote.failed += 1
                    promote.note(f"{name} (model {version}) was not served within {SERVE_TIMEOUT_S:.0f} s")
                n = clients.sent
                _wait(lambda: clients.sent >= n + 20, 30)  # some load on the new version before the next swap
    requests.tried, requests.failed, requests.http_5xx = clients.sent, clients.failed, clients.http_5xx
    requests.notes += sorted(set(clients.errors))[:4]
    served = list(dict.fromkeys(clients.versions))
    requests.note(f"model_version served in turn: {' -> '.join(served)} (slowest answer {clients.longest * 1000:.0f} ms)")
    if served[:1] != versions[:1] or len(served) < 2:
        requests.failed += 1
        requests.note("the served model_version did not change")
    probe = Row("GET /healthz every 50 ms", prober.calls, prober.failures, http_5xx=0, stall_s=prober.longest)
    probe.notes += sorted(set(prober.errors))[:3]
    title = f"area 5: hot swap under load ({CLIENTS} clients, {promotions} promotion(s) via `widedeep promote`)"
    return Area(title, [requests, promote, probe], time.monotonic() - t0)


def _wait(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
