"""One optimizer per model part (FTRL for wide, AdaGrad for deep by default) over disjoint, complete parameter groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from widedeep.config import BATCH_SCALED_DEFAULTS, OptimizerConfig, TrainConfig
from widedeep.config import OPTIMIZER_DEFAULTS as DEFAULTS
from widedeep.model.tables import OffsetTable
from widedeep.optim.ftrl import FTRL
from widedeep.optim.lazy_adam import LazyAdam
from widedeep.optim.sparse_grad import coalesce_grads

NamedParams = Sequence[tuple[str, nn.Parameter]]


def check_groups(model: nn.Module, groups: Mapping[str, NamedParams]) -> None:
    """Raise ValueError naming the parameter if one is in two groups or in none (checked against model.named_parameters())."""
    owner: dict[int, tuple[str, str]] = {}
    for part, named in groups.items():
        for name, p in named:
            if id(p) in owner:
                raise ValueError(f"parameter {name!r} is in two optimizer groups: {owner[id(p)][0]!r} and {part!r}")
            owner[id(p)] = (part, name)
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in owner:
            raise ValueError(f"parameter {name!r} is in no optimizer group (groups: {sorted(groups)})")
    known = {id(p) for _, p in model.named_parameters()}
    for part, named in groups.items():
        for name, p in named:
            if id(p) not in known:
                raise ValueError(f"parameter {name!r} of group {part!r} is not a parameter of the model")


def resolve_hyper_parameters(cfg: OptimizerConfig, batch_size: int) -> dict[str, float]:
    """Every hyper-parameter of `cfg`'s optimizer for this batch size: the config's values as given, the defaults for the
    others, those of BATCH_SCALED_DEFAULTS scaled as 1/batch_size from the default batch size (FTRL's beta = 1/B)."""
    if cfg.name not in DEFAULTS:
        raise ValueError(f"unknown optimizer {cfg.name!r} (expected one of {sorted(DEFAULTS)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    given = cfg.kwargs()
    unknown = sorted(set(given) - set(DEFAULTS[cfg.name]))
    if unknown:
        raise ValueError(f"optimizer {cfg.name!r} has no hyper-parameter {unknown[0]!r} (expected {sorted(DEFAULTS[cfg.name])})")
    scale = TrainConfig.batch_size / batch_size
    scaled = BATCH_SCALED_DEFAULTS.get(cfg.name, ())
    defaults = {k: v * scale if k in scaled else v for k, v in DEFAULTS[cfg.name].items()}
    return {**defaults, **given}


def make_optimizer(
    cfg: OptimizerConfig, named: NamedParams, sparse: set[int] = frozenset(), batch_size: int = TrainConfig.batch_size
) -> torch.optim.Optimizer:
    """An optimizer for one part, with the hyper-parameters `resolve_hyper_parameters` gives for `batch_size`; `sparse`
    holds ids of parameters that receive sparse gradients (embedding tables)."""
    hp: dict[str, Any] = resolve_hyper_parameters(cfg, batch_size)
    params = [p for _, p in named]
    if not params:
        raise ValueError(f"optimizer {cfg.name!r} got no parameters")
    if cfg.name == "ftrl":
        return FTRL(params, **hp)
    if cfg.name == "adam":
        return LazyAdam(params, **hp)
    # AdaGrad and SGD (as torch's) take sparse gradients only without weight decay (and SGD without momentum):
    # embedding rows get the plain update, dense parameters the configured one.
    dense_p = [p for p in params if id(p) not in sparse]
    sparse_p = [p for p in params if id(p) in sparse]
    lazy = {"weight_decay": 0.0} if cfg.name == "adagrad" else {"weight_decay": 0.0, "momentum": 0.0}
    param_groups = [g for g in ({"params": dense_p}, {"params": sparse_p, **lazy}) if g["params"]]
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(param_groups, **hp)
    return torch.optim.SGD(param_groups, **hp)


def sparse_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters whose gradients are sparse: the weights of every OffsetTable."""
    return {id(m.weight) for m in model.modules() if isinstance(m, OffsetTable)}


def build_optimizers(model: nn.Module, train_cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """{"wide": ..., "deep": ...} from `[train] wide_optimizer` / `deep_optimizer`, one key per part the model has."""
    groups = model.parameter_groups()
    check_groups(model, groups)
    sparse = sparse_parameters(model)
    cfgs = {"wide": train_cfg.wide_optimizer, "deep": train_cfg.deep_optimizer}
    extra = sorted(set(groups) - set(cfgs))
    if extra:
        raise ValueError(f"parameter group {extra[0]!r} has no optimizer (expected 'wide' or 'deep')")
    return {part: make_optimizer(cfgs[part], named, sparse, train_cfg.batch_size) for part, named in groups.items() if named}


def zero_grad(opts: Mapping[str, torch.optim.Optimizer]) -> None:
    """Drop the gradients of every part (set to None, so sparse gradients start fresh): the one way the loop clears them."""
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)


def step(opts: Mapping[str, torch.optim.Optimizer]) -> None:
    """Step every part's optimizer. Sparse gradients are coalesced first by `coalesce_grads`, which only flags the
    already unique and sorted rows of an OffsetTable gradient (torch's optimizers would sort them again)."""
    for opt in opts.values():
        coalesce_grads(p for group in opt.param_groups for p in group["params"])
        opt.step()
