"""Small serving batches without Arrow: Python values to ids through per-feature memos and whole-column numpy passes.

A ranking request holds a few hundred records; building Arrow arrays and running the vectorized hashing and vocabulary
lookup costs a fixed ~1 ms per feature at that size, most of a latency budget. Here each feature keeps a dict
token -> id (and token -> hash, for crosses) that is filled only by the vectorized path (`FeatureSet._token_ids`), on the
tokens it has not seen yet: ids are never decided twice, so the output is identical to the Arrow path's. Anything this
path does not know how to canonicalize exactly (booleans, floats, malformed values) returns None, and the caller runs
the Arrow path, which also raises its usual errors. Lists are flattened column at a time (`list_tokens`), and the
continuous features of a request are bucketized and normalized together (`FloatBlock`): at this size the number of
numpy calls, not the arithmetic, sets the cost."""

from __future__ import annotations

import operator
import struct
import threading
from bisect import bisect_right
from itertools import accumulate, chain, repeat
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from widedeep.features.quantile import Quantiles

MEMO_LIMIT = 1 << 15  # tokens per feature (~250 bytes each); past it the memo starts over (user ids can be millions)
MEMO_CHARS = 1 << 21  # characters of those tokens per feature: long tokens fill the memo sooner, not its memory

BLOCKS_LIMIT = 64  # FloatBlocks kept per FeatureSet (one per set of continuous features encoded together)
LAYOUTS_LIMIT = 64  # ragged layouts (request sizes) kept per FloatBlock

TokenIds = Callable[[pa.Array], tuple[np.ndarray, np.ndarray]]  # distinct tokens -> (ids int32, hashes uint64)


