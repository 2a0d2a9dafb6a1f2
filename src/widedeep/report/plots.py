"""The report's figures, drawn from numbers alone: ROC and precision-recall curves, the reliability diagram, score
histograms per label and learning curves, each saved as a PNG.

matplotlib is an optional extra (`pip install 'widedeep[plots]'`) and is imported on first use. Figures are drawn on
their own Agg canvas (`matplotlib.figure.Figure`, no pyplot): no display is needed and no global backend is changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
SCORE_BINS = 50  # histogram bins over [0, 1] for the score distributions


class MissingPlotsExtra(ImportError):
    """matplotlib is not installed; the message says how to install the `plots` extra."""


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    """Raise MissingPlotsExtra unless matplotlib is installed."""
    if not plots_available():
        raise MissingPlotsExtra("plots need matplotlib, which is not installed: pip install 'widedeep[plots]'")


def new_figure(width: float = 6.0, height: float = 4.5, **kwargs: Any) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path | str) -> Path:
    # format is explicit: the path may be a temporary name without the .png suffix (widedeep.atomic.publish_file).
    fig.savefig(path, format="png", dpi=DPI)
    return Path(path)


def roc_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path | str, title: str = "ROC curve") -> Path:
    """ROC curves of one or more models, each given as name -> (0/1 labels, probabilities), AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, (labels, probs) in curves.items():
        fpr, tpr, _ = roc_curve(labels, probs)
        auc = roc_auc_score(labels, probs)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance (AUC = 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def pr_plot(labels: np.ndarray, probs: np.ndarray, path: Path | str, name: str = "model") -> Path:
    """Precision against recall, with the average precision in the legend and the positive rate as the chance level."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, probs)
    ap = average_precision_score(labels, probs)
    rate = float(np.mean(labels))
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot(recall, precision, lw=1.8, drawstyle="steps-post", label=f"{name} (AP = {ap:.4f})")
    ax.axhline(rate, ls="--", lw=1, color="grey", label=f"chance (positive rate = {rate:.4f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, path)


def reliability_plot(table: Mapping[str, list[float]], ece: float, path: Path | str) -> Path:
    """Reliability diagram of a `widedeep.metrics.calibration_bins` table: observed positive rate against mean
    prediction per bin above, the examples per bin below."""
    edges = np.asarray(table["edges"], dtype=np.float64)
    counts = np.asarray(table["counts"], dtype=np.int64)
    mean_p = np.asarray(table["mean_prediction"], dtype=np.float64)
    rate = np.asarray(table["positive_rate"], dtype=np.float64)
    filled = counts > 0
    fig = new_figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfectly calibrated")
    top.plot(mean_p[filled], rate[filled], marker="o", lw=1.5, label=f"model (ECE = {ece:.4f})")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed positive rate", title=f"Reliability diagram ({len(counts)} bins)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    widths = np.diff(edges)
    bars = bottom.bar(edges[:-1], counts, width=widths * 0.9, align="edge", color="tab:gray")
    if len(counts) <= 20:
        bottom.bar_label(bars, labels=[str(c) if c else "" for c in counts], fontsize=7, padding=1)
    bottom.set(xlabel="predicted probability (bin)", ylabel="examples")
    bottom.set_ylim(0, max(1, int(counts.max())) * 1.2)
    bottom.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def score_plot(labels: np.ndarray, probs: np.ndarray, path: Path | str, bins: int = SCORE_BINS) -> Path:
    """Histograms of the predicted probability for each label value (densities, so that rare positives stay visible)."""
    labels = np.asarray(labels).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    edges = np.arange(bins + 1) / bins
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    for value, color in ((0, "tab:blue"), (1, "tab:orange")):
        p = probs[labels == value]
        if p.size:
            ax.hist(p, bins=edges, density=True, alpha=0.45, color=color, label=f"label {value} (n = {p.size})")
            ax.hist(p, bins=edges, density=True, histtype="step", lw=1.2, color=color)
    ax.set(xlim=(0, 1), xlabel="predicted probability", ylabel="density", title="Score distribution by label")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def learning_plot(curves: Mapping[str, Mapping[str, list[float]]], path: Path | str) -> Path:
    """Training loss and eval logloss (left) and eval AUC (right) by step, from `learning_curves` of a metrics.jsonl."""
    train, evals = curves.get("train", {}), curves.get("eval", {})
    fig = new_figure(10.0, 4.2)
    loss_ax, auc_ax = fig.subplots(1, 2)
    if train.get("step"):
        loss_ax.plot(train["step"], train["loss"], lw=1.2, label="train loss (window mean)")
    if evals.get("step"):
        loss_ax.plot(evals["step"], evals["logloss"], marker="o", lw=1.5, label="eval logloss")
        auc_ax.plot(evals["step"], evals["auc"], marker="o", lw=1.5, color="tab:green", label="eval AUC")
        auc_ax.legend(loc="best")
    else:
        auc_ax.text(0.5, 0.5, "no evaluations recorded", ha="center", va="center", transform=auc_ax.transAxes)
    loss_ax.set(xlabel="step", ylabel="logloss", title="Loss")
    auc_ax.set(xlabel="step", ylabel="AUC", title="Eval AUC")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(loc="best")
    fig.suptitle("Learning curves")
    return save_figure(fig, path)
