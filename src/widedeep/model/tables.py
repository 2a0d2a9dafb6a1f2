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
        return F.embedding(rows, self.weight, padding_idx=0, sparse=True)

    def extra_repr(self) -> str:
        return f"slots={len(self.cardinalities)}, rows={self.rows}, dim={self.dim}"
