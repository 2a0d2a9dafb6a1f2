"""The plan of one request shape (which features come from the candidates' columns, which from the context), made once
per shape and kept on the FeatureSet, by which `FeatureSet.transform_columns` encodes a request in a few whole-request
steps instead of a dozen numpy calls per feature.

At a few hundred candidates the number of numpy calls and of Python steps per value sets the cost, not the arithmetic.
So the candidates' scalar token columns go through their token memos in one pass, the context's tokens and the crosses
among them are Python ints (encoded once, broadcast by the assignment into the id matrix), and every continuous feature
goes through one FloatBlock, the candidates' columns (n values each) and the context's values (one each) together; the
id and dense matrices are written in place. Multi-valued features, and the crosses that involve one, a candidate column or a number,
take FeatureSet's general small-batch path. The encodings are that path's bit for bit (the same memos, FloatBlock and
hash functions). For anything else (a missing context field, a value of another type, a huge integer) `encode` returns
None and the caller runs the general path, which converts the value or raises its usual error.
"""

from __future__ import annotations

import operator
from itertools import chain
from typing import TYPE_CHECKING, Any, Collection, Mapping

import numpy as np

from widedeep.config import FeatureSpec
from widedeep.features.columnar import column_values
from widedeep.features.columns import EXACT_INT, FeatureError
from widedeep.features.cross import Tokens
from widedeep.features.encoded import Column, Encoded
from widedeep.features.hashing import BUCKET_SALT, combine_int, hash_ints
from widedeep.features.small import FloatBlock, lookup_columns
from widedeep.features.values import encode_tokens, encode_values

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet

PLANS_LIMIT = 64  # plans kept per FeatureSet (clients choose which fields are columns: bound the shapes kept)
_MISSING = object()
_NUMBERS = frozenset({float, int, type(None)})  # None and NaN mean missing; booleans and the rest go to the general path


