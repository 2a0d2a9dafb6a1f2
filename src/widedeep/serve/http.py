"""The ranking HTTP API: a thin FastAPI layer over a Scorer, with limits, precise 4xx errors, metrics and hot reload.

Bodies are parsed with orjson straight from bytes (no per-field model validation on the hot path); the request and response
models below exist for the OpenAPI docs. Bad input always gets a 4xx JSON error naming the field; 500 is only for bugs.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from widedeep.serve.errors import RequestError
from widedeep.serve.live import LiveScorer
from widedeep.serve.prom import CONTENT_TYPE, ServerMetrics
from widedeep.serve.scorer import Backend, Scorer

log = logging.getLogger("widedeep.serve")

MAX_BODY_BYTES = 1 << 20
MAX_CANDIDATES = 1000


# -- documentation models (not used to parse) ----------------------------------------------------------------------------


class RecommendRequest(BaseModel):
    context: dict[str, Any] = Field(default_factory=dict, description="user and context features, transformed once")
    candidates: list[dict[str, Any]] = Field(description="item features of each candidate (1 to max_candidates)")
    k: int = Field(10, ge=1, description="how many candidates to return")


class RankedItem(BaseModel):
    index: int = Field(description="position in the request's candidate list")
    score: float = Field(description="P(acquisition | context, candidate)")


class RecommendResponse(BaseModel):
    model_version: str
    items: list[RankedItem]


class ScoreRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(description="full feature records")


class ScoreResponse(BaseModel):
    model_version: str
    scores: list[float]


class ErrorBody(BaseModel):
    field: str = Field(description="JSON path of the offending value, e.g. candidates[3].app_price ('' for the whole body)")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_ERRORS = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


# -- the app -------------------------------------------------------------------------------------------------------------


def create_app(live: LiveScorer, *, max_body_bytes: int = MAX_BODY_BYTES, max_candidates: int = MAX_CANDIDATES) -> FastAPI:
    """The FastAPI app serving `live`; its registry watcher runs for the app's lifetime."""
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        live.start()
        try:
            yield
        finally:
            live.stop()

    app = FastAPI(title="widedeep ranking API", version="1", lifespan=lifespan)
    app.state.live, app.state.metrics = live, metrics

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=_ERRORS, openapi_extra=_body_doc(RecommendRequest))
    async def recommend(request: Request) -> Response:
        """Rank the candidates for one context and return the top k with their probabilities, best first."""
        t0 = time.perf_counter()
        scorer = live.scorer  # taken once: a hot reload never changes the model under a request
        try:
            doc = await _read_json(request, max_body_bytes)
            context = doc.get("context", {})
            candidates = _required(doc, "candidates")
            if isinstance(candidates, list) and len(candidates) > max_candidates:
                raise RequestError("candidates", f"{len(candidates)} candidates exceed the limit of {max_candidates}")
            ranked = scorer.recommend(context, candidates, doc.get("k", 10))
            items = [{"index": i, "score": s} for i, s in zip(ranked.index.tolist(), ranked.score.tolist())]
            return _json({"model_version": scorer.version, "items": items}, 200, metrics, "/v1/recommend", t0)
        except Exception as e:  # noqa: BLE001 -- every failure becomes a JSON answer; bugs are logged
            return _failure(e, metrics, "/v1/recommend", t0)

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, openapi_extra=_body_doc(ScoreRequest))
    async def score(request: Request) -> Response:
        """One probability per instance, in request order."""
        t0 = time.perf_counter()
        scorer = live.scorer
        try:
            doc = await _read_json(request, max_body_bytes)
            instances = _required(doc, "instances")
            if isinstance(instances, list) and len(instances) > max_candidates:
                raise RequestError("instances", f"{len(instances)} instances exceed the limit of {max_candidates}")
            p = scorer.score(instances)
            return _json({"model_version": scorer.version, "scores": p.tolist()}, 200, metrics, "/v1/score", t0)
        except Exception as e:  # noqa: BLE001
            return _failure(e, metrics, "/v1/score", t0)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the server is up and has a model."""
        return {"status": "ok", "model_version": live.scorer.version}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model being served: version, training metrics, input features."""
        s = live.scorer
        fs = s.features
        return {
            "version": s.version,
            "registry_version": live.registry_version,
            "source": str(live.source),
            "backend": s.meta.get("backend"),
            "sub_batch": s.sub_batch,
            "threads": s.threads,
            "metrics": s.meta.get("metrics", {}),
            "features": [{"name": f.name, "column": f.source, "type": f.type, "multi_valued": f.multi_valued} for f in fs.features],
            "inputs": list(fs.input_columns),
            "limits": {"max_body_bytes": max_body_bytes, "max_candidates": max_candidates},
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics: request counts by route and status, latency histogram, model version, reloads."""
        metrics.reloads, metrics.reload_failures = live.reloads, live.reload_failures
        return Response(metrics.render(live.scorer.version), media_type=CONTENT_TYPE)

    return app


# -- request and response helpers ------------------------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past `limit` bytes (checked before and while reading), 400 for malformed JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError("", f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError("", f"body exceeds the limit of {limit} bytes", 413)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _non_finite_error(bytes(body)) or RequestError("", f"invalid JSON: {e}", 400) from None
    if not isinstance(doc, dict):
        raise RequestError("", f"expected a JSON object, got {type(doc).__name__}", 400)
    return doc


class _NonFinite(float):
    """NaN/Infinity as the lenient stdlib parser reads them, marked so that their path can be reported."""


def _non_finite_error(body: bytes) -> RequestError | None:
    """JSON has no NaN or Infinity; if that is why orjson refused the body, name the field that holds one."""
    try:
        doc = json.loads(body, parse_constant=lambda c: _NonFinite(c.replace("Infinity", "inf")))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    path = _find(doc, "")
    return RequestError(path, "NaN and Infinity are not valid numbers") if path is not None else None


def _find(node: Any, path: str) -> str | None:
    if isinstance(node, _NonFinite) or (isinstance(node, float) and not math.isfinite(node)):
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        found = _find(value, sub)
        if found is not None:
            return found
    return None


def _required(doc: dict[str, Any], key: str) -> Any:
    if key not in doc:
        raise RequestError(key, "is required")
    return doc[key]


def _json(obj: Any, status: int, metrics: ServerMetrics, route: str, t0: float) -> Response:
    resp = Response(orjson.dumps(obj), status_code=status, media_type="application/json")
    metrics.observe(route, status, time.perf_counter() - t0)
    return resp


def _failure(e: Exception, metrics: ServerMetrics, route: str, t0: float) -> Response:
    if isinstance(e, RequestError):
        return _json({"error": {"field": e.field, "message": e.message}}, e.status, metrics, route, t0)
    log.exception("%s failed", route)
    return _json({"error": {"field": "", "message": f"internal error: {type(e).__name__}"}}, 500, metrics, route, t0)


# -- running -------------------------------------------------------------------------------------------------------------


def serve(
    source: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Backend | None = None,
    sub_batch: int | None = None,
    threads: int | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_candidates: int = MAX_CANDIDATES,
    poll_s: float = 0.5,
    intra_op: int = 1,
    project_mb: int = 256,
    int8: bool = False,
    log_level: str = "info",
) -> None:
    """Run the ranking server until interrupted (loads the model first, so a bad model fails before binding).

    Defaults chosen for 2 cores: the `hybrid` backend (the MLP in onnxruntime, context half split out) where onnxruntime
    is installed, one 200-candidate pass on its 2 threads; else torch with 100-candidate sub-batches on 2 threads. Torch
    itself gets 1 thread per forward pass (2 intra-op threads spin and slow down 5-10x when the cores are shared).
    uvicorn picks uvloop and httptools (the serve extra).
    """
    import uvicorn

    from widedeep.serve.scorer import configure_torch_threads, default_backend, default_split

    backend = backend or default_backend()
    split = default_split(backend)
    sub_batch, threads = sub_batch or split[0], threads or split[1]
    configure_torch_threads(intra_op)
    def load(path: Path) -> Scorer:
        return Scorer.load(path, backend=backend, sub_batch=sub_batch, threads=threads, project_bytes=project_mb << 20, int8=int8)

    live = LiveScorer(source, load, poll_s=poll_s)
    app = create_app(live, max_body_bytes=max_body_bytes, max_candidates=max_candidates)
    log.info("serving %s (model %s, backend %s) on http://%s:%d", source, live.scorer.version, backend, host, port)
    # Everything loaded so far (torch, the model, the app) lives for the whole run: move it out of the garbage collector's
    # reach, so that a full collection triggered by a request's allocations does not walk it (a p99 latency spike).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


class BackgroundServer:
    """A uvicorn server on a daemon thread, bound to a free loopback port (for tests and in-process benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()
