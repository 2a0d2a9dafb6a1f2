"""SGD with momentum and L2 weight decay on dense gradients; sparse embedding gradients update only their rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from widedeep.optim.base import Optimizer
from widedeep.optim.sparse_grad import sparse_rows


class SGD(Optimizer):
    """The update of `torch.optim.SGD` (no dampening, no Nesterov):

        g += weight_decay * w;  buf = g (first step) or momentum * buf + g;  w -= lr * (buf if momentum else g)

    As in torch, sparse gradients take neither momentum nor weight decay: their rows get `w -= lr * g`.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"SGD {key} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def update_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if p.grad.is_sparse:
            if wd != 0 or momentum != 0:
                raise RuntimeError("SGD: momentum and weight_decay cannot be used with sparse gradients")
            rows, g = sparse_rows(p.grad)
            p.index_add_(0, rows, g, alpha=-lr)
            return
        g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
        if momentum != 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.detach().clone()
            else:
                buf.mul_(momentum).add_(g)
            g = buf
        p.add_(g, alpha=-lr)
