"""FTRL-Proximal (McMahan et al. 2013, Algorithm 1): per-coordinate learning rates with L1/L2, the paper's wide-part optimizer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from widedeep.config import OPTIMIZER_DEFAULTS
from widedeep.optim.base import Optimizer
from widedeep.optim.sparse_grad import sparse_rows

_D = OPTIMIZER_DEFAULTS["ftrl"]


class FTRL(Optimizer):
    """FTRL-Proximal with exact per-coordinate updates; the parameter holds w, the state holds `z` and `n`.

    For each touched coordinate with gradient g:
        sigma = (sqrt(n + g^2) - sqrt(n)) / alpha;  z += g - sigma * w;  n += g^2
        w = 0 if |z| <= l1 else -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)
    Sparse gradients (from `sparse=True` embeddings) update only the rows they touch; L1 gives exact zeros.
    """

    def __init__(
        self, params: Iterable[Any], alpha: float = _D["alpha"], beta: float = _D["beta"], l1: float = _D["l1"], l2: float = _D["l2"]
    ):
        for key, value, low in (("alpha", alpha, 0.0), ("beta", beta, 0.0)):
            if not value > low:
                raise ValueError(f"FTRL {key} must be > 0, got {value}")
        for key, value in (("l1", l1), ("l2", l2)):
            if not value >= 0.0:
                raise ValueError(f"FTRL {key} must be >= 0, got {value}")
        super().__init__(params, dict(alpha=alpha, beta=beta, l1=l1, l2=l2))

    def _state(self, p: torch.Tensor, group: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.state[p]
        if not state:
            # z is chosen so that w(z, n=0) equals the current weight: a model that starts from non-zero weights
            # (warm start without optimizer state) keeps them instead of being reset by the first step.
            w = p.detach()
            scale = group["beta"] / group["alpha"] + group["l2"]
            state["z"] = -(w * scale + torch.sign(w) * group["l1"])
            state["n"] = torch.zeros_like(w)
        return state["z"], state["n"]

    @staticmethod
    def _update(w: torch.Tensor, z: torch.Tensor, n: torch.Tensor, g: torch.Tensor, alpha: float, beta: float, l1: float, l2: float):
        """One step on matching tensors; returns the new (w, z, n)."""
        n_new = n + g * g
        sqrt_n_new = n_new.sqrt()
        sigma = (sqrt_n_new - n.sqrt()) / alpha
        z_new = z + g - sigma * w
        w_new = -(z_new - torch.sign(z_new) * l1) / ((beta + sqrt_n_new) / alpha + l2)
        w_new = torch.where(z_new.abs() <= l1, torch.zeros_like(w_new), w_new)
        return w_new, z_new, n_new

    def update_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        hp = (group["alpha"], group["beta"], group["l1"], group["l2"])
        z, n = self._state(p, group)
        grad = p.grad
        if grad.is_sparse:
            rows, g = sparse_rows(grad)  # rows unique and sorted; g (R, *p.shape[1:])
            g = g.to(p.dtype)
            w_new, z_new, n_new = self._update(p.index_select(0, rows), z.index_select(0, rows), n.index_select(0, rows), g, *hp)
            p.index_copy_(0, rows, w_new)
            z.index_copy_(0, rows, z_new)
            n.index_copy_(0, rows, n_new)
        else:
            w_new, z_new, n_new = self._update(p, z, n, grad.to(p.dtype), *hp)
            p.copy_(w_new)
            z.copy_(z_new)
            n.copy_(n_new)
