"""Vocabulary of a categorical feature: streaming, mergeable counts; `min_count`; deterministic order; OOV.

Counting is exact (memory grows with the number of distinct values, not with rows). Tokens are ordered by descending
count, then by value (UTF-8 byte order), so the same data always gives the same ids: token i has id i + 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.features.columns import empty_entries
from widedeep.features.hashing import hash_strings

_EMPTY = pa.array([], pa.string())


class Vocabulary:
    """Counts tokens (`partial_fit`), merges counts (`merge`), and maps tokens to ids once `finalize`d."""

    def __init__(self, min_count: int = 1, max_size: int = 0):
        self.min_count, self.max_size = min_count, max_size
        self.reset()

    def reset(self) -> "Vocabulary":
        self._values: pa.Array = _EMPTY  # distinct tokens seen so far (unordered while fitting)
        self._counts: np.ndarray = np.zeros(0, np.int64)
        self._pending: list[tuple[pa.Array, np.ndarray]] = []  # batch counts not yet summed into _values/_counts
        self._pending_n = 0
        self.tokens_: pa.Array | None = None  # final vocabulary in id order
        return self

    @property
    def values_(self) -> pa.Array:
        self._compact()
        return self._values

    @values_.setter
    def values_(self, values: pa.Array) -> None:
        self._compact()
        self._values, self.tokens_ = values, None

    @property
    def counts_(self) -> np.ndarray:
        self._compact()
        return self._counts

    @counts_.setter
    def counts_(self, counts: np.ndarray) -> None:
        self._compact()
        self._counts, self.tokens_ = counts, None

    def partial_fit(self, dictionary: pa.Array, indices: np.ndarray) -> "Vocabulary":
        """Add counts of a dictionary-encoded batch: `indices` (valid rows only) point into the string `dictionary`."""
        counts = np.bincount(indices, minlength=len(dictionary)).astype(np.int64)
        keep = counts > 0
        empty = empty_entries(dictionary)
        if empty is not None:  # the empty string is a missing value, never a token
            keep &= ~empty
        self._add(dictionary.filter(pa.array(keep)), counts[keep])
        return self

    def merge(self, other: "Vocabulary") -> "Vocabulary":
        """Add another vocabulary's counts (exactly)."""
        self._add(other.values_, other.counts_)
        return self

    def _add(self, values: pa.Array, counts: np.ndarray) -> None:
        if len(values) == 0:
            return
        # Batches are summed in groups, not one by one: one group-by over many batches is much cheaper.
        self._pending.append((values.cast(pa.string()), counts))
        self._pending_n += len(values)
        self.tokens_ = None
        if self._pending_n > max(1 << 21, 2 * len(self._values)):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = ([(self._values, self._counts)] if len(self._values) else []) + self._pending
        self._pending, self._pending_n = [], 0
        values = pa.concat_arrays([v for v, _ in parts])
        counts = np.concatenate([c for _, c in parts])
        t = pa.table({"v": values, "c": counts}).group_by("v").aggregate([("c", "sum")])
        self._values, self._counts = t["v"].combine_chunks(), t["c_sum"].to_numpy()

    def finalize(self) -> "Vocabulary":
        """Drop tokens below `min_count`, order by (-count, value), keep at most `max_size` (no-op if nothing new)."""
        if self.tokens_ is not None:
            return self
        t = pa.table({"v": self.values_, "c": self.counts_})
        t = t.filter(pc.greater_equal(t["c"], self.min_count))
        t = t.take(pc.sort_indices(t, [("c", "descending"), ("v", "ascending")]))
        if self.max_size:
            t = t.slice(0, self.max_size)
        self._set_tokens(t["v"].combine_chunks(), t["c"].to_numpy())
        return self

    def _set_tokens(self, tokens: pa.Array, counts: np.ndarray) -> None:
        self.tokens_, self.token_counts_ = tokens, counts
        h = hash_strings(tokens)
        self._order = np.argsort(h, kind="stable")
        self._sorted = h[self._order]
        if len(h) > 1 and np.any(self._sorted[1:] == self._sorted[:-1]):
            i = int(np.flatnonzero(self._sorted[1:] == self._sorted[:-1])[0])
            a, b = tokens[int(self._order[i])].as_py(), tokens[int(self._order[i + 1])].as_py()
            raise ValueError(f"64-bit hash collision between vocabulary tokens {a!r} and {b!r}")

    @property
    def size(self) -> int:
        if self.tokens_ is None:
            raise ValueError("vocabulary is not fitted")
        return len(self.tokens_)

    def lookup(self, values: pa.Array, hashes: np.ndarray | None = None) -> np.ndarray:
        """int32 ids of string `values` (usually a batch's distinct values): 3.. in vocabulary, 2 otherwise."""
        if self.tokens_ is None:
            raise ValueError("vocabulary is not fitted")
        h = hash_strings(values) if hashes is None else hashes
        if len(self._sorted) == 0:
            return np.full(len(h), 2, np.int32)
        pos = np.minimum(np.searchsorted(self._sorted, h), len(self._sorted) - 1)
        idx = self._order[pos]
        found = self._sorted[pos] == h
        if found.any():  # confirm on the strings themselves, so a hash collision with an unseen value cannot alias
            values = values if values.type == pa.string() else values.cast(pa.string())
            same = pc.equal(self.tokens_.take(pa.array(idx)), values)
            found &= (same.fill_null(False) if same.null_count else same).to_numpy(zero_copy_only=False)
        return np.where(found, idx + 3, 2).astype(np.int32)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens_.to_pylist(), "counts": self.token_counts_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], min_count: int = 1, max_size: int = 0) -> "Vocabulary":
        v = cls(min_count, max_size)
        tokens, counts = d["tokens"], d["counts"]
        if len(tokens) != len(counts) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocabulary needs equal-length lists 'tokens' (strings) and 'counts'")
        v._set_tokens(pa.array(tokens, pa.string()), np.asarray(counts, np.int64))
        return v
