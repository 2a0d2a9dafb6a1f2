"""`widedeep compare`: the paper's Table 1 on your data — wide-only, deep-only and wide & deep trained on the same shards.

With matplotlib installed (the `plots` extra) the three models' ROC curves on the eval data go to roc.png beside compare.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from widedeep.atomic import publish_file, write_text_atomic
from widedeep.config import Config
from widedeep.metrics import json_safe

MODEL_TYPES = ("wide", "deep", "wide_deep")
LABELS = {"wide": "wide only", "deep": "deep only", "wide_deep": "wide & deep"}
# Cheng et al. 2016, Table 1 (Google Play): offline AUC and online acquisition gain against the wide-only control.
PAPER = {
    "wide": {"offline_auc": 0.726, "online_gain": "0%"},
    "deep": {"offline_auc": 0.722, "online_gain": "+2.9%"},
    "wide_deep": {"offline_auc": 0.728, "online_gain": "+3.9%"},
}


def compare(cfg: Config, device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Prepare once, train the three model types into `<out>/<type>`, print the table, write compare.json and compare.md."""
    from widedeep.features.prepare import prepare
    from widedeep.train.loop import train

    if not cfg.model.wide or not cfg.model.deep:
        raise ValueError(
            f"{cfg.path}: compare needs both [model] wide and deep feature lists "
            f"(wide={list(cfg.model.wide)}, deep={list(cfg.model.deep)})"
        )
    out = cfg.out_dir
    # Every sub-run reads the same prepared shards, wherever its own train.out points.
    shared = replace(cfg, data=replace(cfg.data, prepared=str(cfg.prepared_dir.resolve())))
    prepare(shared)

    rows: dict[str, dict[str, Any]] = {}
    for kind in MODEL_TYPES:
        sub = replace(
            shared,
            model=replace(shared.model, type=kind),
            train=replace(shared.train, out=str((out / kind).resolve())),
        )
        print(f"compare: training {LABELS[kind]} -> {sub.out_dir}", flush=True)
        start = time.perf_counter()
        model_dir = train(sub, device=device, progress=progress)
        wall = time.perf_counter() - start
        recorded = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8")).get("metrics") or {}
        rows[kind] = {
            **eval_metrics(model_dir, sub),
            "train_seconds": round(float(recorded.get("train_seconds", wall)), 3),  # the optimization steps alone
            "wall_seconds": round(wall, 3),  # including model building, evaluation and saving
            "model_dir": str(model_dir),
        }

    result = {"config": str(cfg.path), "models": rows, "paper": PAPER, "winner": winner(rows)}
    table = markdown_table(rows)
    print(table)
    roc = roc_figure(rows, shared)
    if roc is not None:
        result["roc"] = roc.name
        table += f"\n\n![ROC curves on the eval data]({roc.name})"
    write_text_atomic(out / "compare.json", json.dumps(json_safe(result), indent=2) + "\n")
    write_text_atomic(out / "compare.md", "# Wide vs deep vs wide & deep\n\n" + table + "\n")
    return result


def roc_figure(rows: dict[str, dict[str, Any]], cfg: Config) -> Path | None:
    """`<out>/roc.png`: the trained models' ROC curves on the eval data, on one figure. None (nothing written) without
    matplotlib, without eval data, or when the eval labels hold one class only."""
    from widedeep.report.plots import plots_available, roc_plot

    if not plots_available() or not cfg.data.eval:
        return None
    from widedeep.artifact import Model
    from widedeep.report.writer import scores

    curves = {}
    for kind, row in rows.items():
        model = Model.load(row["model_dir"])
        parts = [scores(model, cfg.resolve(spec)) for spec in cfg.data.eval]
        curves[LABELS[kind]] = (np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts]))
    if any(len(np.unique(y)) < 2 for y, _ in curves.values()):
        return None
    path = cfg.out_dir / "roc.png"
    with publish_file(path) as tmp:
        roc_plot(curves, tmp, title="ROC curves on the eval data")
    return path


def eval_metrics(model_dir: Path, cfg: Config) -> dict[str, float]:
    """Eval-set AUC/logloss of a trained model: from its model.json when training recorded them, else by scoring eval data."""
    meta = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))
    found = _find_eval(meta.get("metrics") or {})
    if found is not None:
        return found
    if not cfg.data.eval:
        raise ValueError(f"{cfg.path}: [data] eval is empty; compare needs eval data to report AUC")
    from widedeep.artifact import Model

    model = Model.load(model_dir)
    m = model.evaluate(str(cfg.resolve(cfg.data.eval[0]))) if len(cfg.data.eval) == 1 else _evaluate_all(model, cfg)
    return {k: m[k] for k in ("auc", "logloss", "calibration")}


def _evaluate_all(model: Any, cfg: Config) -> dict[str, float]:
    from widedeep.features.io import read_table, resolve_paths

    return model.evaluate(read_table(resolve_paths(list(cfg.data.eval), cfg.root)))


def _find_eval(metrics: dict[str, Any]) -> dict[str, float] | None:
    """Accept {"eval": {"auc": ...}} or flat {"eval_auc": ...} as written by the training loop."""
    nested = metrics.get("eval")
    if isinstance(nested, dict) and "auc" in nested and "logloss" in nested:
        return {k: nested[k] for k in ("auc", "logloss", "calibration") if k in nested}
    if "eval_auc" in metrics and "eval_logloss" in metrics:
        return {k: metrics[f"eval_{k}"] for k in ("auc", "logloss", "calibration") if f"eval_{k}" in metrics}
    return None


def winner(rows: dict[str, dict[str, Any]]) -> str | None:
    """The model type with the highest eval AUC (None when no AUC is defined)."""
    scored = {k: r["auc"] for k, r in rows.items() if isinstance(r.get("auc"), float) and math.isfinite(r["auc"])}
    return max(scored, key=scored.get) if scored else None


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Our eval AUC, logloss and train time beside the paper's offline AUC and online gain."""
    lines = [
        "| model | eval AUC | eval logloss | train time (s) | paper offline AUC | paper online gain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in MODEL_TYPES:
        if kind not in rows:
            continue
        r, p = rows[kind], PAPER[kind]
        lines.append(
            f"| {LABELS[kind]} | {_fmt(r.get('auc'), 4)} | {_fmt(r.get('logloss'), 4)} | {_fmt(r.get('train_seconds'), 1)} "
            f"| {p['offline_auc']:.3f} | {p['online_gain']} |"
        )
    return "\n".join(lines)


def _fmt(x: Any, digits: int) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"
