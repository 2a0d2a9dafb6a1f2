"""Quantile normalization of a continuous feature: a mergeable sketch -> boundaries -> a value in [0, 1].

Two normalizations (`[features.x] normalization`):
- "interpolated" (the default): cut points at the ranks j/n_q of the values outside heavy point masses, plus those point
  masses themselves (a value holding more than 1/n_q of the rows), so that 90% zeros do not swallow the tail's cut points;
  a value then maps to (i - 1 + t)/n_b, where t in [0, 1] is its position between its bucket's lower and upper edge (the
  training minimum, the cut points, the training maximum). Order survives inside a bucket and past the last cut point;
  values outside the training range map to 0 and 1.
- "bucket": the paper's (i - 1)/(n_b - 1) over cut points at the ranks j/n_q of all values.
Both are functions of the merged statistics, so distributed prepare gives the one-process result, and the same code
normalizes in training and in serving.

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
NORMALIZATIONS = ("interpolated", "bucket")


class Quantiles:
    """Streaming quantile boundaries of one continuous feature (`partial_fit`, `merge`, `finalize`)."""

    def __init__(self, quantiles: int = 100, exact_limit: int = 1 << 20, normalization: str = "interpolated"):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.quantiles, self.exact_limit, self.normalization = quantiles, exact_limit, normalization
        self.reset()

    def reset(self) -> "Quantiles":
        self.count_, self.nulls_ = 0, 0
        self.min_, self.max_ = np.inf, -np.inf
        self._exact: list[np.ndarray] = []
        self._exact_n = 0
        self._sketch: kll_doubles_sketch | None = None
        self.boundaries_: np.ndarray | None = None
        self.top_share_ = 0.0  # the share of the values at the most common one (exact above 1/n_q), set by finalize
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
        self.top_share_ = 0.0
        if self.count_ == 0:
            cuts = np.zeros(0)
        else:
            quantile, below = self._cdf()
            cuts = quantile(ranks)
            candidates = np.unique(cuts)  # every value holding more than 1/n_q of the rows is among them
            lo, hi = below(candidates)
            self.top_share_ = float((hi - lo).max())
            if self.normalization == "interpolated":
                cuts = self._mass_aware_cuts(cuts, ranks, quantile, candidates, lo, hi)
        self.boundaries_ = np.unique(cuts[cuts > self.min_])
        return self

    def _cdf(self) -> tuple[Any, Any]:
        """(quantile(ranks) -> values, below(values) -> (rank of x < v, rank of x <= v)) of everything seen."""
        if self._sketch is None:
            x = np.sort(np.concatenate(self._exact))
            n = len(x)

            def quantile(r: np.ndarray) -> np.ndarray:  # the smallest x with at least r*n values <= x
                return x[np.clip(np.ceil(np.asarray(r) * n).astype(np.int64) - 1, 0, n - 1)]

            def below(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return np.searchsorted(x, v, "left") / n, np.searchsorted(x, v, "right") / n

            return quantile, below
        sk = self._sketch

        def quantile_sk(r: np.ndarray) -> np.ndarray:
            return np.asarray(sk.get_quantiles(np.clip(np.asarray(r, dtype=np.float64), 0.0, 1.0)), dtype=np.float64)

        def below_sk(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lo = np.array([sk.get_rank(float(u), False) for u in v])
            return lo, np.array([sk.get_rank(float(u), True) for u in v])

        return quantile_sk, below_sk

    def _mass_aware_cuts(
        self, cuts: np.ndarray, ranks: np.ndarray, quantile: Any, candidates: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """The point masses among `cuts` (values holding more than 1/n_q of the rows; `candidates` are the distinct cuts,
        `lo`/`hi` their ranks below and at them), plus cut points at the ranks j/n_q of the remaining values (their ranks
        mapped back past the masses)."""
        heavy = hi - lo > 1.0 / self.quantiles
        if not heavy.any():
            return cuts
        masses = sorted(zip(lo[heavy], hi[heavy]))
        rest = 1.0 - sum(h - lo_ for lo_, h in masses)
        r = ranks * rest  # ranks among the values outside the masses ...
        for lo_, h in masses:  # ... shifted past each mass they reach
            r = np.where(r >= lo_, r + (h - lo_), r)
        return np.concatenate([candidates[heavy], quantile(np.minimum(r, 1.0))])

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

    def normalize(self, x: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Values `x` in their 1-based buckets `i` -> float32 in [0, 1] by this feature's normalization (see the module
        docstring); a single bucket gives 0.0 under "bucket". Missing values give garbage; callers mask them."""
        nb = self.buckets
        if self.normalization == "bucket":
            return ((i - 1) / (nb - 1)).astype(np.float32) if nb > 1 else np.zeros(len(i), np.float32)
        if self.count_ == 0:  # nothing seen in training: every value is out of range
            return np.zeros(len(i), np.float32)
        edges = np.concatenate([[self.min_], self._require(), [max(self.max_, self.min_)]])
        lo, hi = edges[i - 1], edges[i]
        width = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(width > 0, (np.asarray(x, dtype=np.float64) - lo) / np.where(width > 0, width, 1.0), 0.0)
        return ((i - 1 + np.clip(t, 0.0, 1.0)) / nb).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        b = self._require()
        finite = self.count_ > 0
        return {
            "normalization": self.normalization,
            "boundaries": b.tolist(),
            "count": self.count_,
            "nulls": self.nulls_,
            "min": self.min_ if finite else None,
            "max": self.max_ if finite else None,
            "top_share": self.top_share_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], quantiles: int = 100) -> "Quantiles":
        q = cls(quantiles, normalization=d.get("normalization", "bucket"))  # files without the key predate "interpolated"
        b = np.asarray(d["boundaries"], dtype=np.float64)
        if b.ndim != 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError("quantile boundaries must be a strictly increasing list of finite numbers")
        q.boundaries_ = b
        q.count_, q.nulls_ = int(d.get("count", 0)), int(d.get("nulls", 0))
        q.min_ = np.inf if d.get("min") is None else float(d["min"])
        q.max_ = -np.inf if d.get("max") is None else float(d["max"])
        q.top_share_ = float(d.get("top_share", 0.0))
        return q
