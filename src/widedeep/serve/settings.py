"""Serving defaults that the command line shows, each stated once; this module imports nothing heavy.

(Request and connection limits have their own home, `widedeep.serve.limits.Limits`.)
"""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["torch", "onnxruntime", "hybrid"]
BACKENDS: tuple[str, ...] = get_args(Backend)
PROJECT_MB = 256  # memory for embeddings folded into the first MLP layer (serve/network.py Projection)
POLL_S = 0.5  # seconds between checks of a registry's CURRENT (hot reload)
AUC_TOLERANCE = 0.002  # validate: largest AUC drop against the current model that passes
LOGLOSS_TOLERANCE = 0.01  # validate: largest logloss rise against the current model that passes
SPLIT_KEY = "user_id"  # A/B arms: the context field whose stable hash picks a request's arm
LOG_SAMPLE = 1.0  # share of ranking requests whose impressions are logged (whole requests, by request id)
LOG_QUEUE = 10_000  # log entries (ranking answers, event posts) waiting to be written; past it they are dropped and counted
LOG_ROLL_S = 60.0  # a log's part file is written at the latest this many seconds after its first row arrived
LOG_ROLL_ROWS = 1_000_000  # ... or once it holds this many rows
LOG_ROLL_MB = 64  # ... or this many MB of Arrow data
