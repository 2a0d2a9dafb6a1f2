"""Training checkpoints: model weights, optimizer state and the loop position, written atomically, no pickle.

A checkpoint is a folder ``<out>/checkpoints/step-000123/`` holding

- ``model.safetensors``      the model's ``state_dict``
- ``optimizer.safetensors``  every optimizer state tensor (`widedeep.optim.state`: ``"{group}/{param_name}::{state_key}"``)
- ``state.json``             loop position (epoch, batch, step), early-stopping state, config fingerprint,
                             and the sha256 of both tensor files (a truncated or edited file is refused)

It is published with `widedeep.atomic.publish_dir` (a temporary folder renamed into place), so a crash never leaves a
half-written checkpoint under a ``step-*`` name. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from widedeep.atomic import publish_dir, sha256_file
from widedeep.optim.state import OptimizerStateError, load_optimizer_tensors, optimizer_tensors

FORMAT = 1
PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match its recorded checksums or the current run."""


@dataclass
class LoopState:
    """Where the loop stands: the next batch to train is batch `batch` of epoch `epoch`; `step` batches are done."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    best_auc: float = float("-inf")
    best_step: int = -1
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped: bool = False
    best_epochs: float = 0.0  # epochs trained at the best evaluation
    gain_auc: float = float("-inf")  # epochs = "auto": the eval AUC the next epoch must beat by min_gain
    epochs_without_gain: int = 0
    # The training-loss window not yet written to metrics.jsonl: a resumed run continues it where it was cut.
    window_loss: float = 0.0  # sum of the window's batch losses
    window_steps: int = 0
    window_examples: int = 0
    window_seconds: float = 0.0


def save_checkpoint(
    ckpt_dir: Path,
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: LoopState,
    fingerprint: str,
    *,
    best: Mapping[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``ckpt_dir/step-<step>/`` atomically; `best` (optional) is a copy of the best weights so far. Returns the folder.

    The temporary folder has a `widedeep.atomic` name, so `remove_stale` finds what a killed run left behind."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"{PREFIX}{state.step:09d}"
    files = {
        "model.safetensors": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "optimizer.safetensors": optimizer_tensors(optimizers, model),
    }
    if best is not None:
        files["best.safetensors"] = {k: v.detach().to("cpu").contiguous() for k, v in best.items()}
    with publish_dir(final) as tmp:  # a re-run that reached the same step replaces it
        sums = {}
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name), metadata={"format": "widedeep-checkpoint"})
            sums[name] = sha256_file(tmp / name)
        meta = {"format": FORMAT, "fingerprint": fingerprint, "state": asdict(state), "sha256": sums}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, allow_nan=True), encoding="utf-8")
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Completed checkpoint folders, oldest first (temporary folders of an interrupted write are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest completed checkpoint folder, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint read back and verified: tensors on CPU, ready for `restore`."""

    path: Path
    state: LoopState
    fingerprint: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder, checking that every file is present and matches the checksum in state.json."""
    path = Path(path)
    meta_path = path / "state.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint (no state.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{meta_path}: unsupported checkpoint format {got!r} (expected {FORMAT})")
    sums = meta.get("sha256", {})
    for name in ("model.safetensors", "optimizer.safetensors"):
        if name not in sums:
            raise CheckpointError(f"{meta_path}: no checksum recorded for {name}")
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for name, want in sums.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        got = sha256_file(file)
        if got != want:
            raise CheckpointError(f"{file}: checksum mismatch (file is truncated or modified): sha256 {got} != recorded {want}")
        try:
            loaded[name] = load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: unreadable: {e}") from None
    try:
        state = LoopState(**meta["state"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: bad loop state: {e}") from None
    return Checkpoint(
        path=path,
        state=state,
        fingerprint=str(meta.get("fingerprint", "")),
        model=loaded["model.safetensors"],
        optimizer=loaded["optimizer.safetensors"],
        best=loaded.get("best.safetensors"),
    )


def restore(ckpt: Checkpoint, model: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer]) -> LoopState:
    """Load a checkpoint's weights and optimizer state into a freshly built model and optimizers; returns its loop state."""
    try:
        model.load_state_dict(ckpt.model, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}/model.safetensors does not fit this model: {e}") from None
    try:
        load_optimizer_tensors(optimizers, model, ckpt.optimizer)
    except OptimizerStateError as e:
        raise CheckpointError(f"{ckpt.path}/optimizer.safetensors does not fit these optimizers: {e}") from None
    return ckpt.state
