"""Embedding tables shared by several sparse slots: one weight matrix, one lookup, per-slot row offsets.

Every slot uses the reserved ids of docs/design.md (0 padding, 1 missing, 2 out of vocabulary, 3.. values). Slot k's id i >= 1
lives at global row ``offsets[k] + i``; id 0 (padding) of every slot maps to the shared global row 0, whose weight stays zero
(no gradient reaches it). So a table over slots of sizes c_k has ``1 + sum(c_k - 1)`` rows. This is TorchRec's fused-table idea:
one gather over many slots instead of one call per slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SlotRows:
    """Where one slot's ids live in a table: id i >= 1 is row ``offset + i`` of parameter ``param``."""

    slot: str
    param: str
    offset: int
    cardinality: int  # the slot's table size including the reserved ids 0, 1, 2


def slot_offsets(cardinalities: Sequence[int]) -> list[int]:
    """Row offsets that pack slots of the given sizes after the shared padding row 0."""
    offsets, start = [], 0
    for c in cardinalities:
        if c < 1:
            raise ValueError(f"slot cardinality must be >= 1 (it counts the reserved ids), got {c}")
        offsets.append(start)
        start += c - 1
    return offsets


class OffsetTable(nn.Module):
    """A (rows, dim) embedding table holding several slots; lookups return sparse gradients over the touched rows only."""

    def __init__(self, cardinalities: Sequence[int], dim: int, init_scale: float | None = None):
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.offsets = tuple(slot_offsets(self.cardinalities))
        self.rows = 1 + sum(c - 1 for c in self.cardinalities)
        self.dim = dim
        self.weight = nn.Parameter(torch.zeros(self.rows, dim))
        if init_scale is None:
            init_scale = 1.0 / math.sqrt(dim)
        if init_scale > 0:
            with torch.no_grad():
                self.weight[1:].uniform_(-init_scale, init_scale)

    def global_rows(self, ids: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Slot-local ids (..., K) -> global rows, given each column's slot offset `base` (K,) or a scalar; 0 stays 0."""
        return torch.where(ids > 0, ids + base, torch.zeros_like(ids))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Global rows (...,) -> embeddings (..., dim); padding row 0 gives zeros and receives no gradient."""
        if self.weight.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return RowLookup.apply(self.weight, rows)
        return F.embedding(rows, self.weight, padding_idx=0)  # inference, tracing and export

    def extra_repr(self) -> str:
        return f"slots={len(self.cardinalities)}, rows={self.rows}, dim={self.dim}"


_POS_BITS = 32  # low bits of a packed sort key hold the position, high bits the row


def unique_rows(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, inverse) of a 1-D int64 index tensor: `rows` sorted and unique, ``rows[inverse] == idx``; as
    `torch.unique(idx, sorted=True, return_inverse=True)`.

    On CPU it sorts packed keys ``row << 32 | position`` with numpy's vectorized sort: a pure sort of distinct int64
    keys is several times faster than torch's CPU sort, which also carries the permutation along.
    """
    n = idx.numel()
    if idx.device.type != "cpu" or n == 0 or n >= 1 << _POS_BITS or idx.dtype != torch.int64:
        return torch.unique(idx, sorted=True, return_inverse=True)
    x = idx.detach().reshape(-1).numpy()
    if x.min() < 0 or x.max() >= 1 << (63 - _POS_BITS):
        return torch.unique(idx, sorted=True, return_inverse=True)
    keys = np.sort((x << _POS_BITS) | np.arange(n, dtype=np.int64))  # distinct keys: order is unambiguous
    sorted_rows = keys >> _POS_BITS
    first = np.empty(n, dtype=bool)  # first occurrence of each row in sorted order
    first[0] = True
    np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[keys & ((1 << _POS_BITS) - 1)] = np.cumsum(first) - 1
    return torch.from_numpy(sorted_rows[first]), torch.from_numpy(inverse).view(idx.shape)


class RowLookup(torch.autograd.Function):
    """`F.embedding(rows, weight, padding_idx=0, sparse=True)` whose gradient comes out already coalesced.

    The backward sums the output gradient per unique row (`unique_rows` + `index_add_`, in order of appearance) and
    drops row 0: the same tensor as torch's sparse embedding gradient after `widedeep.optim.sparse_grad.coalesce`,
    without its padding mask copies and the second pass over the values.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.weight_shape = weight.shape
        return weight.index_select(0, rows.reshape(-1)).view(*rows.shape, weight.shape[1])  # (..., dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        (rows,) = ctx.saved_tensors
        dim = ctx.weight_shape[1]
        unique, inverse = unique_rows(rows.reshape(-1))
        summed = grad.new_zeros(unique.numel(), dim).index_add_(0, inverse, grad.reshape(-1, dim))  # (U, dim)
        if unique.numel() and bool(unique[0] == 0):  # padding: sorted first when present
            unique, summed = unique[1:], summed[1:]
        return torch.sparse_coo_tensor(unique[None, :], summed, ctx.weight_shape, is_coalesced=True, check_invariants=False), None
