"""Quantile normalization of a continuous feature: a mergeable sketch -> boundaries -> (i - 1)/(n_b - 1).

Values are kept exactly until `exact_limit` of them have been seen, so small and medium data get exact,
deterministic boundaries. Beyond that they move into a KLL sketch (datasketches, k=2000: normalized rank error
about 0.14% at 99% confidence; its compaction is randomized, so boundaries from very large data can differ
slightly between runs). NaN is a missing value; +/-inf are values that fall in the first/last bucket but are kept
out of the sketch. Cut points at ranks j/n_q (j = 1..n_q-1) are deduplicated and those not above the minimum are
dropped, so every bucket holds training data and a constant column has one bucket (normalized value 0.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

KLL_K = 2000


class Quantiles:
    """Streaming quantile boundaries of one continuous feature (`partial_fit`, `merge`, `finalize`)."""

    def __init__(self, quantiles: int = 100, exact_limit: int = 1 << 20):
        self.quantiles, self.exact_limit = quantiles, exact_limit
        self.reset()

    def reset(self) -> "Quantiles":
        self.count_, self.nulls_ = 0, 0
        self.min_, self.max_ = np.inf, -np.inf
        self._exact: list[np.ndarray] = []
        self._exact_n = 0
        self._sketch: kll_doubles_sketch | None = None
        self.boundaries_: np.ndarray | None = None
        return self

    def partial_fit(self, values: np.ndarray, nulls: int = 0) -> "Quantiles":
        """Add float64 values (missing ones already removed; `nulls` counts them)."""
        self.nulls_ += int(nulls)
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if not len(x):
            return self
        self.count_ += len(x)
        self.min_, self.max_ = min(self.min_, float(x.min())), max(self.max_, float(x.max()))
        if self._sketch is None and self._exact_n + len(x) <= self.exact_limit:
            self._exact.append(x)  # x is already a copy (boolean mask)
            self._exact_n += len(x)
        else:
            self._to_sketch().update(x)
        self.boundaries_ = None
        return self

    def _to_sketch(self) -> kll_doubles_sketch:
        if self._sketch is None:
            self._sketch = kll_doubles_sketch(KLL_K)
            for part in self._exact:
                self._sketch.update(part)
            self._exact, self._exact_n = [], 0
        return self._sketch

    def merge(self, other: "Quantiles") -> "Quantiles":
        """Add another part's statistics (exact values concatenate; sketches merge)."""
        self.count_ += other.count_
        self.nulls_ += other.nulls_
        self.min_, self.max_ = min(self.min_, other.min_), max(self.max_, other.max_)
        if self._sketch is None and other._sketch is None and self._exact_n + other._exact_n <= self.exact_limit:
            self._exact += other._exact
            self._exact_n += other._exact_n
        else:
            sk = self._to_sketch()
            for part in other._exact:
                sk.update(part)
            if other._sketch is not None:
                sk.merge(other._sketch)
        self.boundaries_ = None
        return self

    def finalize(self) -> "Quantiles":
        """Compute the boundaries from everything seen (no-op if nothing new since the last time, or since loading)."""
        if self.boundaries_ is not None:
            return self
        ranks = np.arange(1, self.quantiles) / self.quantiles
        if self.count_ == 0:
            cuts = np.zeros(0)
        elif self._sketch is None:
            x = np.sort(np.concatenate(self._exact))
            # The value at rank q: the smallest x with at least q*n values <= x (the empirical CDF's inverse).
            cuts = x[np.maximum(np.ceil(ranks * len(x)).astype(np.int64) - 1, 0)]
        else:
            cuts = np.asarray(self._sketch.get_quantiles(ranks), dtype=np.float64)
        self.boundaries_ = np.unique(cuts[cuts > self.min_])
        return self

    @property
    def buckets(self) -> int:
        """n_b: the number of distinct buckets (1 + number of boundaries)."""
        return len(self._require()) + 1

    def _require(self) -> np.ndarray:
        if self.boundaries_ is None:
            raise ValueError("quantiles are not fitted")
        return self.boundaries_

    def bucketize(self, x: np.ndarray) -> np.ndarray:
        """1-based bucket index i of each value (NaN gives garbage; callers mask missing values)."""
        return np.searchsorted(self._require(), x, side="right") + 1

    def normalize(self, i: np.ndarray) -> np.ndarray:
        """The paper's (i - 1)/(n_b - 1), as float32; 0.0 when there is a single bucket."""
        nb = self.buckets
        return ((i - 1) / (nb - 1)).astype(np.float32) if nb > 1 else np.zeros(len(i), np.float32)

    def to_dict(self) -> dict[str, Any]:
        b = self._require()
        finite = self.count_ > 0
        return {
            "boundaries": b.tolist(),
            "count": self.count_,
            "nulls": self.nulls_,
            "min": self.min_ if finite else None,
            "max": self.max_ if finite else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], quantiles: int = 100) -> "Quantiles":
        q = cls(quantiles)
        b = np.asarray(d["boundaries"], dtype=np.float64)
        if b.ndim != 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError("quantile boundaries must be a strictly increasing list of finite numbers")
        q.boundaries_ = b
        q.count_, q.nulls_ = int(d.get("count", 0)), int(d.get("nulls", 0))
        q.min_ = np.inf if d.get("min") is None else float(d["min"])
        q.max_ = -np.inf if d.get("max") is None else float(d["max"])
        return q
