"""Encoded rows: the output of the one transform, in memory or memory-mapped from a shard; and one encoded feature."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from widedeep.features.cross import Tokens, repeat_ragged


@dataclass
class Encoded:
    ids: np.ndarray  # (N, S) int32: single-valued sparse slots, columns in FeatureSet.id_slots order
    dense: np.ndarray  # (N, C) float32: columns in FeatureSet.dense_names order
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (values int32 (nnz,), offsets int64 (N+1,))
    label: np.ndarray | None = None  # (N,) uint8

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class Column:
    """One encoded feature over n rows (ids for a scalar, ragged element ids for a list), plus what crosses need."""

    ids: np.ndarray
    offsets: np.ndarray | None = None
    dense: tuple[np.ndarray, np.ndarray] | None = None  # (normalized value, null indicator), float32
    tokens: Tokens | None = None

    def repeat(self, n: int) -> "Column":
        """A 1-row column broadcast to n rows (a request's context over its candidates)."""
        if self.offsets is None:
            ids, off = np.repeat(self.ids, n), None
        else:
            ids, off = repeat_ragged(self.ids, self.offsets, n)
        dense = None if self.dense is None else (np.repeat(self.dense[0], n), np.repeat(self.dense[1], n))
        return Column(ids, off, dense, None if self.tokens is None else self.tokens.repeat(n))
