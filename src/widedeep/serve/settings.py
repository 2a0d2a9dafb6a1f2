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