def _slots(index: list[int]) -> slice | np.ndarray:
    """Columns of a matrix as a slice where they are evenly spaced (a plain strided copy), else as an index array."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if index and step > 0 and index == list(range(index[0], index[-1] + 1, step)):
        return slice(index[0], index[-1] + 1, step)
    return np.array(index, np.intp)


class RequestPlan:
    """How `fs` encodes a request whose candidates come as the columns `sources` (the rest from the context)."""

    def __init__(self, fs: FeatureSet, sources: Collection[str]):
        def token(f: FeatureSpec) -> bool:
            return f.type != "continuous" and not f.multi_valued

        spec = {f.name: f for f in fs.features}
        own = [c for c in fs.crosses if all(token(spec[n]) and spec[n].source not in sources for n in c.columns)]
        self.crosses = tuple(c for c in fs.crosses if c not in own)  # through the general path
        in_cross = {n for c in self.crosses for n in c.columns}
        self.columns = tuple(f for f in fs.features if token(f) and f.source in sources and f.name not in in_cross)
        self.crossed = tuple(f for f in fs.features if token(f) and f.source in sources and f.name in in_cross)
        self.context = tuple(f for f in fs.features if token(f) and f.source not in sources)
        self.lists = tuple(f for f in fs.features if f.multi_valued and f.source in sources)
        self.context_lists = tuple(f for f in fs.features if f.multi_valued and f.source not in sources)
        floats = [f for f in fs.features if f.type == "continuous"]  # in the dense matrix's order
        self.floats = (*(f for f in floats if f.source in sources), *(f for f in floats if f.source not in sources))
        self.k = sum(f.source in sources for f in floats)  # the block's first k features are columns, the rest one value
        self.sources = tuple(dict.fromkeys(f.source for f in fs.features if f.source in sources))
        self.column_sources = tuple(f.source for f in self.columns)
        self.context_sources = tuple(f.source for f in self.context)
        self.float_sources = tuple(f.source for f in self.floats)
        position = {f.name: j for j, f in enumerate(self.context)}
        self.own = tuple((c.buckets, tuple(position[n] for n in c.columns)) for c in own)
        self.float_crossed = tuple((j, f.name) for j, f in enumerate(self.floats) if f.name in in_cross)
        self.context_crossed = tuple((j, f.name) for j, f in enumerate(self.context) if f.name in in_cross)

        slot = {name: j for j, name in enumerate(fs.id_slots)}
        dense = {f.name: 2 * j for j, f in enumerate(floats)}  # the value's column; the null flag's is next
        self.width = len(fs.id_slots)
        self.column_slots = _slots([slot[f.name] for f in self.columns])
        self.context_slots = _slots([slot[f.name] for f in self.context]), _slots([slot[c.name] for c in own])
        parts = (self.floats[: self.k], self.floats[self.k :])
        self.float_slots = tuple(_slots([slot[f.name] for f in part]) for part in parts)
        self.value_slots = tuple(_slots([dense[f.name] for f in part]) for part in parts)
        self.null_slots = tuple(_slots([dense[f.name] + 1 for f in part]) for part in parts)
        general = (*(f.name for f in self.crossed), *(c.name for c in self.crosses))
        self.general_slots = tuple((slot[name], name) for name in general if name in slot)
        self.list_slots = fs.list_slots

        self.memos = [fs._memo(f) for f in self.columns]
        self.context_memos = [fs._memo(f) for f in self.context]
        self.block = FloatBlock([fs.quantiles_[f.name] for f in self.floats]) if self.floats else None
        self._vocabs = tuple(f.name for f in (*self.columns, *self.context) if f.type == "categorical")
        self._quantiles = tuple(f.name for f in self.floats)
        self.key = self._fitted(fs)

    def _fitted(self, fs: FeatureSet) -> tuple:
        """The fitted state the plan was made for, compared by identity (a refit or a loaded state replaces it)."""
        vocabs = map(operator.attrgetter("tokens_"), map(fs.vocabs_.__getitem__, self._vocabs))
        bounds = map(operator.attrgetter("boundaries_"), map(fs.quantiles_.__getitem__, self._quantiles))
        return (*vocabs, *bounds)

    def valid(self, fs: FeatureSet) -> bool:
        return all(map(operator.is_, self._fitted(fs), self.key))

    def encode(
        self, fs: FeatureSet, context: Mapping[str, Any], columns: Mapping[str, Any], n: int, strict: bool
    ) -> Encoded | None:
        """The request's encoding; None where the general path must run (see the module docstring)."""
        try:
            values = {s: v if type(v := columns[s]) is list else column_values(v, s) for s in self.sources}
        except FeatureError:  # a column of another dtype: the general path reports it in feature order
            return None
        ids = np.empty((n, self.width), np.int32)
        cols: dict[str, Column] = {}

        # Candidate token columns: one pass through their memos; the ones a cross needs, each with its hashes.
        if self.columns:
            block = lookup_columns(self.memos, list(map(values.__getitem__, self.column_sources)), n)
            if block is None:
                return None
            ids[:, self.column_slots] = block.T
        for f in self.crossed:
            col = encode_tokens(fs, f, values[f.source])
            if col is None:
                return None
            cols[f.name] = col

        # Context tokens and the crosses among them: Python ints, broadcast over the rows.
        row, hashes = [], []
        for source, memo in zip(self.context_sources, self.context_memos):
            found = memo.one(context.get(source, _MISSING))
            if found is None:  # missing (strict: an error; else None), or a value the memo leaves to Arrow
                return None
            row.append(found[0])
            hashes.append(found[1])
        for buckets, parts in self.own:
            if any(row[k] == 1 for k in parts):  # a missing part: the cross is missing
                row.append(1)
                continue
            h = hashes[parts[0]]
            for k in parts[1:]:
                h = combine_int(h, hashes[k])
            row.append(h % buckets + 3)
        if self.context:  # (two assignments: each is a plain strided copy where its slots are evenly spaced)
            ids[:, self.context_slots[0]] = row[: len(self.context)]
        if self.own:
            ids[:, self.context_slots[1]] = row[len(self.context) :]

        # Continuous features: the candidates' columns (k * n values) and the context's (one each) in one FloatBlock.
        dense = np.empty((n, 2 * len(self.floats)), np.float32)
        if self.block is not None:
            x = self._floats(context, [values[s] for s in self.float_sources[: self.k]], n)
            if x is None:
                return None
            k, m = self.k, len(self.floats) - self.k
            c, float_ids, value, null = self.block.encode_flat(x, (n,) * k + (1,) * m)  # c: bucket index i - 1
            if k:
                ids[:, self.float_slots[0]] = float_ids[: k * n].reshape(k, n).T
                dense[:, self.value_slots[0]] = value[: k * n].reshape(k, n).T
                dense[:, self.null_slots[0]] = null[: k * n].reshape(k, n).T
            if m:
                ids[:, self.float_slots[1]] = float_ids[k * n :]
                dense[:, self.value_slots[1]] = value[k * n :]
                dense[:, self.null_slots[1]] = null[k * n :]
            for j, name in self.float_crossed:
                at = slice(j * n, (j + 1) * n) if j < k else slice(k * n + j - k, k * n + j - k + 1)
                col = Column(float_ids[at], None, None, Tokens(hash_ints(c[at] + 1, BUCKET_SALT), None, null[at]))
                cols[name] = col if j < k else col.repeat(n)

        # The rest: multi-valued features, and the crosses with a list, a candidate column or a number in them.
        if self.context_lists:
            cols.update(fs._context(context, self.context_lists, n, strict))
        if self.lists:
            cols.update(encode_values(fs, self.lists, values.__getitem__))
        for j, name in self.context_crossed:
            cols[name] = Column(np.full(n, row[j], np.int32), None, None,
                                Tokens(np.full(n, hashes[j], np.uint64), None, np.full(n, row[j] == 1)))  # fmt: skip
        if self.crosses:
            fs._add_crosses(cols, [c for c in self.crosses if c.name not in cols])
        for j, name in self.general_slots:
            ids[:, j] = cols[name].ids
        lists = {name: (cols[name].ids, cols[name].offsets) for name in self.list_slots}
        return Encoded(ids=ids, dense=dense, lists=lists)

    def _floats(self, context: Mapping[str, Any], columns: list[list], n: int) -> np.ndarray | None:
        """The block's values: the k columns' (k * n), then the context's (one each), float64 with NaN for missing, as
        `columns.as_floats` gives them; None where the general path decides."""
        given = [context.get(s, _MISSING) for s in self.float_sources[self.k :]]
        kinds = set(map(type, given))
        if not kinds <= _NUMBERS:
            return None
        x = np.empty(self.k * n + len(given))
        if columns:
            block = _numbers(columns)
            if block is None:
                return None
            x[: self.k * n] = block.reshape(-1)
        if given:
            x[self.k * n :] = np.array(given, np.float64)  # None -> NaN
            if int in kinds and (np.abs(x[self.k * n :]) >= EXACT_INT).any():
                return None
        return x


def _numbers(columns: list[list]) -> np.ndarray | None:
    """(k, n) float64 of k lists of Python numbers (None -> NaN), as `columns.small_floats` converts them; None for
    anything else (a boolean, a string, an integer past 2**53), which the general path converts or reports.

    numpy's own type discovery checks the values in C; as it reads booleans as numbers, a block holding a 0 or a 1
    has its types checked again value by value."""
    try:
        a = np.array(columns)
    except (ValueError, TypeError, OverflowError):
        a = None
    if a is not None and a.ndim == 2 and a.dtype in (np.float64, np.int64):
        if not ((a == 0) | (a == 1) | (a >= EXACT_INT) | (a <= -EXACT_INT)).any():  # (NaN compares False)
            return a.astype(np.float64, copy=False)
    kinds = set(map(type, chain.from_iterable(columns)))
    if not kinds <= _NUMBERS:
        return None
    try:
        x = np.array(columns, np.float64)  # None -> NaN
    except (ValueError, TypeError, OverflowError):
        return None
    if int in kinds and (np.abs(x) >= EXACT_INT).any():
        return None
    return x
