"""Fast coalescing of sparse row gradients (torch's CPU coalesce is a hot spot of a step), and the rows/values view of one."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from widedeep.model.tables import unique_rows


def coalesce(grad: torch.Tensor) -> torch.Tensor:
    """A sparse COO gradient with unique, sorted rows and summed values; same result as `grad.coalesce()`, faster on CPU.

    torch's CPU coalesce sorts and reduces in a generic kernel; `unique_rows` + `index_add_` over the (nnz, dim) values is
    several times cheaper for embedding gradients, where nnz is B x slots and dim is small. Values are summed in their
    order of appearance.
    """
    if grad.is_coalesced() or grad.sparse_dim() != 1:
        return grad.coalesce()
    idx, values = grad._indices()[0], grad._values()
    if idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        # Already unique and sorted, only not flagged (autograd drops the flag of OffsetTable's coalesced gradients).
        return torch.sparse_coo_tensor(grad._indices(), values, grad.shape, is_coalesced=True, check_invariants=False)
    rows, inverse = unique_rows(idx)
    summed = values.new_zeros((rows.numel(), *values.shape[1:])).index_add_(0, inverse, values)
    return torch.sparse_coo_tensor(rows[None, :], summed, grad.shape, is_coalesced=True, check_invariants=False)


def coalesce_grads(params: Iterable[torch.Tensor]) -> None:
    """Replace every uncoalesced sparse `.grad` in place by its coalesced form (once, before the optimizers step)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse and not p.grad.is_coalesced():
            p.grad = coalesce(p.grad)


def sparse_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, values) of a sparse row gradient, coalesced: rows unique and sorted, values (R, *dims) summed."""
    grad = coalesce(grad)
    return grad._indices()[0], grad._values()