class TokenMemo:
    """token -> id and token -> hash for one feature, as the vectorized transform computes them (None -> id 1, hash 0)."""

    def __init__(self, key: object, compute: TokenIds):
        self.key, self._compute = key, compute  # key: the fitted state this memo is valid for (compared by identity)
        self._ids: dict[Any, int] = {None: 1}
        self._hashes: dict[Any, int] = {None: 0}
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, tokens: list, want_hashes: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(ids int32, hashes uint64 or None) of `tokens` (str or None; int as its decimal string); None if some
        token is of another type (the caller then takes the Arrow path)."""
        for _ in range(3):  # at most: ints to strings, then new tokens added, then found
            try:
                return self._get(tokens, want_hashes)
            except KeyError:
                pass
            except TypeError:  # an unhashable value (a list, an object): the Arrow path reports it
                return None
            new = [t for t in dict.fromkeys(tokens) if t not in self._ids]
            if not all(type(t) is str for t in new):  # noqa: E721 -- exact type: bool is an int, str subclasses are rare
                if not all(type(t) in (str, int) for t in new):  # noqa: E721
                    return None
                tokens = [str(t) if type(t) is int else t for t in tokens]  # noqa: E721 -- Arrow casts ints the same way
                continue
            self._add(new)
        # Only if another thread emptied the memo in between: compute without it.
        given = [t for t in dict.fromkeys(tokens) if t is not None]
        ids, hashes = self._compute(pa.array(given, pa.string()))
        local_ids, local_h = {None: 1, **dict(zip(given, ids.tolist()))}, {None: 0, **dict(zip(given, hashes.tolist()))}
        return _arrays(local_ids, local_h, tokens, want_hashes)

    def _get(self, tokens: list, want_hashes: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return _arrays(self._ids, self._hashes, tokens, want_hashes)

    def one(self, token: Any) -> tuple[int, int] | None:
        """(id, hash) of one token, as `lookup` gives them, without its arrays (a request's context); None as in `lookup`."""
        if type(token) is int:  # noqa: E721 -- as `lookup` converts it (a bool is not an int here)
            token = str(token)
        try:  # both are functions of the token alone, so a memo reset in between changes nothing
            return self._ids[token], self._hashes[token]
        except (KeyError, TypeError):
            pass
        found = self.lookup([token], True)
        return None if found is None else (int(found[0][0]), int(found[1][0]))  # type: ignore[index]

    def _add(self, new: list[str]) -> None:
        if not new:
            return
        ids, hashes = self._compute(pa.array(new, pa.string()))
        chars = sum(map(len, new))
        with self._lock:
            if len(self._ids) + len(new) > MEMO_LIMIT or self._chars + chars > MEMO_CHARS:
                self._ids, self._hashes, self._chars = {None: 1}, {None: 0}, 0
            self._chars += chars
            self._hashes.update(zip(new, hashes.tolist()))  # hashes first: a token with an id always has its hash
            self._ids.update(zip(new, ids.tolist()))


def _packed(table: dict, tokens: Sequence, code: str) -> bytes:
    """table[t] of every token, packed as C values of struct `code` ("i": int32, "Q": uint64; native order): itemgetter
    looks them all up and struct converts them, both in C loops, where numpy would convert Python ints one call at a
    time. KeyError for a token not in `table`."""
    if len(tokens) == 1:  # itemgetter of one key gives the value, not a tuple
        return struct.pack(code, table[tokens[0]])
    return struct.pack(f"{len(tokens)}{code}", *operator.itemgetter(*tokens)(table)) if tokens else b""


def _arrays(ids: dict, hashes: dict, tokens: list, want_hashes: bool) -> tuple[np.ndarray, np.ndarray | None]:
    h = np.frombuffer(bytearray(_packed(hashes, tokens, "Q")), np.uint64) if want_hashes else None
    return np.frombuffer(bytearray(_packed(ids, tokens, "i")), np.int32), h


def lookup_columns(memos: Sequence[TokenMemo], columns: Sequence[list], n: int) -> np.ndarray | None:
    """(k, n) int32 ids of k token columns of n values each, column j through memos[j]: one pass over all k * n tokens when
    the memos know them all (the steady state of a server), else column by column through `lookup`; None as in `lookup`."""
    k = len(memos)
    try:
        packed = b"".join([_packed(m._ids, values, "i") for m, values in zip(memos, columns)])
        return np.frombuffer(packed, np.int32).reshape(k, n)
    except (KeyError, TypeError):  # a token seen for the first time, an integer, or a value the memo leaves to Arrow
        pass
    out = np.empty((k, n), np.int32)
    for j, (memo, values) in enumerate(zip(memos, columns)):
        found = memo.lookup(values, False)
        if found is None:
            return None
        out[j] = found[0]
    return out


def list_tokens(values: list) -> tuple[list, np.ndarray, np.ndarray] | None:
    """(flat elements, lengths (n,) int64, null (n,) bool) of a multi-valued column given as Python lists, null and
    empty-string elements included (they get id 1, by which the caller drops them as `columns.as_lists` drops them).
    None if a row is not a list or None. Column at a time: each step is one C-level pass over the rows or elements."""
    n = len(values)
    kinds = set(map(type, values))
    if not kinds <= {list, type(None)}:
        return None
    if type(None) in kinds:
        null = np.fromiter(map(operator.is_, values, repeat(None)), bool, n)
        lengths = np.fromiter(map(operator.length_hint, values), np.int64, n)  # None -> 0
    else:
        null = np.zeros(n, bool)
        lengths = np.fromiter(map(len, values), np.int64, n)
    return list(chain.from_iterable(filter(None, values))), lengths, null


class FloatBlock:
    """Bucket indices, normalized values and null flags of several continuous features at once, from an (F, n) matrix.

    On a few hundred rows the numpy calls of `Quantiles.bucketize` and `Quantiles.normalize` cost more than their
    arithmetic, so doing them once for all F features instead of once per feature is most of the saving. The results are
    theirs bit for bit: the same float64 operations, elementwise (tests/test_features_small.py compares them).
    """

    def __init__(self, quantiles: Sequence[Quantiles]):
        self.key = tuple(q.boundaries_ for q in quantiles)  # the fitted state this block is valid for (by identity)
        self._bounds = list(self.key)
        self._lists = [b.tolist() for b in self._bounds]  # for `bisect` on single values
        edges = [np.concatenate([[q.min_], q.boundaries_, [max(q.max_, q.min_)]]) for q in quantiles]
        self._starts = np.cumsum([0] + [len(e) for e in edges[:-1]]).astype(np.int64)  # feature j's first edge
        self._nb = np.array([q.buckets for q in quantiles], np.int64)
        bucket = [q.normalization == "bucket" and q.buckets > 1 for q in quantiles]
        zero = [(q.normalization == "bucket" and q.buckets == 1) or (q.normalization != "bucket" and q.count_ == 0)
                for q in quantiles]  # fmt: skip
        self._bucket = [j for j, b in enumerate(bucket) if b]
        self._zero = [j for j, z in enumerate(zero) if z]
        # Per bucket g (edges index of its lower edge): lower edge, width (1.0 where empty) and whether it is not empty, so
        # that a value's t = (x - lower) / width takes three gathers. A feature that saw no values has infinite edges (and
        # value 0.0): zeros there keep inf - inf from the arithmetic.
        e = np.concatenate([np.zeros(len(x)) if z else x for x, z in zip(edges, zero)]) if edges else np.zeros(1)
        width = np.append(e[1:] - e[:-1], 0.0)
        self._lower, self._nonempty = e, width > 0
        self._width = np.where(self._nonempty, width, 1.0)
        # Whether some feature (with values) has an empty bucket: its last one, where the maximum is a cut point, or its
        # only one, for a constant column; else the mask of `encode_flat` is skipped.
        self._empty = any(not z and bool((np.diff(x) <= 0).any()) for x, z in zip(edges, zero))
        self._layouts: dict[tuple[int, ...], tuple[list[slice], np.ndarray, np.ndarray]] = {}

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bucket index i int64, id int32, normalized value float32, null bool), each (F, n), of values `x` (F, n)
        float64 with NaN for missing: a missing value has id 1, value 0.0 and a garbage i."""
        f, n = x.shape
        c, ids, value, null = self.encode_flat(x.reshape(-1), (n,) * f)
        return (c + 1).reshape(f, n), ids.reshape(f, n), value.reshape(f, n), null.reshape(f, n)

    def encode_flat(self, x: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`encode` of ragged values, but with i - 1 for i: x float64 holds counts[j] values of feature j after those of the
        features before it (a request's candidate columns, then its context's single values); the results are laid out
        alike. Single values at the end are searched by `bisect` (it finds what searchsorted does), not a numpy call each."""
        segments, starts, nb, tail = self._layout(tuple(counts))
        found = [b.searchsorted(x[s], side="right") for b, s in zip(self._bounds[:tail], segments[:tail])]
        if tail < len(counts):
            found.append(np.array(list(map(bisect_right, self._lists[tail:], x[segments[tail].start :].tolist())), np.int64))
        c = np.concatenate(found)  # i - 1: how many boundaries are <= x
        null = np.isnan(x)
        g = c + starts
        t = (x - self._lower.take(g)) / self._width.take(g)
        if self._empty:
            t = np.where(self._nonempty.take(g), t, 0.0)  # a NaN x (garbage) is masked below
        np.maximum(t, 0.0, out=t)
        np.minimum(t, 1.0, out=t)
        value = ((c + t) / nb).astype(np.float32)
        for j in self._bucket:
            s = segments[j]
            value[s] = (c[s] / (self._nb[j] - 1)).astype(np.float32)
        for j in self._zero:
            value[segments[j]] = 0.0
        ids = np.add(c, 3, dtype=np.int32)
        if null.any():
            value[null] = 0.0
            ids[null] = 1
        return c, ids, value, null

    def _layout(self, counts: tuple[int, ...]) -> tuple[list[slice], np.ndarray, np.ndarray, int]:
        """Each feature's segment of a ragged x, each value's first edge index and number of buckets, and where the
        trailing run of single values starts."""
        layout = self._layouts.get(counts)
        if layout is None:
            if len(self._layouts) >= LAYOUTS_LIMIT:
                self._layouts = {}
            ends = list(accumulate(counts))
            segments = [slice(a, b) for a, b in zip([0, *ends[:-1]], ends)]
            tail = len(counts)
            while tail and counts[tail - 1] == 1:
                tail -= 1
            layout = (segments, np.repeat(self._starts, counts), np.repeat(self._nb, counts), tail)
            self._layouts[counts] = layout
        return layout
