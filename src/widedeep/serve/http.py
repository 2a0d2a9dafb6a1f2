"""The ranking HTTP API: a thin FastAPI layer over a Scorer, with limits, precise 4xx errors, metrics and hot reload,
impression and event logs, and A/B arms.

Routes: POST /v1/recommend and /v1/score (JSON bodies, ``Content-Type: application/json``); POST /v1/events (outcomes,
with --log-dir); GET /v1/model (version, training metadata, features, limits, the arms; never a local path); GET /healthz
(liveness: up, with a model); GET /readyz (readiness: 503 naming the version and the reason while a registry's current
version could not be loaded and the previous model keeps serving); GET /metrics (Prometheus). Bad input always gets a 4xx
JSON error naming the field (or the header); 500 is only for bugs. A client that goes away before its answer is counted
as status 499 and logged at info.

Every /v1/recommend answer has a `request_id`: the client's (a top-level ``"request_id"``, a non-empty string of at most
128 characters) or a fresh uuid4 hex, and the `arm` that answered ("default" with one model).

Columnar candidates: besides a list of objects, ``"candidates"`` may be an object of columns, ``{"impression_app":
["a", "b", ...], "app_price": [0.99, 0, ...]}``, one value per candidate in each (all of one length; a field that is not a
column comes from the context), and so may /v1/score's ``"instances"``. The scores are those of the same candidates as
objects, but each column is checked and transformed whole (FeatureSet.transform_columns: no Python code per candidate),
which makes it the faster form for large requests. Errors name the value as ``candidates.app_price[17]``, or the column
(``candidates.app_price``: not a list, or of another length than the first column).

Impression logging, ``widedeep serve MODEL --log-dir DIR [--log-sample 1.0]``: each returned item of a /v1/recommend
answer is one row of DIR/impressions/part-<UTC time>-<seq>.parquet (`widedeep.loop.schema.impression_schema`: request id,
time, model version, arm, position, candidate index, score, and the context's and candidate's features as received).
--log-sample keeps that share of the requests (whole requests, by a hash of the request id). The request only enqueues;
a background thread writes part files when the oldest row is --log-roll-seconds old (60) or a file reaches
--log-roll-rows / --log-roll-mb, and on shutdown (SIGTERM). Each file appears whole or not at all; a killed server loses
at most the rows of the interval it had not written. When --log-queue answers wait, further rows are dropped and counted
(`widedeep_log_dropped_total{log="impressions"}`); the request is never slowed or failed. An answer whose client went
away before it was sent is not logged.

Outcome events, POST /v1/events ``{"events": [{"request_id": "...", "index": 3, "type": "install", "time":
"2026-12-01T10:00:00Z"}]}``: `index` is the candidate's position in the request's candidate list, `time` (ISO-8601 with a
zone) is optional (the server stamps its receive time); at most --max-candidates events per POST. The events go to
DIR/events/ (`EVENT_SCHEMA`) the same way; a bad event gets a 422 naming the field (``events[2].index``), an unknown
request id is accepted (the join counts it), a full queue answers 503 (retry). Without --log-dir the route answers 404.

A/B arms, ``widedeep serve --arms control=PATH:50,treatment=PATH:50 [--split-key user_id]`` (instead of MODEL): each arm
follows a model directory, a registry (hot-reloaded) or a pinned version ``REG@VERSION``; weights are relative integers.
A ranking request's arm is picked by a stable hash of the split key in its context (so a user keeps their arm across
requests and restarts); a request without it gets a 422 naming ``context.<key>``. /v1/score uses the first arm unless
the body names one (``"arm": "treatment"``). The arm is in every answer, every impression row, /v1/model and /metrics.

Bodies are read on the event loop under a deadline (widedeep.serve.request) and parsed with orjson straight from bytes
(no per-field model validation on the hot path); parsing, the feature transform and the scoring run in a worker thread,
so a slow request never holds up /healthz or other requests. The request and response models in widedeep.serve.openapi
exist for the OpenAPI docs. The connection limits (a deadline for the headers, a cap on open connections) are
widedeep.serve.server's.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from widedeep.features.columnar import Rows
from widedeep.loop.arms import Arms, parse_arms
from widedeep.metrics import json_safe
from widedeep.serve.batcher import Batching, batched
from widedeep.serve.errors import RequestError
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.openapi import (
    ERRORS,
    EVENT_ERRORS,
    EventsRequest,
    EventsResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    body_doc,
)
from widedeep.serve.prom import CONTENT_TYPE, LogCounts, ServerMetrics
from widedeep.serve.request import check_rows, check_values, parse_events, parse_object, read_body, request_id, required
from widedeep.serve.scorer import Scorer
from widedeep.serve.server import BackgroundServer, uvicorn_config  # noqa: F401 -- BackgroundServer: tests import it from here
from widedeep.serve.settings import LOG_SAMPLE, POLL_S, PRECISION, PROJECT_MB, SPLIT_KEY, WORKERS, Backend

if TYPE_CHECKING:
    from widedeep.loop.logs import Rolling, ServerLogs

log = logging.getLogger("widedeep.serve")

CLIENT_GONE = 499  # the status counted for a client that disconnected before its answer (nginx's convention)
Work = tuple[dict[str, Any], Callable[[], None] | None]  # an answer, and what to do once it goes out


# -- the app -------------------------------------------------------------------------------------------------------------


def create_app(live: LiveScorer | Arms, limits: Limits = Limits(), logs: ServerLogs | None = None) -> FastAPI:
    """The FastAPI app serving `live` (one model, the arm "default", or several A/B arms) within `limits`, logging
    impressions and events to `logs` if given; registry watchers and log writers run for the app's lifetime."""
    arms = live if isinstance(live, Arms) else Arms.single(live)
    metrics = ServerMetrics()
    if logs is not None:
        for arm in arms:
            logs.check(arm.live.scorer.features.features)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if logs is not None:
            logs.start()
        arms.start()
        try:
            yield
        finally:
            arms.stop()
            if logs is not None:
                logs.stop()  # writes what is queued: uvicorn has answered every request by now

    app = FastAPI(title="widedeep ranking API", version="1", lifespan=lifespan)
    app.state.live, app.state.arms, app.state.logs = arms.first.live, arms, logs
    app.state.metrics, app.state.limits = metrics, limits

    async def answer(request: Request, route: str, work: Callable[[bytes], Work]) -> Response:
        """Read the body here, run `work` (parse, check, score) in a worker thread, and answer with JSON; what `work`
        leaves to do once the answer goes out (queue its impressions) is skipped for a client that went away."""
        t0 = time.perf_counter()
        try:
            body = await read_body(request, limits)
            out, then = await run_in_threadpool(work, body)
            if await request.is_disconnected():
                raise ClientDisconnect()
            if then is not None:
                then()
            if "arm" in out:
                metrics.observe_arm(out["arm"], route)
            return _json(out, 200, metrics, route, t0)
        except ClientDisconnect:
            log.info("%s: the client disconnected before the answer", route)
            metrics.observe(route, CLIENT_GONE, time.perf_counter() - t0)
            return Response(status_code=CLIENT_GONE)  # nobody reads it: uvicorn drops it
        except Exception as e:  # noqa: BLE001 -- every failure becomes a JSON answer; bugs are logged
            return _failure(e, metrics, route, t0)

    def recommend_work(body: bytes) -> Work:
        doc = parse_object(body)
        rid = request_id(doc)
        context = doc.get("context", {})
        arm = arms.assign(context)
        scorer = arm.live.scorer  # taken once: a hot reload never changes the model under a request
        candidates = required(doc, "candidates")
        rows = check_rows(candidates, "candidates", scorer.features.input_columns, limits)  # a list of records, or columns
        check_values({"context": context, **rows}, scorer.features.input_columns, body, limits.max_string_bytes)
        ranked = scorer.recommend(context, candidates, doc.get("k", 10))
        rid = rid or uuid.uuid4().hex
        index, score = ranked.index.tolist(), ranked.score.tolist()
        then = None
        if logs is not None:
            features = scorer.features.features
            shown = candidates if isinstance(candidates, list) else Rows(candidates)
            then = functools.partial(logs.answer, rid, scorer.version, arm.name, index, score, context, shown, features)
        items = [{"index": i, "score": s} for i, s in zip(index, score)]
        return {"request_id": rid, "model_version": scorer.version, "arm": arm.name, "items": items}, then

    def score_work(body: bytes) -> Work:
        doc = parse_object(body)
        arm = arms.named(doc["arm"]) if "arm" in doc else arms.first
        scorer = arm.live.scorer
        instances = required(doc, "instances")
        rows = check_rows(instances, "instances", scorer.features.input_columns, limits)
        check_values(rows, scorer.features.input_columns, body, limits.max_string_bytes)
        return {"model_version": scorer.version, "arm": arm.name, "scores": scorer.score(instances).tolist()}, None

    def events_work(body: bytes) -> Work:
        if logs is None:
            raise RequestError("", "event logging is off: start the server with --log-dir DIR to accept events", 404)
        events = parse_events(parse_object(body), limits.max_candidates, time.time_ns() // 1000)
        if not logs.post_events(events):
            raise RequestError("", "the event log's queue is full; these events were not logged, send them again", 503)
        return {"accepted": len(events)}, None

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS, openapi_extra=body_doc(RecommendRequest))
    async def recommend(request: Request) -> Response:
        """Rank the candidates for one context and return the top k with their probabilities, best first."""
        return await answer(request, "/v1/recommend", recommend_work)

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, openapi_extra=body_doc(ScoreRequest))
    async def score(request: Request) -> Response:
        """One probability per instance, in request order."""
        return await answer(request, "/v1/score", score_work)

    @app.post("/v1/events", response_model=EventsResponse, responses=EVENT_ERRORS, openapi_extra=body_doc(EventsRequest))
    async def events(request: Request) -> Response:
        """Log outcomes (install, click, ...) of shown candidates for the label join; 404 unless the server logs."""
        return await answer(request, "/v1/events", events_work)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the server is up and has a model (with A/B arms: the first arm's, and each arm's); `pid` names the
        process that answered (one of the workers, with --workers)."""
        out: dict[str, Any] = {"status": "ok", "model_version": arms.first.live.scorer.version, "pid": os.getpid()}
        if len(arms) > 1:
            out["arms"] = {a.name: a.live.scorer.version for a in arms}
        return out

    @app.get("/readyz", responses={503: {"description": "a registry's current version could not be loaded"}})
    async def readyz() -> Response:
        """Readiness: 503 while a registry's current version could not be loaded (the previous model keeps serving)."""
        states = [a.live.readiness() for a in arms]
        if len(arms) == 1:
            doc = states[0]
        else:
            first = states[0]
            doc = {"status": "ready" if all(s["status"] == "ready" for s in states) else "not ready",
                   "model_version": first["model_version"], "registry_version": first["registry_version"],
                   "arms": {a.name: s for a, s in zip(arms, states)}}  # fmt: skip
            failed = next((f"arm {a.name!r}: {s['error']['message']}" for a, s in zip(arms, states) if "error" in s), None)
            if failed is not None:
                doc["error"] = {"field": "", "message": failed}
        return Response(orjson.dumps(doc), status_code=200 if doc["status"] == "ready" else 503, media_type="application/json")

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model being served (the first arm's, with A/B arms): version, training metadata and metrics, input
        features, limits; then every arm, the split key and what is logged."""
        live = arms.first.live
        s = live.scorer
        meta = s.meta
        return {
            "version": s.version,
            "registry_version": arms.first.pinned or live.registry_version,
            "backend": meta.get("backend"),
            "precision": s.precision_report.to_dict(),
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
            "arms": arms.describe(),
            "split_key": arms.split_key if len(arms) > 1 else None,
            "logging": None if logs is None else {"impressions": True, "events": True, "sample": logs.sample},
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics: request counts by route and status, latency histogram, model version and requests by
        arm, reloads, logged and dropped rows."""
        metrics.reloads = sum(a.live.reloads for a in arms)
        metrics.reload_failures = sum(a.live.reload_failures for a in arms)
        counts = [LogCounts(lg.name, lg.written, lg.dropped, lg.files) for lg in logs] if logs is not None else []
        return Response(metrics.render({a.name: a.live.scorer.version for a in arms}, counts), media_type=CONTENT_TYPE)

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


# -- running -------------------------------------------------------------------------------------------------------------


def serve(
    source: Path | str | None = None,
    *,
    arms: str | None = None,
    split_key: str = SPLIT_KEY,
    log_dir: Path | str | None = None,
    log_sample: float = LOG_SAMPLE,
    rolling: Rolling | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Backend | None = None,
    sub_batch: int | None = None,
    threads: int | None = None,
    limits: Limits = Limits(),
    poll_s: float = POLL_S,
    intra_op: int = 1,
    project_mb: int = PROJECT_MB,
    batching: Batching = Batching(),
    workers: int = WORKERS,
    precision: str = PRECISION,
    log_level: str = "info",
) -> int:
    """Run the ranking server until interrupted (loads the models first, so a bad model fails before binding); returns
    the exit status.

    Serves `source` (a model directory or a registry) or the A/B `arms` (``NAME=PATH:WEIGHT,...``, split by `split_key`);
    with `log_dir`, logs impressions (a `log_sample` share of the requests) and accepts events, rolled by `rolling`.

    Defaults chosen for 2 cores: the `hybrid` backend (the MLP in onnxruntime, context half split out) where onnxruntime
    is installed, one 200-candidate pass on its 2 threads; else torch with 100-candidate sub-batches on 2 threads. Torch
    itself gets 1 thread per forward pass (2 intra-op threads spin and slow down 5-10x when the cores are shared).
    uvicorn picks uvloop (the serve extra); the HTTP parser is httptools (GuardedProtocol). Concurrent requests share
    passes of the network as `batching` says (widedeep.serve.batcher); `workers` > 1 forks that many server processes
    after loading the models (widedeep.serve.workers).
    """
    if (source is None) == (arms is None):
        raise ValueError("serve either one MODEL_OR_REGISTRY or --arms NAME=PATH:WEIGHT,... (not both)")
    import uvicorn

    from widedeep.artifact import Model
    from widedeep.serve.scorer import configure_torch_threads, default_backend, default_split, resolve_model_dir
    from widedeep.serve.workers import Preloaded, run_workers

    backend = backend or default_backend()
    split = default_split(backend)
    sub_batch, threads = sub_batch or split[0], threads or split[1]
    configure_torch_threads(intra_op)

    def build(model: Model, chosen: str) -> Scorer:
        return Scorer.from_model(model, backend=backend, sub_batch=sub_batch, threads=threads, project_bytes=project_mb << 20,
                                 precision=chosen)  # fmt: skip

    def make_app(load: Callable[[Path], Scorer], announce: bool = True) -> FastAPI:
        if arms is None:
            served = Arms.single(LiveScorer(source, load, poll_s=poll_s))
        else:
            served = Arms.load(parse_arms(arms), load, poll_s, split_key)
        logs = None
        if log_dir is not None:
            from widedeep.loop.logs import Rolling, ServerLogs

            logs = ServerLogs(log_dir, log_sample, rolling or Rolling())
        for a in served if announce else ():
            log.info("arm %s: serving %s (model %s, backend %s, %s)", a.name, a.live.source, a.live.scorer.version, backend,
                     a.live.scorer.precision_report.summary())
        return create_app(served, limits, logs)

    where = f"http://{host}:{port}" + (f"; logging to {log_dir}" if log_dir is not None else "")
    options = {"host": host, "port": port, "log_level": log_level}
    if workers == 1:
        app = make_app(lambda path: batched(build(Model.load(resolve_model_dir(path)), precision), batching))
        log.info("listening on %s", where)
        # Everything loaded so far (torch, the model, the app) lives for the whole run: move it out of the garbage
        # collector's reach, so that a full collection triggered by a request's allocations does not walk it (a p99 spike).
        gc.collect()
        gc.freeze()
        uvicorn.Server(uvicorn_config(app, limits, **options)).run()
        return 0
    preloaded = Preloaded(build, precision)
    for a in make_app(preloaded.parent_load).state.arms:  # every model loaded and its precision settled, before the fork
        a.live.scorer.close()  # (the app and its networks go with the next collection: no thread pool is forked)
    sock = uvicorn_config(None, limits, **options).bind_socket()
    log.info("listening on %s with %d workers", where, workers)

    def serve_one() -> None:
        app = make_app(lambda path: batched(preloaded.worker_load(path), batching), announce=False)
        uvicorn.Server(uvicorn_config(app, limits, **options)).run(sockets=[sock])

    return run_workers(workers, sock, serve_one)
