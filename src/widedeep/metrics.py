"""Evaluation metrics shared by training, validation and the CLI: AUC and logloss (scikit-learn), calibration.

Also the two small numeric helpers every stage needs: the logistic function and NaN-free JSON for recorded figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

EPS = 1e-7  # predictions are clipped to [EPS, 1 - EPS] for the logloss
CALIBRATION_BINS = 10  # equal-width bins over [0, 1] for the reliability table and the expected calibration error


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
    """AUC, logloss, calibration (mean prediction / mean label), expected calibration error (`calibration_bins`) and
    counts for 0/1 labels and probabilities.

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
        "ece": expected_calibration_error(calibration_bins(y, p)),
        "mean_prediction": float(p.mean()),
        "mean_label": float(y.mean()),
        "examples": int(y.size),
    }


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """The reliability table: per equal-width bin of [0, 1], the example count, mean prediction and positive rate.

    Bin i holds edges[i] <= p < edges[i + 1] (the last bin includes 1). Empty bins have NaN means. The one definition
    behind `binary_metrics`' "ece" and the report's reliability diagram.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"calibration bins must be a positive integer, got {bins!r}")
    y = np.ascontiguousarray(labels, dtype=np.float64).ravel()
    p = np.ascontiguousarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    outside = ~((p >= 0.0) & (p <= 1.0))  # NaN counts as outside
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{int(outside.sum())} predictions are not probabilities in [0, 1], e.g. {float(p[i])!r} at row {i}")
    edges = np.arange(int(bins) + 1) / int(bins)  # i / bins exactly rounded: 0.3, not linspace's 0.30000000000000004
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, int(bins) - 1)  # (N,) bin of each prediction
    counts = np.bincount(idx, minlength=int(bins))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 -> NaN for empty bins
        mean_prediction = np.bincount(idx, weights=p, minlength=int(bins)) / counts
        positive_rate = np.bincount(idx, weights=y, minlength=int(bins)) / counts
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "mean_prediction": mean_prediction.tolist(),
        "positive_rate": positive_rate.tolist(),
    }


def expected_calibration_error(table: dict[str, list[float]]) -> float:
    """ECE of a `calibration_bins` table: sum over bins of (bin count / N) * |mean prediction - positive rate|."""
    counts = np.asarray(table["counts"], dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    gap = np.abs(np.asarray(table["mean_prediction"], dtype=np.float64) - np.asarray(table["positive_rate"], dtype=np.float64))
    return float(np.sum(np.where(counts > 0, counts / total * np.nan_to_num(gap), 0.0)))
