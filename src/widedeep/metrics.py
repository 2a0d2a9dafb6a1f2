"""Evaluation metrics shared by training, validation and the CLI: AUC (scikit-learn), logloss and calibration."""

from __future__ import annotations

import numpy as np


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, logloss, calibration (mean prediction / mean label) and counts for 0/1 labels and probabilities."""
    from sklearn.metrics import log_loss, roc_auc_score  # imported here: scikit-learn adds ~2 s to every process start

    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if not np.isfinite(p).all():
        raise ValueError(f"predictions contain {int((~np.isfinite(p)).sum())} NaN or infinite values")
    both = len(np.unique(y)) == 2
    eps = 1e-7
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "logloss": float(log_loss(y, np.clip(p, eps, 1 - eps), labels=[0, 1])),
        "calibration": float(p.mean() / y.mean()) if y.mean() > 0 else float("nan"),
        "mean_prediction": float(p.mean()),
        "mean_label": float(y.mean()),
        "examples": int(y.size),
    }
