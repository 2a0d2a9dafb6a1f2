"""The wide part: a generalized linear model over sparse ids of raw features and cross-products (the paper's y = w^T [x, phi(x)])."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from widedeep.model.tables import OffsetTable


class Wide(nn.Module):
    """Sum of one weight per active id over the chosen id columns and list slots; cost O(active ids) forward and backward.

    `id_columns` index the columns of `ids (B, S)`; `list_positions` index the `lists` passed to `forward`. The joint bias lives
    in WideDeep. Weights start at zero, which is where FTRL-Proximal starts.
    """

    def __init__(
        self,
        id_columns: Sequence[int],
        id_cardinalities: Sequence[int],
        list_positions: Sequence[int] = (),
        list_cardinalities: Sequence[int] = (),
    ):
        super().__init__()
        if len(id_columns) != len(id_cardinalities) or len(list_positions) != len(list_cardinalities):
            raise ValueError(
                f"Wide: {len(id_columns)} id columns with {len(id_cardinalities)} cardinalities, "
                f"{len(list_positions)} lists with {len(list_cardinalities)} cardinalities"
            )
        if not id_columns and not list_positions:
            raise ValueError("Wide needs at least one id column or list slot")
        self.table = OffsetTable([*id_cardinalities, *list_cardinalities], dim=1, init_scale=0.0)
        n_id = len(id_columns)
        self.list_positions = tuple(int(p) for p in list_positions)
        self.list_offsets = self.table.offsets[n_id:]
        self.register_buffer("id_columns", torch.tensor(list(id_columns), dtype=torch.long), persistent=False)
        self.register_buffer("id_offsets", torch.tensor(self.table.offsets[:n_id], dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor, lists: Sequence[torch.Tensor]) -> torch.Tensor:
        """ids (B, S) int64, lists: (B, L_j) int64 0-padded -> wide logit (B,)."""
        parts = []
        if self.id_columns.numel():
            parts.append(self.table.global_rows(ids.index_select(1, self.id_columns), self.id_offsets))  # (B, Sw)
        for pos, off in zip(self.list_positions, self.list_offsets):
            parts.append(self.table.global_rows(lists[pos], off))  # (B, L)
        rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, K)
        return self.table(rows).sum(dim=(1, 2))  # (B, K, 1) -> (B,)
