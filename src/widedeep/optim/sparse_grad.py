"""Fast coalescing of sparse row gradients, and torch optimizers that use it (the CPU coalesce is a hot spot of a step)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def coalesce(grad: torch.Tensor) -> torch.Tensor:
    """A sparse COO gradient with unique, sorted rows and summed values; same result as `grad.coalesce()`, faster on CPU.

    torch's CPU coalesce sorts and reduces in a generic kernel; `unique` + `index_add_` over the (nnz, dim) values is
    several times cheaper for embedding gradients, where nnz is B x slots and dim is small.
    """
    if grad.is_coalesced() or grad.sparse_dim() != 1:
        return grad.coalesce()
    idx, values = grad._indices()[0], grad._values()
    rows, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    summed = values.new_zeros((rows.numel(), *values.shape[1:])).index_add_(0, inverse, values)
    return torch.sparse_coo_tensor(rows[None, :], summed, grad.shape, is_coalesced=True, check_invariants=False)


def coalesce_grads(params: Iterable[torch.Tensor]) -> None:
    """Replace every uncoalesced sparse `.grad` in place by its coalesced form (once, before the optimizers step)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse and not p.grad.is_coalesced():
            p.grad = coalesce(p.grad)


class Adagrad(torch.optim.Adagrad):
    """torch's AdaGrad, with sparse gradients coalesced by the fast path before its own (then no-op) coalesce."""

    def step(self, closure=None):  # type: ignore[override]
        coalesce_grads(p for g in self.param_groups for p in g["params"])
        return super().step(closure)


class SGD(torch.optim.SGD):
    """torch's SGD, with sparse gradients coalesced by the fast path first."""

    def step(self, closure=None):  # type: ignore[override]
        coalesce_grads(p for g in self.param_groups for p in g["params"])
        return super().step(closure)
