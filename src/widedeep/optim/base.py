"""The base of every optimizer here: torch's `Optimizer` without the `torch._dynamo` import on construction and zero_grad."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Optimizer(torch.optim.Optimizer):
    """`torch.optim.Optimizer` (param groups, per-parameter state, hooks, state_dict) for eager training.

    torch wraps `add_param_group` and `zero_grad` in `torch._disable_dynamo`, whose first call imports `torch._dynamo`
    (about 1.6 s and 50 MB at start-up, for a compiler this package does not use); the plain versions below do the same
    bookkeeping. Subclasses implement `update_param`; `step` runs without torch's `_use_grad_for_differentiable`, which
    imports it too.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                raise ValueError(f"{type(self).__name__} can only optimize leaf tensors, got {type(p).__name__}")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: a parameter appears twice in the parameter groups")
        group = {**self.defaults, **param_group, "params": params}
        self.param_groups.append(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient (`update_param`); `closure` re-evaluates the loss first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update_param(p, group)
        return loss

    def update_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """Apply this optimizer's update to `p` from `p.grad` with `group`'s hyper-parameters."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad = p.grad.detach()
                    if p.grad.is_sparse:
                        p.grad.zero_()
                    else:
                        p.grad.requires_grad_(False).zero_()
