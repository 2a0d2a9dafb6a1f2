"""k-way cross-products of token hashes, ragged-aware, and the small ragged-array helpers they need.

A cross of scalar features is one id per row: ``3 + combine(h_1, ..., h_k) % buckets``. With a multi-valued
component it is the Cartesian product of the rows' tokens (the paper's AND(user_installed_app=x, impression_app=y)
for every installed app x). A row where any component is missing (a null scalar or a null list) gets the single
id 1; an empty list gives an empty cross.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from widedeep.features.hashing import bucket, combine


@dataclass
class Tokens:
    """One feature's tokens over n rows, as stable hashes: what a cross is built from."""

    hashes: np.ndarray  # (nnz,) uint64; nnz == n for a scalar feature
    offsets: np.ndarray | None  # (n + 1,) int64 row starts for a multi-valued feature; None for a scalar one
    null: np.ndarray  # (n,) bool: the row's value is missing

    def repeat(self, n: int) -> "Tokens":
        """Broadcast a 1-row Tokens to n rows (a ranking request's context over its candidates)."""
        if self.offsets is None:
            return Tokens(np.repeat(self.hashes, n), None, np.repeat(self.null, n))
        values, offsets = repeat_ragged(self.hashes, self.offsets, n)
        return Tokens(values, offsets, np.repeat(self.null, n))


def lengths_of(offsets: np.ndarray) -> np.ndarray:
    return np.diff(offsets)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def repeat_ragged(values: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A 1-row ragged array repeated n times."""
    row = values[offsets[0] : offsets[1]]
    return np.tile(row, n), np.arange(n + 1, dtype=np.int64) * len(row)


def fill_rows(values: np.ndarray, offsets: np.ndarray, mask: np.ndarray, fill) -> tuple[np.ndarray, np.ndarray]:
    """Ragged copy where each row in `mask` is replaced by the single element `fill` (offsets start at 0)."""
    if not mask.any():
        return values, offsets
    lengths = lengths_of(offsets)
    new_off = offsets_of(np.where(mask, 1, lengths))
    out = np.empty(int(new_off[-1]), dtype=values.dtype)
    elem_row = np.repeat(np.arange(len(lengths)), lengths)
    keep = ~mask[elem_row]
    rows = elem_row[keep]
    dest = new_off[rows] + (np.flatnonzero(keep) - offsets[rows])
    out[dest] = values[keep]
    out[new_off[:-1][mask]] = fill
    return out, new_off


def _product(a: np.ndarray, a_off: np.ndarray, b: np.ndarray, b_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise Cartesian product of two ragged hash arrays, combined (a-major order)."""
    la, lb = lengths_of(a_off), lengths_of(b_off)
    out_off = offsets_of(la * lb)
    total = int(out_off[-1])
    row = np.repeat(np.arange(len(la)), la * lb)
    pos = np.arange(total, dtype=np.int64) - out_off[row]
    lbr = lb[row]
    return combine(a[a_off[row] + pos // lbr], b[b_off[row] + pos % lbr]), out_off


def cross(parts: list[Tokens], buckets: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Ids of a k-way cross: (n,) int32 if every part is scalar, else ragged (values int32, offsets int64)."""
    null = np.logical_or.reduce([p.null for p in parts])
    if all(p.offsets is None for p in parts):
        h = parts[0].hashes
        for p in parts[1:]:
            h = combine(h, p.hashes)
        ids = bucket(h, buckets)
        ids[null] = 1
        return ids
    n = len(null)
    ragged = []
    for p in parts:
        off = np.arange(n + 1, dtype=np.int64) if p.offsets is None else p.offsets
        ragged.append(fill_rows(p.hashes, off, null, np.uint64(0)))
    h, off = ragged[0]
    for b, b_off in ragged[1:]:
        h, off = _product(h, off, b, b_off)
    ids = bucket(h, buckets)
    ids[off[:-1][null]] = 1
    return ids, off
