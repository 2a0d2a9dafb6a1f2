"""The ranking HTTP API: a thin FastAPI layer over a Scorer, with limits, precise 4xx errors, metrics and hot reload.

Routes: POST /v1/recommend and /v1/score (JSON bodies, ``Content-Type: application/json``); GET /v1/model (version,
training metadata, features, limits; never a local path); GET /healthz (liveness: up, with a model); GET /readyz
(readiness: 503 naming the version and the reason while the registry's current version could not be loaded and the
previous model keeps serving); GET /metrics (Prometheus). Bad input always gets a 4xx JSON error naming the field (or the
header); 500 is only for bugs. A client that goes away before its answer is counted as status 499 and logged at info.

Bodies are read on the event loop under a deadline (widedeep.serve.request) and parsed with orjson straight from bytes
(no per-field model validation on the hot path); parsing, the feature transform and the scoring run in a worker thread,
so a slow request never holds up /healthz or other requests. The request and response models below exist for the
OpenAPI docs. The connection limits (a deadline for the headers, a cap on open connections) are GuardedProtocol's.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from widedeep.metrics import json_safe
from widedeep.serve.errors import RequestError
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.prom import CONTENT_TYPE, ServerMetrics
from widedeep.serve.request import check_values, parse_object, read_body, required
from widedeep.serve.scorer import Scorer
from widedeep.serve.settings import POLL_S, PROJECT_MB, Backend

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("widedeep.serve")

CLIENT_GONE = 499  # the status counted for a client that disconnected before its answer (nginx's convention)


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
    field: str = Field(
        description="JSON path of the offending value, e.g. candidates[3].app_price ('' for the whole body; the header's "
        "name, e.g. Content-Type, for a header)"
    )
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 408, 413, 415, 422)}


# -- the app -------------------------------------------------------------------------------------------------------------


def create_app(live: LiveScorer, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving `live` within `limits`; its registry watcher runs for the app's lifetime."""
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        live.start()
        try:
            yield
        finally:
            live.stop()

    app = FastAPI(title="widedeep ranking API", version="1", lifespan=lifespan)
    app.state.live, app.state.metrics, app.state.limits = live, metrics, limits

    async def answer(request: Request, route: str, work: Callable[[Scorer, bytes], dict[str, Any]]) -> Response:
        """Read the body here, run `work` (parse, check, score) in a worker thread, and answer with JSON."""
        t0 = time.perf_counter()
        scorer = live.scorer  # taken once: a hot reload never changes the model under a request
        try:
            body = await read_body(request, limits)
            out = await run_in_threadpool(work, scorer, body)
            if await request.is_disconnected():
                raise ClientDisconnect()
            return _json(out, 200, metrics, route, t0)
        except ClientDisconnect:
            log.info("%s: the client disconnected before the answer", route)
            metrics.observe(route, CLIENT_GONE, time.perf_counter() - t0)
            return Response(status_code=CLIENT_GONE)  # nobody reads it: uvicorn drops it
        except Exception as e:  # noqa: BLE001 -- every failure becomes a JSON answer; bugs are logged
            return _failure(e, metrics, route, t0)

    def recommend_work(scorer: Scorer, body: bytes) -> dict[str, Any]:
        doc = parse_object(body)
        context = doc.get("context", {})
        candidates = required(doc, "candidates")
        if isinstance(candidates, list) and len(candidates) > limits.max_candidates:
            raise RequestError("candidates", f"{len(candidates)} candidates exceed the limit of {limits.max_candidates}")
        check_values({"context": context, "candidates": candidates}, scorer.features.input_columns, body, limits.max_string_bytes)
        ranked = scorer.recommend(context, candidates, doc.get("k", 10))
        items = [{"index": i, "score": s} for i, s in zip(ranked.index.tolist(), ranked.score.tolist())]
        return {"model_version": scorer.version, "items": items}

    def score_work(scorer: Scorer, body: bytes) -> dict[str, Any]:
        doc = parse_object(body)
        instances = required(doc, "instances")
        if isinstance(instances, list) and len(instances) > limits.max_candidates:
            raise RequestError("instances", f"{len(instances)} instances exceed the limit of {limits.max_candidates}")
        check_values({"instances": instances}, scorer.features.input_columns, body, limits.max_string_bytes)
        return {"model_version": scorer.version, "scores": scorer.score(instances).tolist()}

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=_ERRORS, openapi_extra=_body_doc(RecommendRequest))
    async def recommend(request: Request) -> Response:
        """Rank the candidates for one context and return the top k with their probabilities, best first."""
        return await answer(request, "/v1/recommend", recommend_work)

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, openapi_extra=_body_doc(ScoreRequest))
    async def score(request: Request) -> Response:
        """One probability per instance, in request order."""
        return await answer(request, "/v1/score", score_work)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the server is up and has a model."""
        return {"status": "ok", "model_version": live.scorer.version}

    @app.get("/readyz", responses={503: {"description": "the registry's current version could not be loaded"}})
    async def readyz() -> Response:
        """Readiness: 503 while the registry's current version could not be loaded (the previous model keeps serving)."""
        failure = live.failure
        serving = {"model_version": live.scorer.version, "registry_version": live.registry_version}
        if failure is None:
            return Response(orjson.dumps({"status": "ready", **serving}), media_type="application/json")
        what = f"registry version {failure.version!r} could not be loaded" if failure.version else "CURRENT could not be read"
        message = f"{what}: {failure.reason}; still serving {live.registry_version!r}"
        doc = {"status": "not ready", "error": {"field": "", "message": message}, "failed_version": failure.version,
               "reason": failure.reason, **serving}  # fmt: skip
        return Response(orjson.dumps(doc), status_code=503, media_type="application/json")

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model being served: version, training metadata and metrics, input features, limits."""
        s = live.scorer
        meta = s.meta
        return {
            "version": s.version,
            "registry_version": live.registry_version,
            "backend": meta.get("backend"),
            "int8": meta.get("int8"),
            "sub_batch": s.sub_batch,
            "threads": s.threads,
            "metrics": json_safe(meta.get("metrics", {})),
            "training": {
                "parameters": (meta.get("architecture") or {}).get("parameters"),
                "fingerprint": meta.get("fingerprint"),
                "library_versions": meta.get("versions"),
            },
            "features": [
                {"name": f.name, "column": f.source, "type": f.type, "multi_valued": f.multi_valued} for f in s.features.features
            ],
            "inputs": list(s.features.input_columns),
            "limits": asdict(limits),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics: request counts by route and status, latency histogram, model version, reloads."""
        metrics.reloads, metrics.reload_failures = live.reloads, live.reload_failures
        return Response(metrics.render(live.scorer.version), media_type=CONTENT_TYPE)

    return app


