"""Small serving batches without Arrow: Python token values to ids through a per-feature memo of the transform's own ids.

A ranking request holds a few hundred records; building Arrow arrays and running the vectorized hashing and vocabulary
lookup costs a fixed ~1 ms per feature at that size, most of a latency budget. Here each feature keeps a dict
token -> id (and token -> hash, for crosses) that is filled only by the vectorized path (`FeatureSet._token_ids`), on the
tokens it has not seen yet: ids are never decided twice, so the output is identical to the Arrow path's. Anything this
path does not know how to canonicalize exactly (booleans, floats, malformed values) returns None, and the caller runs
the Arrow path, which also raises its usual errors.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import pyarrow as pa

MEMO_LIMIT = 1 << 15  # tokens per feature (~250 bytes each); past it the memo starts over (user ids can be millions)
MEMO_CHARS = 1 << 21  # characters of those tokens per feature: long tokens fill the memo sooner, not its memory

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


def _arrays(ids: dict, hashes: dict, tokens: list, want_hashes: bool) -> tuple[np.ndarray, np.ndarray | None]:
    n = len(tokens)
    out = np.fromiter(map(ids.__getitem__, tokens), np.int32, n)
    h = np.fromiter(map(hashes.__getitem__, tokens), np.uint64, n) if want_hashes else None
    return out, h


def list_tokens(values: list) -> tuple[list, np.ndarray, np.ndarray] | None:
    """(flat elements, lengths (n,) int64, null (n,) bool) of a multi-valued column given as Python lists; null and
    empty-string elements are dropped as `columns.as_lists` drops them. None if a row is not a list or None."""
    n = len(values)
    lengths = np.zeros(n, np.int64)
    null = np.zeros(n, bool)
    flat: list = []
    for i, v in enumerate(values):
        if type(v) is list:  # noqa: E721
            kept = [x for x in v if x is not None and x != ""]
            flat += kept
            lengths[i] = len(kept)
        elif v is None:
            null[i] = True
        else:
            return None
    return flat, lengths, null
