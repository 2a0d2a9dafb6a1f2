"""One training step and one evaluation pass: the model, its optimizers and the precision of the step.

The step may run under bf16 autocast; evaluation always scores in fp32 with the plain forward pass, as the saved model
scores when served (docs/design.md, "Precision: one rule"). Loss and weights are checked for NaN and infinities.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from widedeep.batch import Batch
from widedeep.features.encoded import Encoded
from widedeep.metrics import binary_metrics
from widedeep.optim.groups import step as step_optimizers
from widedeep.optim.groups import zero_grad
from widedeep.train.data import ShardLoader

EVAL_BATCH = 2048  # rows per eval forward: larger batches only add transient memory
SMALL_STEP_MACS = 1 << 24  # batch x MLP weights below which one CPU thread is faster
BF16_ENV = "WIDEDEEP_BF16"  # "on"/"off" overrides train.bf16 in every process (forces one precision path, e.g. in tests)


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite; no model is written."""


def use_bf16(setting: str, device: torch.device) -> bool:
    """Resolve `train.bf16` (or the WIDEDEEP_BF16 override). "auto" is fp32 on every machine, so a config trains the
    same model whatever CPU it runs on; bf16 autocast ("on") is there to be asked for. benchmarks/bf16_cost.py measured
    its eval-AUC cost within seed-to-seed noise on five data sets (docs/benchmarks.md)."""
    setting = os.environ.get(BF16_ENV) or setting
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"train.bf16 (or {BF16_ENV}) must be 'auto', 'on' or 'off', got {setting!r}")
    if setting == "on" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.bf16 = 'on' but {torch.cuda.get_device_name(device)} has no bf16 support")
    return setting == "on"


def cpu_threads(model: torch.nn.Module, batch_size: int) -> int:
    """Intra-op threads for CPU training: 1 when a step's dense work is small (threads then cost more in hand-offs than they
    save, badly so on a busy machine), else torch's default. OMP_NUM_THREADS, when set, wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    dense = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".mlp." in f".{n}")
    return 1 if batch_size * dense < SMALL_STEP_MACS else torch.get_num_threads()


# ----------------------------------------------------------------------------------------------------------------------
# One step, and evaluation


class Trainer:
    """Model + optimizers + precision: `step` is forward -> loss -> backward -> `sync_grads` -> one step per optimizer.

    `forward_module` is what forward runs through (the model itself, or a data-parallel wrapper of it); `sync_grads`
    runs between backward and the optimizer steps (e.g. to all-reduce the wide part's sparse gradients).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: Mapping[str, torch.optim.Optimizer],
        device: torch.device,
        bf16: bool,
        *,
        forward_module: torch.nn.Module | None = None,
        sync_grads: Callable[[], None] | None = None,
        gather: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.model, self.optimizers, self.device, self.bf16 = model, dict(optimizers), device, bf16
        self.forward_module = forward_module or model
        self.sync_grads = sync_grads
        self.gather = gather  # data-parallel: (labels, probs) of this rank's eval part -> those of the whole eval set

    def step(self, batch: Batch) -> torch.Tensor:
        """Train on one batch (under bf16 autocast when enabled); returns the detached mean loss (not synced to the host)."""
        batch = batch.to(self.device, non_blocking=True)
        zero_grad(self.optimizers)
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext():
            logits = self.forward_module(batch)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
        loss.backward()
        if self.sync_grads is not None:
            self.sync_grads()
        step_optimizers(self.optimizers)
        return loss.detach()

    @torch.no_grad()
    def predict(self, shards: Sequence[Encoded]) -> np.ndarray:
        """Probabilities for every row of `shards`, in order, in fp32 whatever the training precision (as served)."""
        self.model.eval()
        out = []
        try:
            for batch in ShardLoader(shards, EVAL_BATCH, shuffle=False).epoch(0):
                logits = self.model(batch.to(self.device, non_blocking=True))
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        finally:
            self.model.train()
        return np.concatenate(out)

    def evaluate(self, shards: Sequence[Encoded]) -> dict[str, float]:
        """AUC, logloss, calibration (mean prediction / mean label) on `shards`, over all ranks' parts."""
        labels = np.concatenate([np.asarray(s.label) for s in shards if len(s)])
        probs = self.predict(shards)
        if self.gather is not None:
            labels, probs = self.gather(labels, probs)
        return binary_metrics(labels, probs)


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(float(loss.item())):
        raise TrainingDiverged(
            f"training diverged at step {step} (loss is NaN or inf); no model was written. "
            "Lower the learning rates ([train] wide_optimizer / deep_optimizer) and train again"
        )


def check_weights(model: torch.nn.Module, step: int) -> None:
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDiverged(f"training diverged by step {step}: parameter {bad[0]!r} holds NaN or inf; no model was written")
