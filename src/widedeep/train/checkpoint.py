"""Training checkpoints: model weights, optimizer state and the loop position, written atomically, no pickle.

A checkpoint is a folder ``<out>/checkpoints/step-000123/`` holding

- ``model.safetensors``      the model's ``state_dict``
- ``optimizer.safetensors``  every optimizer state tensor, keyed ``"{group}/{param_name}::{state_key}"``
- ``state.json``             loop position (epoch, batch, step), early-stopping state, config fingerprint,
                             and the sha256 of both tensor files (a truncated or edited file is refused)

It is written under a temporary name and renamed into place, so a crash never leaves a half-written checkpoint
under a ``step-*`` name. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from widedeep.atomic import ordinary_permissions
from widedeep.atomic import write_text_synced as _fsync_write

FORMAT = 1
PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match its recorded checksums or the current run."""


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensor dict (shared with the model artifact and warm start)


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def optimizer_tensors(optimizers: Mapping[str, torch.optim.Optimizer], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Flatten the per-parameter state of named optimizers into ``{"wide/wide.bag.weight::z": tensor, ...}``.

    Python numbers in the state (e.g. a step counter kept as an int) become 0-d int64/float64 tensors; tensors are
    copied to CPU and made contiguous so the dict can be written with safetensors as is.
    """
    names = _param_names(model)
    out: dict[str, torch.Tensor] = {}
    for group, opt in optimizers.items():
        if "/" in group or "::" in group:
            raise ValueError(f"optimizer group name {group!r} must not contain '/' or '::'")
        for pg in opt.param_groups:
            for p in pg["params"]:
                if id(p) not in names:
                    raise ValueError(f"optimizer {group!r} holds a parameter of shape {tuple(p.shape)} that is not in the model")
                for key, value in opt.state.get(p, {}).items():
                    out[f"{group}/{names[id(p)]}::{key}"] = _as_tensor(value, f"{group}/{names[id(p)]}::{key}")
    return out


def _as_tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").contiguous().clone()
    if isinstance(value, bool):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    raise ValueError(f"optimizer state {key!r} is a {type(value).__name__}, which cannot be stored as a tensor")


def load_optimizer_tensors(
    optimizers: Mapping[str, torch.optim.Optimizer],
    model: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
) -> None:
    """Restore optimizer state written by `optimizer_tensors` into optimizers built over the same model.

    Every key must name a known group, a parameter that group optimizes, and (where the fresh optimizer already has
    that state) a tensor of the same shape. Values go to the parameter's device; a 0-d int64/float64 tensor becomes a
    Python number again unless the fresh optimizer keeps that entry as a tensor.
    """
    by_name = {name: p for name, p in model.named_parameters()}
    owned: dict[str, set[str]] = {}
    for group, opt in optimizers.items():
        ids = {id(p) for pg in opt.param_groups for p in pg["params"]}
        owned[group] = {name for name, p in by_name.items() if id(p) in ids}
    for key, value in tensors.items():
        group, sep, rest = key.partition("/")
        pname, sep2, skey = rest.rpartition("::")
        if not sep or not sep2 or not pname or not skey:
            raise CheckpointError(f"optimizer state key {key!r} is not of the form 'group/param::state'")
        if group not in optimizers:
            raise CheckpointError(f"optimizer state key {key!r}: unknown optimizer group {group!r} (have {sorted(optimizers)})")
        if pname not in owned[group]:
            raise CheckpointError(f"optimizer state key {key!r}: parameter {pname!r} is not optimized by {group!r}")
        p = by_name[pname]
        state = optimizers[group].state[p]
        old = state.get(skey)
        if isinstance(old, torch.Tensor):
            if old.shape != value.shape:
                raise CheckpointError(
                    f"optimizer state key {key!r}: shape {tuple(value.shape)} does not match {tuple(old.shape)}"
                )
            state[skey] = value.to(device=old.device, dtype=old.dtype).clone()
        elif isinstance(old, (int, float)) or (old is None and value.dim() == 0 and value.dtype in (torch.int64, torch.float64)):
            state[skey] = value.item()
        else:
            state[skey] = value.to(p.device).clone()


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint folders


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    """Write ``ckpt_dir/step-<step>/`` atomically; `best` (optional) is a copy of the best weights so far. Returns the folder."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{state.step:09d}"
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {
        "model.safetensors": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "optimizer.safetensors": optimizer_tensors(optimizers, model),
    }
    if best is not None:
        files["best.safetensors"] = {k: v.detach().to("cpu").contiguous() for k, v in best.items()}
    sums = {}
    for name, tensors in files.items():
        save_file(tensors, str(tmp / name), metadata={"format": "widedeep-checkpoint"})
        sums[name] = _sha256(tmp / name)
    meta = {"format": FORMAT, "fingerprint": fingerprint, "state": asdict(state), "sha256": sums}
    _fsync_write(tmp / "state.json", json.dumps(meta, indent=2, allow_nan=True))
    ordinary_permissions(tmp)
    if final.exists():  # a re-run that reached the same step: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
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
        got = _sha256(file)
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
    load_optimizer_tensors(optimizers, model, ckpt.optimizer)
    return ckpt.state
