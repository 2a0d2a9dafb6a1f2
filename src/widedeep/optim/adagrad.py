"""AdaGrad (Duchi et al. 2011), the paper's deep-part optimizer, with sparse embedding gradients updating only their rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from widedeep.optim.base import Optimizer
from widedeep.optim.sparse_grad import sparse_rows


class Adagrad(Optimizer):
    """The update of `torch.optim.Adagrad` with `lr_decay = 0`, op for op (so it matches it bit for bit on CPU):

        g += weight_decay * w;  sum += g^2;  w -= lr * g / (sqrt(sum) + eps)

    A sparse gradient updates only the rows it touches (their weights and accumulators); the rest stay bit-identical.
    As in torch, weight decay cannot be combined with sparse gradients. State per parameter: `sum` (like the parameter)
    and `step` (a float32 scalar tensor), the layout torch's AdaGrad saves.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-10, initial_accumulator_value: float = 0.0, weight_decay: float = 0.0
    ):
        for key, value in (("lr", lr), ("eps", eps), ("initial_accumulator_value", initial_accumulator_value), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"Adagrad {key} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0)
                state["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    def update_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        state = self.state[p]
        state["step"] += 1
        total = state["sum"]
        if p.grad.is_sparse:
            if wd != 0:
                raise RuntimeError("Adagrad: weight_decay cannot be used with sparse gradients")
            rows, g = sparse_rows(p.grad)  # (R,), (R, *p.shape[1:])
            sums = total.index_select(0, rows).add_(g.pow(2))
            total.index_copy_(0, rows, sums)
            p.index_add_(0, rows, g / sums.sqrt_().add_(eps), alpha=-lr)
        else:
            g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            total.addcmul_(g, g, value=1)
            p.addcdiv_(g, total.sqrt().add_(eps), value=-lr)
