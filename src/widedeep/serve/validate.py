"""The paper's dry run: score a holdout with a new model, check the scores are sane, and compare it with the current model.

A model is pushed to serving only after this passes. The dry run fails on a model that cannot be loaded (missing file,
checksum mismatch), cannot score the holdout, or produces NaN/infinite, out-of-range or constant scores; when the model
directory holds an ONNX export, that export must load and match the weights' scores on the holdout. The comparison fails
when the new AUC is lower than the current one by more than `auc_tolerance`, or the new logloss higher by more than
`logloss_tolerance` (both absolute differences).

Both models are scored in fp32 by default, as training records its metrics. `precision="bf16"` or `"int8"` scores them as
a server does in that precision (widedeep.serve.precision); the new model's scores must then also stay within
`PRECISION_BOUND` of its fp32 scores, and the report says which precision its figures come from.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from widedeep.artifact import ONNX_FILE, Model, iter_tables
from widedeep.features.columns import as_label
from widedeep.metrics import binary_metrics, json_safe, sigmoid
from widedeep.serve.precision import served_logits
from widedeep.serve.settings import AUC_TOLERANCE, LOGLOSS_TOLERANCE, PRECISION_BOUND

MIN_STD = 1e-6  # scores with a smaller standard deviation count as constant
ONNX_TOLERANCE = 1e-5  # max |probability difference| between an ONNX export and the weights it came from
INTEGRITY_CHECKS = frozenset({"load", "onnx_load"})  # the new model's files are missing, modified or unreadable


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class ValidationReport:
    """The outcome of `validate`: every check with its detail, and the holdout metrics of both models."""

    new: str
    current: str | None
    data: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "new" / "current" -> binary_metrics
    tolerances: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # what the metrics and checks were scored in

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "new": self.new,
            "current": self.current,
            "data": self.data,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
            "metrics": json_safe(self.metrics),
            "tolerances": dict(self.tolerances),
            "precision": self.precision,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_text(self) -> str:
        lines = [
            f"validation {'PASSED' if self.passed else 'FAILED'}: {self.new}",
            f"  against: {self.current or '(none: dry run only)'}",
            f"  holdout: {self.data}",
            f"  scored in: {self.precision}" + ("" if self.precision == "fp32" else " (as served; training records fp32)"),
        ]
        width = max((len(c.name) for c in self.checks), default=0)
        lines += [f"  [{'ok' if c.passed else 'FAIL':>4}] {c.name:<{width}}  {c.detail}" for c in self.checks]
        if self.metrics:
            cols = [k for k in ("new", "current") if k in self.metrics]
            lines.append("  " + f"{'metric':<16}" + "".join(f"{k:>12}" for k in cols))
            for m in ("auc", "logloss", "calibration", "mean_prediction", "mean_label", "examples"):
                lines.append("  " + f"{m:<16}" + "".join(f"{self.metrics[k].get(m, float('nan')):>12.6g}" for k in cols))
        return "\n".join(lines)


def validate(
    new_dir: Path | str,
    against_dir: Path | str | None,
    data: str | Path | pa.Table,
    *,
    auc_tolerance: float = AUC_TOLERANCE,
    logloss_tolerance: float = LOGLOSS_TOLERANCE,
    precision: str = "fp32",
) -> ValidationReport:
    """Dry-run `new_dir` on the holdout `data` (file, glob, directory or table) and compare it with `against_dir` if given,
    both scored in `precision` (fp32, bf16 or int8)."""
    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision must be fp32, bf16 or int8; got {precision!r}")
    for name, tol in (("auc_tolerance", auc_tolerance), ("logloss_tolerance", logloss_tolerance)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
    report = ValidationReport(
        new=str(new_dir),
        current=None if against_dir is None else str(against_dir),
        data="<table>" if isinstance(data, pa.Table) else str(data),
        tolerances={"auc": float(auc_tolerance), "logloss": float(logloss_tolerance)},
        precision=precision,
    )
    new = _load(report, "load", new_dir)
    if new is None:
        return report
    current = _load(report, "load_current", against_dir) if against_dir is not None else None
    if against_dir is not None and current is None:
        return report

    models = {"new": new} if current is None else {"new": new, "current": current}
    scorers: dict[str, Callable[[pa.Table], np.ndarray]] = {
        k: functools.partial(m.predict, logits=served_logits(m, precision)) for k, m in models.items()
    }
    if precision != "fp32":  # the bound, and an ONNX export, are checked against the weights' fp32 scores
        scorers["fp32"] = new.predict
    onnx_file = Path(new_dir) / ONNX_FILE
    if onnx_file.is_file():  # a server may run this export (--backend onnxruntime): it must score like the weights
        onnx = _load_onnx(report, onnx_file)
        if onnx is None:
            return report
        scorers["onnx"] = lambda table: sigmoid(onnx.score_encoded(new.features.transform(table)))
    t0 = time.perf_counter()
    try:
        labels, scores = _score(scorers, data, list(models.values()), new.label)
    except (ValueError, KeyError, TypeError, OSError) as e:
        report.add("score", False, f"cannot score the holdout: {e}")
        return report
    seconds = time.perf_counter() - t0
    n = len(labels)
    if not report.add("score", n > 0, f"{n} rows scored in {seconds:.2f} s" if n else "the holdout has no rows"):
        return report

    p = scores["new"]
    bad = int((~np.isfinite(p)).sum())
    if not report.add("finite", bad == 0, f"{bad} of {n} scores are NaN or infinite" if bad else "no NaN or infinite scores"):
        return report
    lo, hi = float(p.min()), float(p.max())
    report.add("range", 0.0 <= lo and hi <= 1.0, f"scores span [{lo:.6g}, {hi:.6g}] (must lie in [0, 1])")
    std = float(p.std())
    report.add(
        "not_constant",
        std >= MIN_STD,
        f"score std {std:.3g}" + (f" < {MIN_STD:g}: the model gives every row the same score" if std < MIN_STD else ""),
    )
    fp32 = scores.get("fp32", p)
    if "fp32" in scores:
        dp = float(np.abs(p.astype(np.float64) - fp32).max())
        detail = f"{precision} vs fp32: max |dp| {dp:.3g} (at most {PRECISION_BOUND:g})"
        report.add("precision_bound", dp <= PRECISION_BOUND, detail)
    if "onnx" in scores:
        dp = float(np.abs(scores["onnx"].astype(np.float64) - fp32).max())
        report.add("onnx_parity", dp <= ONNX_TOLERANCE, f"model.onnx vs weights: max |dp| {dp:.3g} (at most {ONNX_TOLERANCE:g})")
    report.metrics["new"] = binary_metrics(labels, p)
    auc = report.metrics["new"]["auc"]
    if not report.add(
        "auc_defined",
        math.isfinite(auc),
        f"AUC {auc:.4f}" if math.isfinite(auc) else "the holdout holds a single label class, so AUC is undefined",
    ):
        return report
    if current is not None:
        _compare(report, scores["current"], labels, auc_tolerance, logloss_tolerance)
    return report


def _load(report: ValidationReport, check: str, model_dir: Path | str) -> Model | None:
    try:
        model = Model.load(model_dir)
    except (ValueError, FileNotFoundError, OSError, KeyError, RuntimeError) as e:
        report.add(check, False, f"cannot load the model: {e}")
        return None
    report.add(check, True, f"{model_dir}: checksums verified, version {model.version}")
    return model


def _compare(report: ValidationReport, cur: np.ndarray, labels: np.ndarray, auc_tol: float, ll_tol: float) -> None:
    bad = int((~np.isfinite(cur)).sum())
    detail = f"the current model gives {bad} NaN or infinite scores" if bad else "no NaN or infinite scores"
    if not report.add("current_finite", bad == 0, detail):
        return
    report.metrics["current"] = binary_metrics(labels, cur)
    new, old = report.metrics["new"], report.metrics["current"]
    d_auc = new["auc"] - old["auc"]
    report.add(
        "auc_vs_current",
        d_auc >= -auc_tol,
        f"AUC {new['auc']:.4f} vs {old['auc']:.4f} (change {d_auc:+.4f}, a drop of at most {auc_tol:g} allowed)",
    )
    d_ll = new["logloss"] - old["logloss"]
    report.add(
        "logloss_vs_current",
        d_ll <= ll_tol,
        f"logloss {new['logloss']:.4f} vs {old['logloss']:.4f} (change {d_ll:+.4f}, a rise of at most {ll_tol:g} allowed)",
    )


def _load_onnx(report: ValidationReport, path: Path) -> Any:
    try:
        from widedeep.serve.onnx import OnnxNetwork

        net = OnnxNetwork(path)
    except (ValueError, OSError, ImportError) as e:
        report.add("onnx_load", False, f"cannot load the ONNX export: {e}")
        return None
    report.add("onnx_load", True, f"{path.name}: checksum verified, exported from these weights")
    return net


def _score(
    scorers: dict[str, Callable[[pa.Table], np.ndarray]], data: str | Path | pa.Table, models: list[Model], label: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read the holdout once, in batches, with the columns the models need; return its labels and each scorer's
    probabilities (not checked for NaN)."""
    columns = sorted({label}.union(*(m.features.input_columns for m in models)))
    types = {k: v for m in models for k, v in m.features.read_types().items()}
    labels: list[np.ndarray] = []
    probs: dict[str, list[np.ndarray]] = {k: [] for k in scorers}
    for table in iter_tables(data, [c for c in columns if c != label], optional=[label], types=types):
        if label not in table.column_names:
            raise ValueError(f"label column {label!r} not found in the holdout (columns: {table.column_names})")
        labels.append(as_label(table.column(label), label))  # the transform's own label check: 0/1, no nulls
        for k, score in scorers.items():
            probs[k].append(score(table))
    if not labels:
        return np.zeros(0), {k: np.zeros(0, dtype=np.float32) for k in scorers}
    return np.concatenate(labels).astype(np.float64), {k: np.concatenate(v) for k, v in probs.items()}
