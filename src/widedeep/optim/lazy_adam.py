"""Adam that accepts both dense and sparse gradients: sparse ones update only the rows they touch (as torch's SparseAdam)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from widedeep.config import OPTIMIZER_DEFAULTS
from widedeep.optim.base import Optimizer
from widedeep.optim.sparse_grad import sparse_rows

_D = OPTIMIZER_DEFAULTS["adam"]


class LazyAdam(Optimizer):
    """Adam (Kingma & Ba) with L2 `weight_decay` on dense gradients; rows absent from a sparse gradient keep their moments.

    One optimizer for a part that mixes sparse embedding tables and dense MLP weights, which torch.optim.Adam (dense only)
    and torch.optim.SparseAdam (sparse only) each cannot take alone. Weight decay is not applied to sparse rows.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = _D["lr"],
        beta1: float = _D["beta1"],
        beta2: float = _D["beta2"],
        eps: float = _D["eps"],
        weight_decay: float = _D["weight_decay"],
    ):
        if not lr > 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or not eps > 0 or weight_decay < 0:
            raise ValueError(f"LazyAdam: invalid hyper-parameters lr={lr} beta1={beta1} beta2={beta2} eps={eps} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay))

    def update_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, b1, b2, eps, wd = group["lr"], group["beta1"], group["beta2"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        step_size = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if p.grad.is_sparse:
            rows, g = sparse_rows(p.grad)
            m_rows = m.index_select(0, rows).lerp_(g, 1 - b1)
            v_rows = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
            m.index_copy_(0, rows, m_rows)
            v.index_copy_(0, rows, v_rows)
            p.index_add_(0, rows, m_rows / (v_rows.sqrt() + eps), alpha=-step_size)
        else:
            g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
