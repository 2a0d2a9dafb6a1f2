"""`widedeep report`: score a model on labelled data and publish a folder of plots with report.md and report.json.

The scores are the served ones (`Model.predict`, fp32); the metrics and the reliability table come from
`widedeep.metrics` (`binary_metrics`, `calibration_bins`), the numbers `widedeep evaluate` prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from widedeep.artifact import Model, iter_tables
from widedeep.atomic import publish_dir
from widedeep.features.columns import as_label
from widedeep.metrics import CALIBRATION_BINS, binary_metrics, calibration_bins, expected_calibration_error, json_safe
from widedeep.report import plots

METRICS_LOG = "metrics.jsonl"  # written by the training loop in train.out, the model directory's parent
PLOTS = {  # file -> heading in report.md
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "calibration.png": "Reliability diagram",
    "scores.png": "Score distribution by label",
    "learning.png": "Learning curves",
}


def scores(model: Model, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels (uint8) and served probabilities (float32) of a file/glob/directory or an in-memory table, in
    the batches `Model.evaluate` scores."""
    labels, probs = [], []
    columns = [*model.features.input_columns, model.label]
    for table in iter_tables(data, columns, types=model.features.read_types()):
        if model.label not in table.column_names:
            raise ValueError(f"label column {model.label!r} not found in the data (columns: {table.column_names})")
        labels.append(as_label(table.column(model.label), model.label))
        probs.append(model.predict(table))
    if not labels:
        raise ValueError(f"{data}: no rows to score")
    return np.concatenate(labels), np.concatenate(probs)


def learning_curves(path: Path) -> dict[str, dict[str, list[float]]] | None:
    """Train loss and eval AUC/logloss by step from a training run's metrics.jsonl; None when the file is absent or
    holds no train or eval record. A line cut short by an interrupted run is skipped."""
    if not path.is_file():
        return None
    curves: dict[str, dict[str, list[float]]] = {
        "train": {"step": [], "loss": []},
        "eval": {"step": [], "auc": [], "logloss": []},
    }
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        series = curves.get(record.get("split")) if isinstance(record, dict) else None
        if series is None or not isinstance(record.get("step"), int):
            continue
        for key in series:
            value = record.get(key)
            series[key].append(float(value) if isinstance(value, (int, float)) else math.nan)  # null: NaN (a gap)
    return curves if curves["train"]["step"] or curves["eval"]["step"] else None


def write_report(model_dir: Path | str, data: Any, out: Path | str, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Score MODEL on DATA and publish `out` (replaced atomically) with the PNGs, report.md and report.json.

    Returns what report.json holds: the metrics (with the ECE of `bins` bins), the reliability table, the plots
    written and the notes on those left out.
    """
    plots.require_matplotlib()  # before minutes of scoring
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").is_file())):
        raise ValueError(f"{out}: exists and is not a report folder (no report.json); refusing to replace it")
    model = Model.load(model_dir)
    labels, probs = scores(model, data)
    metrics = binary_metrics(labels, probs)
    table = calibration_bins(labels, probs, bins)
    metrics["ece"] = expected_calibration_error(table)  # the same definition; differs only when bins != CALIBRATION_BINS
    log = model_dir.parent / METRICS_LOG
    curves = learning_curves(log)

    written, notes = [], []
    with publish_dir(out) as tmp:
        if len(np.unique(labels)) == 2:
            plots.roc_plot({"model": (labels, probs)}, tmp / "roc.png")
            plots.pr_plot(labels, probs, tmp / "pr.png")
            written += ["roc.png", "pr.png"]
        else:
            notes.append(f"The data holds one label value only ({int(labels[0])}): no ROC or precision-recall curve.")
        plots.reliability_plot(table, metrics["ece"], tmp / "calibration.png")
        plots.score_plot(labels, probs, tmp / "scores.png")
        written += ["calibration.png", "scores.png"]
        if curves is not None:
            plots.learning_plot(curves, tmp / "learning.png")
            written.append("learning.png")
        else:
            notes.append(f"No learning curves: {log} is absent or holds no train or eval record.")
        report = {
            "model": str(model_dir),
            "version": model.version,
            "data": str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__}>",
            "metrics": metrics,
            "calibration_bins": table,
            "learning_curves": str(log) if curves is not None else None,
            "plots": written,
            "notes": notes,
        }
        (tmp / "report.json").write_text(json.dumps(json_safe(report), indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict[str, Any]) -> str:
    """report.md: the metrics table, each plot under its heading, the reliability table and the notes."""
    m, t = report["metrics"], report["calibration_bins"]
    lines = [
        "# Model report",
        "",
        f"Model `{report['model']}` (version {report['version']}) on `{report['data']}`, scored in fp32 as served.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| AUC | {_fmt(m['auc'], 4)} |",
        f"| logloss | {_fmt(m['logloss'], 4)} |",
        f"| calibration (mean prediction / positive rate) | {_fmt(m['calibration'], 4)} |",
        f"| expected calibration error ({len(t['counts'])} bins) | {_fmt(m['ece'], 4)} |",
        f"| examples | {m['examples']} |",
        f"| positive rate | {_fmt(m['mean_label'], 4)} |",
        f"| mean prediction | {_fmt(m['mean_prediction'], 4)} |",
    ]
    for name, heading in PLOTS.items():
        if name not in report["plots"]:
            continue
        lines += ["", f"## {heading}", "", f"![{heading}]({name})"]
        if name == "calibration.png":
            lines += ["", "| bin | examples | mean prediction | positive rate |", "|---|---:|---:|---:|"]
            rows = zip(t["edges"], t["edges"][1:], t["counts"], t["mean_prediction"], t["positive_rate"])
            for i, (lo, hi, n, p, r) in enumerate(rows):
                close = "]" if i == len(t["counts"]) - 1 else ")"  # the last bin includes 1
                lines.append(f"| [{lo:.2f}, {hi:.2f}{close} | {n} | {_fmt(p, 4)} | {_fmt(r, 4)} |")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _fmt(x: Any, digits: int) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"
