"""The deep part: embeddings of sparse features, pooled where multi-valued, concatenated with dense values, fed to a ReLU MLP."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from widedeep.model.tables import OffsetTable


@dataclass(frozen=True)
class EmbeddingSlot:
    """One sparse input of the deep part: column `index` of ids (source "id") or list number `index` (source "list")."""

    name: str
    source: Literal["id", "list"]
    index: int
    cardinality: int
    dim: int
    pooling: Literal["mean", "sum"] = "mean"


class MLP(nn.Module):
    """Linear+ReLU(+Dropout) layers of widths `hidden`, then one logit (no bias: the joint bias lives in WideDeep).

    The input is padded with zero columns to a multiple of `align`: CPU GEMMs over an inner size of 858 (the paper's
    26 x 32 + 13 x 2) run about 25% slower than over 864. The padded weight columns start at zero and, their input being
    zero, never receive a gradient, so the function is exactly that of an unpadded MLP.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0, align: int = 16):
        super().__init__()
        self.in_dim = in_dim
        self.pad = (-in_dim) % align
        layers: list[nn.Module] = []
        width_in = in_dim + self.pad
        for width in hidden:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, 1, bias=False))
        self.layers = nn.Sequential(*layers)
        with torch.no_grad():
            layers[0].weight[:, in_dim:] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim) -> logit (B,)."""
        if self.pad:
            x = F.pad(x, (0, self.pad))  # (B, in_dim + pad)
        return self.layers(x).squeeze(-1)  # (B, 1) -> (B,)


@dataclass(frozen=True)
class InputLayout:
    """Which columns of the deep input each deep feature fills, in the order `Deep.inputs` concatenates them: single-valued
    slots table by table, then pooled list slots table by table, then dense columns (a continuous feature fills two: its
    value and its null flag, after its bucket's embedding among the single-valued slots when it has one)."""

    names: tuple[str, ...]  # the deep feature of each column block
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, blocks: Sequence[tuple[str, int]]) -> InputLayout:
        """(feature, width) blocks in concatenation order -> their column spans."""
        names, starts, ends, at = [], [], [], 0
        for name, width in blocks:
            names.append(name)
            starts.append(at)
            at += width
            ends.append(at)
        return cls(tuple(names), tuple(starts), tuple(ends))

    @property
    def width(self) -> int:
        return self.ends[-1] if self.ends else 0

    def columns(self, features: Collection[str]) -> list[int]:
        """The deep-input columns the given features fill, ascending."""
        return [c for n, a, b in zip(self.names, self.starts, self.ends) if n in features for c in range(a, b)]


class Deep(nn.Module):
    """Embeddings (one fused table per embedding dim) + dense columns -> MLP -> logit (B,).

    `dense_features` names the deep feature of each dense column (a continuous feature owns its value and null flag).
    """

    def __init__(
        self,
        slots: Sequence[EmbeddingSlot],
        dense_columns: Sequence[int],
        dense_features: Sequence[str],
        hidden: Sequence[int],
        dropout: float = 0.0,
    ):
        super().__init__()
        if not slots and not dense_columns:
            raise ValueError("Deep needs at least one embedding slot or dense column")
        if len(dense_features) != len(dense_columns):
            raise ValueError(f"Deep got {len(dense_columns)} dense columns but {len(dense_features)} dense feature names")
        self.slots = tuple(slots)
        dims = list(dict.fromkeys(s.dim for s in self.slots))  # first-appearance order, deterministic
        self.tables = nn.ModuleDict()
        self._scalar: list[str] = []  # keys of the tables that hold single-valued slots
        self._lists: list[tuple[str, int, int, bool]] = []  # (table key, list index, row offset, mean pooling)
        self.slot_rows: list[tuple[str, EmbeddingSlot, int]] = []  # (table key, slot, row offset): where each slot's ids live
        scalar_blocks, list_blocks = [], []  # (feature, width) in the order inputs() concatenates them
        for dim in dims:
            key = f"d{dim}"
            members = [s for s in self.slots if s.dim == dim]
            scalars = [s for s in members if s.source == "id"]
            lists = [s for s in members if s.source == "list"]
            table = OffsetTable([s.cardinality for s in scalars + lists], dim)
            self.tables[key] = table
            if scalars:
                self.register_buffer(f"{key}_columns", torch.tensor([s.index for s in scalars], dtype=torch.long), persistent=False)
                self.register_buffer(f"{key}_offsets", torch.tensor(table.offsets[: len(scalars)], dtype=torch.long), persistent=False)
                self._scalar.append(key)
                scalar_blocks += [(s.name, dim) for s in scalars]
            self.slot_rows += [(key, s, off) for s, off in zip(scalars + lists, table.offsets)]
            for s, off in zip(lists, table.offsets[len(scalars) :]):
                self._lists.append((key, s.index, off, s.pooling == "mean"))
                list_blocks.append((s.name, dim))
        self.register_buffer("dense_columns", torch.tensor([int(c) for c in dense_columns], dtype=torch.long), persistent=False)
        self.n_dense = len(dense_columns)
        self.layout = InputLayout.of(scalar_blocks + list_blocks + [(name, 1) for name in dense_features])
        self.in_dim = self.layout.width
        self.mlp = MLP(self.in_dim, hidden, dropout)

    def inputs(self, ids: torch.Tensor, dense: torch.Tensor, lists: Sequence[torch.Tensor]) -> torch.Tensor:
        """ids (B, S) int64, dense (B, C) float32, lists: (B, L_j) int64 0-padded -> the MLP input (B, in_dim), laid out
        as `self.layout` says."""
        B = ids.shape[0]
        parts = []
        for key in self._scalar:
            table = self.tables[key]
            cols, offs = getattr(self, f"{key}_columns"), getattr(self, f"{key}_offsets")
            rows = table.global_rows(ids.index_select(1, cols), offs)  # (B, S_d)
            parts.append(table(rows).reshape(B, -1))  # (B, S_d * D)
        for key, index, off, mean in self._lists:
            table = self.tables[key]
            values = lists[index]  # (B, L)
            pooled = table(table.global_rows(values, off)).sum(dim=1)  # (B, D); padding row 0 is zero
            if mean:
                count = (values > 0).sum(dim=1, keepdim=True).clamp_min(1)  # an empty list pools to zeros
                pooled = pooled / count.to(pooled.dtype)
            parts.append(pooled)
        if self.n_dense:
            parts.append(dense.index_select(1, self.dense_columns).to(parts[0].dtype if parts else dense.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, in_dim)

    def forward(self, ids: torch.Tensor, dense: torch.Tensor, lists: Sequence[torch.Tensor]) -> torch.Tensor:
        """ids (B, S) int64, dense (B, C) float32, lists: (B, L_j) int64 0-padded -> deep logit (B,)."""
        return self.mlp(self.inputs(ids, dense, lists))
