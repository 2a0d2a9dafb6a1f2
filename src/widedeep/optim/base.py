"""The base of the optimizers torch does not have (FTRL, and Adam over mixed sparse and dense gradients)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Optimizer(torch.optim.Optimizer):
    """`torch.optim.Optimizer` (param groups, per-parameter state, state_dict, zero_grad) whose `step` updates every
    parameter that has a gradient through `update_param`, the one method a subclass implements."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; `closure` re-evaluates the loss first."""
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
