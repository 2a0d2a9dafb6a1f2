"""Model directories derived from the session's tiny model, for validation, registry and ONNX tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import torch

from widedeep.artifact import Model, save_model


def derive(src: Path, dst: Path, edit: Callable[[torch.nn.Module], None]) -> Path:
    """A proper artifact (fresh checksums) of `src`'s model after `edit` changed its weights in place."""
    m = Model.load(src)
    with torch.no_grad():
        edit(m.module)
    return save_model(dst, m.module, m.features, m.config, {})


def negate(module: torch.nn.Module) -> None:
    """logit -> 2b - logit: every ranking is reversed, so AUC becomes 1 - AUC."""
    module.wide.table.weight.neg_()
    module.deep.mlp.layers[-1].weight.neg_()


def shift_bias(module: torch.nn.Module) -> None:
    """logit -> logit + 3: the same ranking (same AUC), badly calibrated (worse logloss)."""
    module.bias.add_(3.0)


def nan_weight(module: torch.nn.Module) -> None:
    module.deep.mlp.layers[0].weight[0, 0] = float("nan")


def constant(module: torch.nn.Module) -> None:
    """Only the bias is left: every row gets the same score."""
    module.wide.table.weight.zero_()
    module.deep.mlp.layers[-1].weight.zero_()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def ranked_pair(model_dir: Path, root: Path, holdout: Path) -> tuple[Path, Path]:
    """(better, worse), worse on both AUC and logloss: of the model and its negation (AUCs summing to 1), the one with the
    higher AUC, and the other with its bias shifted (badly calibrated). Independent of how well the model trained."""
    table = pq.read_table(holdout)
    negated = derive(model_dir, root / "negated", negate)
    auc = {p: Model.load(p).evaluate(table)["auc"] for p in (model_dir, negated)}
    better, other = (model_dir, negated) if auc[model_dir] > auc[negated] else (negated, model_dir)
    worse = derive(other, root / "worse", shift_bias)
    b, w = Model.load(better).evaluate(table), Model.load(worse).evaluate(table)
    if not (b["auc"] > w["auc"] + 0.02 and b["logloss"] < w["logloss"] - 0.05):
        raise ValueError(f"{model_dir}: cannot derive a clearly worse model (better {b}, worse {w})")
    return better, worse
