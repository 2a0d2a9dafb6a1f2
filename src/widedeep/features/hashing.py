"""Stable 64-bit string hashing, vectorized over Arrow string buffers.

The hash of a token is FNV-1a 64 over its UTF-8 bytes followed by the splitmix64 finalizer (for avalanche, since
FNV's low bits are weak and bucket ids are taken modulo). It depends only on the bytes, so it is the same in every
process, on every machine and in every Python or library version; golden-value tests pin it.
Numbers are hashed through their canonical string form (``42`` and ``"42"`` agree), done by the callers' casts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

ALGORITHM = "fnv1a64+splitmix64"
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (arithmetic wraps modulo 2**64)."""
    h = np.asarray(h, dtype=np.uint64) + _GOLDEN
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (n+1,), data uint8) of a string array, honouring slices."""
    if pa.types.is_string_view(arr.type) or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 hash of every string in `arr` (a null hashes like the empty string; callers mask nulls)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    offsets, data = string_buffers(arr)
    starts, lengths = offsets[:-1], np.diff(offsets)
    # Longest strings first, so the strings still active at byte position j are a prefix: one vectorized step per position.
    order = np.argsort(-lengths, kind="stable")
    s, ln = starts[order], lengths[order]
    active = np.searchsorted(-ln, -np.arange(int(ln[0]) if n else 0), side="left")
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    for j, k in enumerate(active):
        h[:k] ^= data[s[:k] + j]
        h[:k] *= FNV_PRIME
    out = np.empty(n, np.uint64)
    out[order] = h
    return splitmix64(out)


def hash_ints(values: np.ndarray, salt: int) -> np.ndarray:
    """uint64 hash of small integers (e.g. quantile-bucket ids) under a salt."""
    return splitmix64(np.asarray(values, dtype=np.uint64) ^ splitmix64(np.array([salt], np.uint64)))


def combine(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two token hashes (one step of a k-way cross)."""
    return splitmix64(np.asarray(h1, np.uint64) * FNV_PRIME ^ splitmix64(np.asarray(h2, np.uint64)))


def bucket(h: np.ndarray, buckets: int) -> np.ndarray:
    """Slot id of a hash in a table of `buckets` (3 reserved ids first)."""
    return (np.asarray(h, np.uint64) % np.uint64(buckets)).astype(np.int32) + np.int32(3)
