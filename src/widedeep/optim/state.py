"""Optimizer state as a flat dict of tensors, keyed ``"{group}/{param_name}::{state_key}"``, and back.

Checkpoints, the model artifact (`optimizer.safetensors`) and warm start all store optimizer state this way, so it can be
written with safetensors (no pickle) and matched to parameters by name rather than by position.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


class OptimizerStateError(ValueError):
    """Stored optimizer state does not fit the optimizers or the model; the message names the key."""


def optimizer_tensors(optimizers: Mapping[str, torch.optim.Optimizer], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Flatten the per-parameter state of named optimizers into ``{"wide/wide.bag.weight::z": tensor, ...}``.

    Python numbers in the state (e.g. a step counter kept as an int) become 0-d int64/float64 tensors; tensors are
    copied to CPU and made contiguous so the dict can be written with safetensors as is.
    """
    names = _param_names(model)
    out: dict[str, torch.Tensor] = {}
    for group, opt in optimizers.items():
        if "/" in group or "::" in group:
            raise OptimizerStateError(f"optimizer group name {group!r} must not contain '/' or '::'")
        for pg in opt.param_groups:
            for p in pg["params"]:
                if id(p) not in names:
                    raise OptimizerStateError(
                        f"optimizer {group!r} holds a parameter of shape {tuple(p.shape)} that is not in the model"
                    )
                for key, value in opt.state.get(p, {}).items():
                    out[f"{group}/{names[id(p)]}::{key}"] = _as_tensor(value, f"{group}/{names[id(p)]}::{key}")
    return out


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
            raise OptimizerStateError(f"optimizer state key {key!r} is not of the form 'group/param::state'")
        if group not in optimizers:
            raise OptimizerStateError(
                f"optimizer state key {key!r}: unknown optimizer group {group!r} (have {sorted(optimizers)})"
            )
        if pname not in owned[group]:
            raise OptimizerStateError(f"optimizer state key {key!r}: parameter {pname!r} is not optimized by {group!r}")
        p = by_name[pname]
        state = optimizers[group].state[p]
        old = state.get(skey)
        if isinstance(old, torch.Tensor):
            if old.shape != value.shape:
                raise OptimizerStateError(
                    f"optimizer state key {key!r}: shape {tuple(value.shape)} does not match {tuple(old.shape)}"
                )
            state[skey] = value.to(device=old.device, dtype=old.dtype).clone()
        elif isinstance(old, (int, float)) or (old is None and value.dim() == 0 and value.dtype in (torch.int64, torch.float64)):
            state[skey] = value.item()
        else:
            state[skey] = value.to(p.device).clone()


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _as_tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").contiguous().clone()
    if isinstance(value, bool):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    raise OptimizerStateError(f"optimizer state {key!r} is a {type(value).__name__}, which cannot be stored as a tensor")
