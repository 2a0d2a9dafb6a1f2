"""Evaluation metrics shared by training, validation and the CLI: AUC and logloss (scikit-learn), calibration.

Also the two small numeric helpers every stage needs: the logistic function and NaN-free JSON for recorded figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

EPS = 1e-7  # predictions are clipped to [EPS, 1 - EPS] for the logloss


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """P(label = 1) as float32 from logits, computed in float64 (no overflow warning for large |logit|)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def json_safe(obj: Any) -> Any:
    """Figures as plain JSON: NaN and infinities (an AUC on one class) become null, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, logloss, calibration (mean prediction / mean label) and counts for 0/1 labels and probabilities.

    The AUC is NaN when the labels hold one class only. scikit-learn is imported on first use (it takes about a second).
    """
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.ascontiguousarray(labels, dtype=np.float64).ravel()
    p = np.ascontiguousarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if not np.isfinite(p).all():
        raise ValueError(f"predictions contain {int((~np.isfinite(p)).sum())} NaN or infinite values")
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "auc": auc,
        "logloss": float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])),
        "calibration": float(p.mean() / y.mean()) if y.mean() > 0 else float("nan"),
        "mean_prediction": float(p.mean()),
        "mean_label": float(y.mean()),
        "examples": int(y.size),
    }
