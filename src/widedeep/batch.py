"""The encoded mini-batch that flows from data generation into the model: ids, padded lists, dense values, labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from widedeep.features.encoded import Encoded


@dataclass
class Batch:
    ids: torch.Tensor  # (B, S) int64: one column per single-valued sparse slot (FeatureSet.id_slots order)
    dense: torch.Tensor  # (B, C) float32: normalized continuous values and null indicators (FeatureSet.dense_names)
    lists: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, L) int64, right-padded with id 0
    label: torch.Tensor | None = None  # (B,) float32 in {0, 1}

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            ids=self.ids.to(device, non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            lists={k: v.to(device, non_blocking=non_blocking) for k, v in self.lists.items()},
            label=None if self.label is None else self.label.to(device, non_blocking=non_blocking),
        )

    @classmethod
    def from_encoded(cls, enc: Encoded, rows: np.ndarray | None = None) -> "Batch":
        """Gather `rows` (all rows if None) of an Encoded block into tensors; ragged lists become 0-padded matrices."""
        ids = enc.ids if rows is None else enc.ids[rows]
        dense = enc.dense if rows is None else enc.dense[rows]
        lists = {name: torch.from_numpy(pad_ragged(values, offsets, rows)) for name, (values, offsets) in enc.lists.items()}
        label = None
        if enc.label is not None:
            lab = enc.label if rows is None else enc.label[rows]
            label = torch.from_numpy(np.asarray(lab, dtype=np.float32))
        return cls(
            ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)),
            dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
            lists=lists,
            label=label,
        )


def pad_ragged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Ragged (values, offsets) -> (len(rows), max_len) int64 matrix right-padded with 0. Vectorized, no row loop."""
    starts = offsets[:-1] if rows is None else offsets[rows]
    ends = offsets[1:] if rows is None else offsets[np.asarray(rows) + 1]
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(ends - starts, dtype=np.int64)
    n, width = len(lengths), int(lengths.max(initial=0))
    out = np.zeros((n, max(width, 1)), dtype=np.int64)
    if width:
        col = np.arange(width, dtype=np.int64)
        mask = col[None, :] < lengths[:, None]  # (n, width)
        src = (starts[:, None] + col[None, :])[mask]
        out[mask] = values[src]
    return out
