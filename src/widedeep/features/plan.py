"""The plan of one request shape (which features come from the candidates' columns, which from the context), made once
per shape and kept on the FeatureSet, by which `FeatureSet.transform_columns` encodes a request in a few whole-request
steps instead of a dozen numpy calls per feature.

At a few hundred candidates the number of numpy calls and of Python steps per value sets the cost, not the arithmetic.
So the candidates' scalar token columns go through their token memos in one pass, the context's tokens and the crosses
among them are Python ints (encoded once, broadcast by the assignment into the id matrix), and every continuous feature
goes through one FloatBlock over an (F, n) matrix into which the context's values are broadcast; the id and dense
matrices are written in place. Multi-valued features, and the crosses that involve one, a candidate column or a number,
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

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet

PLANS_LIMIT = 64  # plans kept per FeatureSet (clients choose which fields are columns: bound the shapes kept)
_MISSING = object()
_NUMBERS = frozenset({float, int, type(None)})  # None and NaN mean missing; booleans and the rest go to the general path


def _slots(index: list[int]) -> slice | np.ndarray:
    """Columns of a matrix as a slice where they are contiguous (a plain strided copy), else as an index array."""
    if index and index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
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
        self.floats = tuple(f for f in fs.features if f.type == "continuous")
        self.lists = tuple(f for f in fs.features if f.multi_valued and f.source in sources)
        self.context_lists = tuple(f for f in fs.features if f.multi_valued and f.source not in sources)
        position = {f.name: j for j, f in enumerate(self.context)}
        self.own = tuple((c.buckets, tuple(position[n] for n in c.columns)) for c in own)

        slot = {name: j for j, name in enumerate(fs.id_slots)}
        self.width = len(fs.id_slots)
        self.column_slots = _slots([slot[f.name] for f in self.columns])
        self.context_slots = _slots([slot[f.name] for f in self.context] + [slot[c.name] for c in own])
        self.float_slots = _slots([slot[f.name] for f in self.floats])
        self.general_slots = tuple((slot[name], name) for name in (*(f.name for f in self.crossed), *(c.name for c in self.crosses))
                                   if name in slot)  # fmt: skip
        self.list_slots = fs.list_slots
        self.float_columns = [j for j, f in enumerate(self.floats) if f.source in sources]
        self.float_context = [j for j, f in enumerate(self.floats) if f.source not in sources]
        self.float_column_rows, self.float_context_rows = _slots(self.float_columns), _slots(self.float_context)
        self.sources = tuple(dict.fromkeys(f.source for f in fs.features if f.source in sources))

        self.memos = [fs._memo(f) for f in self.columns]
        self.context_memos = [fs._memo(f) for f in self.context]
        self.block = FloatBlock([fs.quantiles_[f.name] for f in self.floats]) if self.floats else None
        self._vocabs = tuple(f.name for f in (*self.columns, *self.context) if f.type == "categorical")
        self.key = self._fitted(fs)

    def _fitted(self, fs: FeatureSet) -> tuple:
        """The fitted state the plan was made for, compared by identity (a refit or a loaded state replaces it)."""
        vocabs = map(operator.attrgetter("tokens_"), map(fs.vocabs_.__getitem__, self._vocabs))
        bounds = map(operator.attrgetter("boundaries_"), map(fs.quantiles_.__getitem__, (f.name for f in self.floats)))
        return (*vocabs, *bounds)

    def valid(self, fs: FeatureSet) -> bool:
        return all(map(operator.is_, self._fitted(fs), self.key))

    def encode(self, fs: FeatureSet, context: Mapping[str, Any], columns: Mapping[str, Any], n: int, strict: bool) -> Encoded | None:
        """The request's encoding; None where the general path must run (see the module docstring)."""
        try:
            values = {s: v if type(v := columns[s]) is list else column_values(v, s) for s in self.sources}
        except FeatureError:  # a column of another dtype: the general path reports it in feature order
            return None
        ids = np.empty((n, self.width), np.int32)
        cols: dict[str, Column] = {}

        # Candidate token columns: one pass through their memos; the ones a cross needs, each with its hashes.
        if self.columns:
            block = lookup_columns(self.memos, [values[f.source] for f in self.columns], n)
            if block is None:
                return None
            ids[:, self.column_slots] = block.T
        for f in self.crossed:
            col = fs._encode_small(f, values[f.source])
            if col is None:
                return None
            cols[f.name] = col

        # Context tokens and the crosses among them: Python ints, broadcast over the rows.
        row, hashes = [], []
        for f, memo in zip(self.context, self.context_memos):
            found = memo.one(context.get(f.source, _MISSING))
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
        if row:
            ids[:, self.context_slots] = row

        # Continuous features: the candidates' columns and the context's values in one (F, n) matrix.
        dense = np.empty((n, len(self.floats), 2), np.float32)
        if self.block is not None:
            x = self._floats(context, [values[self.floats[j].source] for j in self.float_columns], n)
            if x is None:
                return None
            i, float_ids, value, null = self.block.encode(x)  # (F, n) each
            ids[:, self.float_slots] = float_ids.T
            dense[:, :, 0] = value.T
            dense[:, :, 1] = null.T
            for j, f in enumerate(self.floats):
                if f.name in fs._in_cross:
                    cols[f.name] = Column(float_ids[j], None, None, Tokens(hash_ints(i[j], BUCKET_SALT), None, null[j]))

        # The rest: multi-valued features and the crosses with a list, a candidate column or a number in them.
        if self.context_lists:
            cols.update(fs._context(context, self.context_lists, n, strict))
        if self.lists:
            cols.update(fs._encode_values(self.lists, values.__getitem__))
        if self.crosses:
            for j, f in enumerate(self.context):
                if f.name in fs._in_cross:
                    cols[f.name] = Column(np.full(n, row[j], np.int32), None, None,
                                          Tokens(np.full(n, hashes[j], np.uint64), None, np.full(n, row[j] == 1)))  # fmt: skip
            fs._add_crosses(cols, [c for c in self.crosses if c.name not in cols])
        for j, name in self.general_slots:
            ids[:, j] = cols[name].ids
        lists = {name: (cols[name].ids, cols[name].offsets) for name in self.list_slots}
        return Encoded(ids=ids, dense=dense.reshape(n, 2 * len(self.floats)), lists=lists)

    def _floats(self, context: Mapping[str, Any], columns: list[list], n: int) -> np.ndarray | None:
        """(F, n) float64 values, NaN for missing, as `columns.as_floats` gives them; None where the general path decides."""
        given = [context.get(self.floats[j].source, _MISSING) for j in self.float_context]
        kinds = set(map(type, chain(given, chain.from_iterable(columns))))
        if not kinds <= _NUMBERS:
            return None
        x = np.empty((len(self.floats), n))
        try:
            if columns:
                x[self.float_column_rows] = np.array(columns, np.float64)  # None -> NaN
            if given:
                x[self.float_context_rows] = np.array(given, np.float64)[:, None]
        except (TypeError, ValueError, OverflowError):
            return None
        if int in kinds:  # Arrow refuses integers past float64's exact range: let the general path raise its error
            finite = x[~np.isnan(x)]
            if not (np.abs(finite) < EXACT_INT).all():
                return None
        return x
