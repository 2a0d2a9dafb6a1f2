"""Running the ranking server: `serve` (the models, the app of widedeep.serve.http, uvicorn; one process or forked
workers), uvicorn with the connection limits of widedeep.serve.limits (a deadline for each request's headers, a cap on
open connections), and a server on a background thread for tests and benchmarks."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from widedeep.serve.batcher import Batching
from widedeep.serve.limits import Limits
from widedeep.serve.settings import LOG_SAMPLE, POLL_S, PRECISION, PROJECT_MB, SPLIT_KEY, WORKERS, Backend

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from widedeep.serve.logs import Rolling
    from widedeep.serve.scorer import Scorer

log = logging.getLogger("widedeep.serve")


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
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    import uvicorn

    from widedeep.artifact import Model
    from widedeep.serve.arms import Arms, parse_arms
    from widedeep.serve.batcher import batched
    from widedeep.serve.http import create_app
    from widedeep.serve.live import LiveScorer
    from widedeep.serve.scorer import Scorer, configure_torch_threads, default_backend, default_split, resolve_model_dir
    from widedeep.serve.workers import Preloaded, run_workers

    backend = backend or default_backend()
    split = default_split(backend)
    sub_batch, threads = sub_batch or split[0], threads or split[1]
    configure_torch_threads(intra_op)
    # The workers share the cores: each gets its share for its onnxruntime threads (N workers on N cores: one each;
    # measured 10% more requests/s and 12% less CPU per request than two each, 2 workers on 2 cores).
    cores = max(1, len(os.sched_getaffinity(0)) // workers)

    def build(model: Model, chosen: str) -> Scorer:
        return Scorer.from_model(model, backend=backend, sub_batch=sub_batch, threads=threads, project_bytes=project_mb << 20,
                                 precision=chosen, cores=cores)  # fmt: skip

    def make_app(load: Callable[[Path], Scorer], announce: bool = True) -> FastAPI:
        if arms is None:
            served = Arms.single(LiveScorer(source, load, poll_s=poll_s))
        else:
            served = Arms.load(parse_arms(arms), load, poll_s, split_key)
        logs = None
        if log_dir is not None:
            from widedeep.serve.logs import Rolling, ServerLogs

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


class BackgroundServer:
    """A uvicorn server on a daemon thread, bound to a free loopback port, with the app's limits (for tests and
    in-process benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
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
