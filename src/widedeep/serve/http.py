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
answer is one row of DIR/impressions/part-<UTC time>-<pid>-<seq>.parquet (`widedeep.serve.log_schema.impression_schema`: request id,
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

import asyncio
import functools
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from widedeep.features.columnar import Rows
from widedeep.serve.arms import Arms
from widedeep.metrics import json_safe
from widedeep.serve.errors import RequestError
from widedeep.serve.handoff import WorkThreads
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
from widedeep.serve.request import check_request, parse_events, parse_object, read_body, request_id, required
from widedeep.serve.server import BackgroundServer  # noqa: F401 -- tests import it from here

if TYPE_CHECKING:
    from widedeep.serve.logs import ServerLogs

log = logging.getLogger("widedeep.serve")

CLIENT_GONE = 499  # the status counted for a client that disconnected before its answer (nginx's convention)
# An answer, what to do once it goes out, and the parsed request: kept until the answer is sent, as freeing the objects
# of 200 candidates takes a quarter of a millisecond that the client need not wait for.
Work = tuple[dict[str, Any], Callable[[], None] | None, Any]
Answer = tuple[int, bytes, bool, Any]  # status, JSON body, close the connection after it; the parsed request
WORK_THREADS = 40  # requests parsed, checked and scored at once (as many as starlette's thread pool runs)


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
            threads.close()
            if logs is not None:
                logs.stop()  # writes what is queued: uvicorn has answered every request by now

    app = RankingApp(title="widedeep ranking API", version="1", lifespan=lifespan)
    threads = WorkThreads(WORK_THREADS, "widedeep-http")
    app.state.live, app.state.arms, app.state.logs = arms.first.live, arms, logs
    app.state.metrics, app.state.limits = metrics, limits

    async def answer(scope: Scope, receive: Receive, route: str, work: Callable[[bytes], Work]) -> Answer | None:
        """Read the body here, run `work` (parse, check, score) in a worker thread, and make the answer; None for a
        client that went away, whose answer nobody reads (what `work` leaves to do once the answer goes out, queuing
        its impressions, is then skipped)."""
        t0 = time.perf_counter()
        try:
            body = await read_body(scope, receive, limits)
            listen = asyncio.ensure_future(receive())  # done (http.disconnect) if the client leaves meanwhile
            try:
                out, then, parsed = await threads.run(work, body)
            finally:
                left = listen.done()
                listen.cancel()
            if left:
                raise ClientDisconnect()
            if then is not None:
                then()
            if "arm" in out:
                metrics.observe_arm(out["arm"], route)
            return _answer(out, 200, metrics, route, t0, parsed=parsed)
        except ClientDisconnect:
            log.info("%s: the client disconnected before the answer", route)
            metrics.observe(route, CLIENT_GONE, time.perf_counter() - t0)
            return None
        except Exception as e:  # noqa: BLE001 -- every failure becomes a JSON answer; bugs are logged
            return _failure(e, metrics, route, t0)

    async def routed(request: Request, route: str, work: Callable[[bytes], Work]) -> Response:
        """`answer` as a FastAPI endpoint: for a request the hot path did not take (an app mounted under a prefix)."""
        out = await answer(request.scope, request.receive, route, work)
        if out is None:
            return Response(status_code=CLIENT_GONE)  # nobody reads it: uvicorn drops it
        status, body, close, _ = out
        return Response(body, status_code=status, media_type="application/json", headers={"connection": "close"} if close else None)

    def recommend_work(body: bytes) -> Work:
        doc = parse_object(body)
        rid = request_id(doc)
        context = doc.get("context", {})
        arm = arms.assign(context)
        scorer = arm.live.scorer  # taken once: a hot reload never changes the model under a request
        candidates = required(doc, "candidates")
        check_request(body, context, candidates, "candidates", scorer.input_columns, limits)
        ranked = scorer.recommend(context, candidates, doc.get("k", 10))
        rid = rid or uuid.uuid4().hex
        index, score = ranked.index.tolist(), ranked.score.tolist()
        then = None
        if logs is not None:
            features = scorer.features.features
            shown = candidates if isinstance(candidates, list) else Rows(candidates)
            then = functools.partial(logs.answer, rid, scorer.version, arm.name, index, score, context, shown, features)
        items = [{"index": i, "score": s} for i, s in zip(index, score)]
        return {"request_id": rid, "model_version": scorer.version, "arm": arm.name, "items": items}, then, doc

    def score_work(body: bytes) -> Work:
        doc = parse_object(body)
        arm = arms.named(doc["arm"]) if "arm" in doc else arms.first
        scorer = arm.live.scorer
        instances = required(doc, "instances")
        check_request(body, None, instances, "instances", scorer.input_columns, limits)
        return {"model_version": scorer.version, "arm": arm.name, "scores": scorer.score(instances).tolist()}, None, doc

    def events_work(body: bytes) -> Work:
        if logs is None:
            raise RequestError("", "event logging is off: start the server with --log-dir DIR to accept events", 404)
        events = parse_events(parse_object(body), limits.max_candidates, time.time_ns() // 1000)
        if not logs.post_events(events):
            raise RequestError("", "the event log's queue is full; these events were not logged, send them again", 503)
        return {"accepted": len(events)}, None, None

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS, openapi_extra=body_doc(RecommendRequest))
    async def recommend(request: Request) -> Response:
        """Rank the candidates for one context and return the top k with their probabilities, best first."""
        return await routed(request, "/v1/recommend", recommend_work)

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, openapi_extra=body_doc(ScoreRequest))
    async def score(request: Request) -> Response:
        """One probability per instance, in request order."""
        return await routed(request, "/v1/score", score_work)

    @app.post("/v1/events", response_model=EventsResponse, responses=EVENT_ERRORS, openapi_extra=body_doc(EventsRequest))
    async def events(request: Request) -> Response:
        """Log outcomes (install, click, ...) of shown candidates for the label join; 404 unless the server logs."""
        return await routed(request, "/v1/events", events_work)

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

    app.hot = {route: functools.partial(answer, route=route, work=work)
               for route, work in (("/v1/recommend", recommend_work), ("/v1/score", score_work), ("/v1/events", events_work))}  # fmt: skip
    return app


class RankingApp(FastAPI):
    """FastAPI, with the POSTs of the ranking routes answered first on plain ASGI: no middleware, routing or dependency
    solving per request (a quarter of the HTTP layer's time, measured). Every other request, the OpenAPI docs among
    them, is FastAPI's; so is an app mounted under a prefix, whose paths do not match."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hot: dict[str, Callable[[Scope, Receive], Awaitable[Answer | None]]] = {}  # path -> answer, set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hot is None:
            await super().__call__(scope, receive, send)
            return
        out = await hot(scope, receive)
        if out is None:
            return  # the client went away: uvicorn has nothing to send to
        status, body, close, _parsed = out  # freed when this returns, after the answer went out
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _answer(obj: Any, status: int, metrics: ServerMetrics, route: str, t0: float, close: bool = False, parsed: Any = None) -> Answer:
    metrics.observe(route, status, time.perf_counter() - t0)
    return status, orjson.dumps(obj), close, parsed


def _failure(e: Exception, metrics: ServerMetrics, route: str, t0: float) -> Answer:
    if isinstance(e, RequestError):
        return _answer({"error": {"field": e.field, "message": e.message}}, e.status, metrics, route, t0, close=e.close)
    log.exception("%s failed", route)
    return _answer({"error": {"field": "", "message": f"internal error: {type(e).__name__}"}}, 500, metrics, route, t0)
