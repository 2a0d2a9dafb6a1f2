"""Encoded rows: the output of the one transform, in memory or memory-mapped from a shard."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Encoded:
    ids: np.ndarray  # (N, S) int32: single-valued sparse slots, columns in FeatureSet.id_slots order
    dense: np.ndarray  # (N, C) float32: columns in FeatureSet.dense_names order
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (values int32 (nnz,), offsets int64 (N+1,))
    label: np.ndarray | None = None  # (N,) uint8

    def __len__(self) -> int:
        return self.ids.shape[0]