def _json(obj: Any, status: int, metrics: ServerMetrics, route: str, t0: float, close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    resp = Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)
    metrics.observe(route, status, time.perf_counter() - t0)
    return resp


def _failure(e: Exception, metrics: ServerMetrics, route: str, t0: float) -> Response:
    if isinstance(e, RequestError):
        return _json({"error": {"field": e.field, "message": e.message}}, e.status, metrics, route, t0, close=e.close)
    log.exception("%s failed", route)
    return _json({"error": {"field": "", "message": f"internal error: {type(e).__name__}"}}, 500, metrics, route, t0)


# -- connections ---------------------------------------------------------------------------------------------------------
#
# uvicorn closes idle keep-alive connections, but it has no deadline for a request's headers: a client that connects and
# then sends nothing, or a header line now and then, holds a connection forever. GuardedProtocol adds that deadline
# (408, then close) and refuses connections past max_connections at once (503, then close).

_LATE = b'{"error":{"field":"","message":"request headers not received in time"}}'
_BUSY = b'{"error":{"field":"","message":"too many open connections; try again later"}}'


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and a cap on open connections."""

    def __init__(self, *args: Any, header_timeout: float, max_connections: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timeout, self._max_connections = header_timeout, max_connections
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self.logger.warning("refused a connection: %d open, the limit is %d", len(self.connections) - 1, self._max_connections)
            self._reply_and_close(503, _BUSY)
            return
        self._arm()  # the first request's headers are due this long after connecting

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a later request's headers: due this long after its first byte
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._reply_and_close(408, _LATE)

    def _reply_and_close(self, status: int, body: bytes) -> None:
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        self.transport.close()


def uvicorn_config(app: Any, limits: Limits, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config for `app` that enforces `limits` (header deadline, keep-alive, connection cap); `kwargs` go to
    uvicorn (host, port, log_level, ...)."""
    import uvicorn

    protocol = functools.partial(GuardedProtocol, header_timeout=limits.header_timeout, max_connections=limits.max_connections)
    return uvicorn.Config(
        app,
        http=protocol,  # type: ignore[arg-type]
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        access_log=False,
        **kwargs,
    )


# -- running -------------------------------------------------------------------------------------------------------------


def serve(
    source: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Backend | None = None,
    sub_batch: int | None = None,
    threads: int | None = None,
    limits: Limits = Limits(),
    poll_s: float = POLL_S,
    intra_op: int = 1,
    project_mb: int = PROJECT_MB,
    int8: bool = False,
    log_level: str = "info",
) -> None:
    """Run the ranking server until interrupted (loads the model first, so a bad model fails before binding).

    Defaults chosen for 2 cores: the `hybrid` backend (the MLP in onnxruntime, context half split out) where onnxruntime
    is installed, one 200-candidate pass on its 2 threads; else torch with 100-candidate sub-batches on 2 threads. Torch
    itself gets 1 thread per forward pass (2 intra-op threads spin and slow down 5-10x when the cores are shared).
    uvicorn picks uvloop (the serve extra); the HTTP parser is httptools (GuardedProtocol).
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
    app = create_app(live, limits)
    log.info("serving %s (model %s, backend %s) on http://%s:%d", source, live.scorer.version, backend, host, port)
    # Everything loaded so far (torch, the model, the app) lives for the whole run: move it out of the garbage collector's
    # reach, so that a full collection triggered by a request's allocations does not walk it (a p99 latency spike).
    gc.collect()
    gc.freeze()
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port, log_level=log_level)).run()


class BackgroundServer:
    """A uvicorn server on a daemon thread, bound to a free loopback port, with the app's limits (for tests and
    in-process benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        limits = getattr(app.state, "limits", Limits())
        self.server = uvicorn.Server(uvicorn_config(app, limits, log_level="warning", lifespan="on"))
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
