"""Serving defaults that the command line shows, each stated once; this module imports nothing heavy.

(Request and connection limits have their own home, `widedeep.serve.limits.Limits`.)
"""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["torch", "onnxruntime", "hybrid"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PRECISION: Precision = "auto"  # the server's: the fastest precision within the bound below, measured at load
PRECISION_BOUND = 2e-3  # a lower precision is served only if its probabilities stay within this of fp32's (absolute) ...
PRECISION_TOP_K = 10  # ... and the calibration batch's top this-many keep their order, up to fp32 probabilities ...
PRECISION_TIE = PRECISION_BOUND  # ... this close, which count as tied (near-ties swap under any change of arithmetic)
PROJECT_MB = 256  # memory for embeddings folded into the first MLP layer (serve/network.py Projection)
POLL_S = 0.5  # seconds between checks of a registry's CURRENT (hot reload)
AUC_TOLERANCE = 0.002  # validate: largest AUC drop against the current model that passes
LOGLOSS_TOLERANCE = 0.01  # validate: largest logloss rise against the current model that passes
BATCHING = "on"  # score the candidates of requests that wait together in one pass (widedeep.serve.batcher)
MAX_BATCH_CANDIDATES = 1000  # candidates in one such pass (a larger request is scored alone)
MAX_QUEUE_DELAY_US = 0  # microseconds a pass waits for more requests; 0: batch what is waiting, never wait
BATCH_QUEUE = 256  # requests waiting to be scored; more are answered 503
WORKERS = 1  # server processes (widedeep.serve.workers)
SPLIT_KEY = "user_id"  # A/B arms: the context field whose stable hash picks a request's arm
LOG_SAMPLE = 1.0  # share of ranking requests whose impressions are logged (whole requests, by request id)
LOG_QUEUE = 10_000  # log entries (ranking answers, event posts) waiting to be written; past it they are dropped and counted
LOG_ROLL_S = 60.0  # a log's part file is written at the latest this many seconds after its first row arrived
LOG_ROLL_ROWS = 1_000_000  # ... or once it holds this many rows
LOG_ROLL_MB = 64  # ... or this many MB of Arrow data
