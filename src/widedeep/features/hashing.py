"""Stable 64-bit string hashing, vectorized over Arrow string buffers.

The hash of a token is FNV-1a 64 over its UTF-8 bytes followed by the splitmix64 finalizer (for avalanche, since
FNV's low bits are weak and bucket ids are taken modulo). It depends only on the bytes, so it is the same in every
process, on every machine and in every Python or library version; golden-value tests pin it.
Numbers are hashed through their canonical string form (``42`` and ``"42"`` agree), done by the callers' casts.
The cost is O(total bytes) in a bounded number of numpy passes, however long the longest string.
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
_MASK, _FNV_OFFSET_INT, _FNV_PRIME_INT = (1 << 64) - 1, int(FNV_OFFSET), int(FNV_PRIME)  # the same constants as Python ints
_GOLDEN_INT, _M1_INT, _M2_INT = int(_GOLDEN), int(_M1), int(_M2)
BUCKET_SALT = 0x7175616E74  # salts the hash of a quantile-bucket id when a continuous feature enters a cross
HEAD_BYTES = 32  # positions always hashed one numpy step each (a prefix-scan pass costs about 30 steps)
LOOP_MIN_STRINGS = 128  # past HEAD_BYTES, a step per position pays while this many strings are still that long
SCAN_BYTES = 1 << 18  # bytes per prefix-scan pass (its temporaries take ~60 bytes per byte)


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
    # Longest strings first, so the strings still active at byte position j are a prefix.
    order = np.argsort(-lengths, kind="stable")
    s, ln = starts[order], lengths[order]
    # One numpy step per byte position for the first HEAD_BYTES positions and while at least LOOP_MIN_STRINGS strings
    # are that long; the few longer strings' remaining bytes go through the prefix scan, so that no string's length
    # sets the number of steps.
    stop = min(int(ln[0]), max(HEAD_BYTES, int(ln[LOOP_MIN_STRINGS - 1]) if n >= LOOP_MIN_STRINGS else 0))
    active = np.searchsorted(-ln, -np.arange(stop + 1), side="left")  # (stop + 1,) strings longer than j
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    for j, k in enumerate(active[:stop].tolist()):
        h[:k] ^= data[s[:k] + j]
        h[:k] *= FNV_PRIME
    rest = int(active[stop])
    if rest:
        h[:rest] = _fnv_tails(h[:rest], data, s[:rest] + stop, ln[:rest] - stop)
    out = np.empty(n, np.uint64)
    out[order] = h
    return splitmix64(out)


def hash_string(text: str) -> int:
    """`hash_strings` of one string, in plain Python: a few microseconds where a one-element array costs a hundred (one
    key per request on a server's request path)."""
    h = _FNV_OFFSET_INT
    for byte in text.encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * _FNV_PRIME_INT) & _MASK
    return splitmix64_int(h)


def splitmix64_int(h: int) -> int:
    """`splitmix64` of one Python int in [0, 2**64)."""
    h = (h + _GOLDEN_INT) & _MASK
    h = ((h ^ (h >> 30)) * _M1_INT) & _MASK
    h = ((h ^ (h >> 27)) * _M2_INT) & _MASK
    return h ^ (h >> 31)


def combine_int(h1: int, h2: int) -> int:
    """`combine` of two Python ints: a cross of one row (a request's context) without numpy's per-call cost."""
    return splitmix64_int(((h1 * _FNV_PRIME_INT) & _MASK) ^ splitmix64_int(h2))


def _fnv_tails(h: np.ndarray, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 continued from states `h` over data[starts[i] : starts[i] + lengths[i]] (all non-empty), in passes
    of about SCAN_BYTES: several strings per pass, or one string in several passes."""
    h = h.copy()
    ends = np.cumsum(lengths)
    i = 0
    while i < len(h):
        j = max(i + 1, int(np.searchsorted(ends, ends[i] - lengths[i] + SCAN_BYTES, side="right")))
        if j == i + 1:
            one, n = slice(i, i + 1), int(lengths[i])
            for a in range(0, n, SCAN_BYTES):
                h[one] = _fnv_scan(h[one], data, starts[one] + a, np.array([min(n - a, SCAN_BYTES)]))
        else:
            h[i:j] = _fnv_scan(h[i:j], data, starts[i:j], lengths[i:j])
        i = j
    return h


def _fnv_scan(h0: np.ndarray, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 from states `h0` over non-empty byte segments, with prefix scans instead of a loop over positions.

    One step is h' = (h ^ b) * P = (h + d) * P with d = ((h & 255) ^ b) - (h & 255), so after n bytes
    h_n = h_0 P^n + sum_j d_j P^(n-j) (mod 2^64): a weighted sum, once every d_j is known. d_j needs only the low byte
    s_j of h_j, and since P is odd, bit k of s_(j+1) = bit k of ((s_j ^ b_j) * P) is bit k of s_j ^ b_j, flipped by a
    function of the bits below k: each bit of s over all positions is one prefix XOR, given the bits below it.
    """
    n = len(lengths)
    first = np.zeros(n, np.int64)  # each segment's first position in the gathered bytes
    np.cumsum(lengths[:-1], out=first[1:])
    total = int(first[-1] + lengths[-1])
    pos = np.arange(total, dtype=np.int64)
    seg = np.repeat(np.arange(n), lengths)
    b = data[starts[seg] + (pos - first[seg])]  # (total,) uint8 bytes
    s0 = (h0 & np.uint64(0xFF)).astype(np.uint8)
    p_low = np.uint8(int(FNV_PRIME) & 0xFF)
    x = b.copy()  # s ^ b, completed one bit at a time
    for k in range(8):
        below = x & np.uint8((1 << k) - 1)  # bits < k of s ^ b are known
        flip = ((below * p_low) >> np.uint8(k)) & np.uint8(1)  # what the lower bits add to bit k of the product
        step = ((b >> np.uint8(k)) & np.uint8(1)) ^ flip  # bit k of s_(j+1) = bit k of s_j ^ step_j
        acc = np.bitwise_xor.accumulate(step) ^ step  # exclusive prefix XOR over all segments...
        acc ^= np.repeat(acc[first] ^ ((s0 >> np.uint8(k)) & np.uint8(1)), lengths)  # ...restarted at each one's start
        x ^= acc << np.uint8(k)
    s = x ^ b
    d = (x.astype(np.int64) - s.astype(np.int64)).astype(np.uint64)  # in [-255, 255], wrapped
    powers = np.empty(int(lengths.max()) + 1, np.uint64)  # P^0 .. P^max
    powers[0], powers[1:] = 1, FNV_PRIME
    np.multiply.accumulate(powers, out=powers)
    weighted = d * powers[np.repeat(first + lengths, lengths) - pos]  # d_j P^(n-j)
    return h0 * powers[lengths] + np.add.reduceat(weighted, first)


def hash_ints(values: np.ndarray, salt: int) -> np.ndarray:
    """uint64 hash of small integers (e.g. quantile-bucket ids) under a salt."""
    return splitmix64(np.asarray(values, dtype=np.uint64) ^ splitmix64(np.array([salt], np.uint64)))


def combine(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two token hashes (one step of a k-way cross)."""
    return splitmix64(np.asarray(h1, np.uint64) * FNV_PRIME ^ splitmix64(np.asarray(h2, np.uint64)))


def bucket(h: np.ndarray, buckets: int) -> np.ndarray:
    """Slot id of a hash in a table of `buckets` (3 reserved ids first)."""
    return (np.asarray(h, np.uint64) % np.uint64(buckets)).astype(np.int32) + np.int32(3)
