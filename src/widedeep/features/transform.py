"""FeatureSet: THE transform from raw columns to model ids and values, shared by training, evaluation and serving.

`fit`/`partial_fit`/`merge` learn vocabularies and quantile boundaries in streaming passes; `transform` encodes an
Arrow table or record batch; `transform_records` and `transform_request` (serving) build an Arrow table from Python
records and run the very same code. Ids follow docs/design.md: 0 pad, 1 missing, 2 out of vocabulary, 3.. values.
Serving input: a missing field is an error by default (`strict=True`); None, and NaN for a number, mean missing;
unknown categorical values are not errors (they get the OOV id).
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from widedeep.config import EMBED_BUCKETS_SHARE, Config, CrossSpec, FeatureSpec
from widedeep.features import columns as C
from widedeep.features.columnar import column_length, column_values
from widedeep.features.columns import FeatureError
from widedeep.features.cross import Tokens, cross, fill_rows
from widedeep.features.encoded import Column, Encoded
from widedeep.features.hashing import BUCKET_SALT, bucket, hash_ints, hash_strings
from widedeep.features.plan import PLANS_LIMIT, RequestPlan
from widedeep.features.quantile import Quantiles
from widedeep.features.small import FloatBlock, TokenMemo
from widedeep.features.values import encode_values, kind
from widedeep.features.vocab import Vocabulary

FORMAT, VERSION = "widedeep.features", 1
_STACK_ROWS = 16384  # rows per block of _stack_columns
SMALL_BATCH = 4096  # records up to this many skip Arrow: token ids come from a memo of this transform's own ids


def _map(pool: Executor | None, fn: Callable, items: Sequence) -> list:
    return list(pool.map(fn, items)) if pool is not None else [fn(x) for x in items]


def _stack_columns(cols: list[np.ndarray], dtype, n: int) -> np.ndarray:
    """(n, len(cols)) row-major matrix from columns, filled in row blocks that stay in cache (strided writes are slow).
    One `np.stack` per block keeps the GIL released for most of the work (a column-by-column loop would contend)."""
    if cols and n <= SMALL_BATCH:  # a request: one concatenation and one transposing copy cost less than np.stack's calls
        return np.ascontiguousarray(np.concatenate(cols, dtype=dtype, casting="unsafe").reshape(len(cols), n).T)
    out = np.empty((n, len(cols)), dtype)
    if not cols:
        return out
    for r in range(0, n, _STACK_ROWS):
        block = [c[r : r + _STACK_ROWS] for c in cols]
        np.stack(block, axis=1, out=out[r : r + _STACK_ROWS], casting="unsafe")
    return out


class FeatureSet:
    """Vocabularies, quantile boundaries and hash parameters for every feature and cross of a config."""

    def __init__(self, features: Sequence[FeatureSpec], crosses: Sequence[CrossSpec] = (), label: str | None = None):
        self.features, self.crosses, self.label = tuple(features), tuple(crosses), label
        self._spec = {f.name: f for f in self.features}
        if len(self._spec) != len(self.features):
            raise ValueError(f"duplicate feature names in {[f.name for f in self.features]}")
        for c in self.crosses:
            if c.name in self._spec:
                raise ValueError(f"cross {c.name!r} has the same name as a feature")
            for name in c.columns:
                if name not in self._spec:
                    raise ValueError(f"cross {c.name!r} names unknown feature {name!r}")
        for f in self.features:
            if f.type == "hashed" and f.buckets < 1:
                raise ValueError(f"hashed feature {f.name!r} needs buckets >= 1, got {f.buckets}")
        self._in_cross = {n for c in self.crosses for n in c.columns}
        self._input_columns = tuple(dict.fromkeys(f.source for f in self.features))
        ragged = {c.name for c in self.crosses if any(self._spec[n].multi_valued for n in c.columns)}
        scalar = [f.name for f in self.features if not f.multi_valued]
        self._id_slots = tuple(scalar + [c.name for c in self.crosses if c.name not in ragged])
        multi = [f.name for f in self.features if f.multi_valued]
        self._list_slots = tuple(multi + [c.name for c in self.crosses if c.name in ragged])
        self.reset()

    @classmethod
    def from_config(cls, cfg: Config) -> "FeatureSet":
        return cls(cfg.features, cfg.crosses, cfg.data.label)

    # ---- layout ------------------------------------------------------------------------------------------------------

    @property
    def id_slots(self) -> tuple[str, ...]:
        """Single-valued sparse slots (columns of Encoded.ids): scalar features, then crosses of scalar features."""
        return self._id_slots

    @property
    def list_slots(self) -> tuple[str, ...]:
        """Ragged slots (Encoded.lists): multi-valued features, then crosses with a multi-valued component."""
        return self._list_slots

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(n for f in self.features if f.type == "continuous" for n in (f.name, f"{f.name}__null"))

    @property
    def bucket_embedded(self) -> frozenset[str]:
        """Continuous features whose quantile bucket the deep part embeds beside the value: `embed_buckets = true`, or
        "auto" where one value holds at least EMBED_BUCKETS_SHARE of the training values (a zero-inflated amount)."""
        self._finalize()
        return frozenset(
            f.name
            for f in self.features
            if f.type == "continuous"
            and (f.embed_buckets is True or (f.embed_buckets == "auto" and self.quantiles_[f.name].top_share_ >= EMBED_BUCKETS_SHARE))
        )

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self._input_columns

    @property
    def cardinality(self) -> dict[str, int]:
        """Table size of every slot, the 3 reserved ids included."""
        self._finalize()
        out = {}
        for f in self.features:
            if f.type == "categorical":
                out[f.name] = 3 + self.vocabs_[f.name].size
            elif f.type == "hashed":
                out[f.name] = 3 + f.buckets
            else:
                out[f.name] = 3 + self.quantiles_[f.name].buckets
        out.update({c.name: 3 + c.buckets for c in self.crosses})
        return out

    @property
    def fingerprint(self) -> str:
        """The prepare fingerprint (feature config + input files) this FeatureSet was fitted under; "" when fitted by hand."""
        return str(self.info_.get("fingerprint", ""))

    def vocabulary(self, name: str) -> list[str]:
        """Tokens of a categorical feature in id order (token i has id i + 3)."""
        if name not in self.vocabs_:
            raise KeyError(f"{name!r} is not a categorical feature")
        self._finalize()
        return self.vocabs_[name].tokens_.to_pylist()

    def boundaries(self, name: str) -> np.ndarray:
        """Quantile boundaries of a continuous feature."""
        self._finalize()
        return self.quantiles_[name].boundaries_

    def read_types(self) -> dict[str, pa.DataType]:
        """Column types to read CSV files with: token columns stay strings (so "007" is not read as 7), continuous
        ones are numbers. Pass them as `iter_batches(..., types=...)` wherever CSV data meets this FeatureSet."""
        return {f.source: pa.float64() if f.type == "continuous" else pa.string() for f in self.features}

    # ---- fitting -----------------------------------------------------------------------------------------------------

    def reset(self) -> "FeatureSet":
        self.vocabs_ = {f.name: Vocabulary(f.min_count, f.max_size) for f in self.features if f.type == "categorical"}
        self.quantiles_ = {f.name: Quantiles(f.quantiles, normalization=f.normalization) for f in self.features if f.type == "continuous"}
        self.rows_, self.info_, self._dirty = 0, {}, True
        self._memos: dict[str, TokenMemo] = {}
        self._blocks: dict[tuple[str, ...], FloatBlock] = {}
        self._plans: dict[tuple[str, ...], RequestPlan] = {}
        return self

    def fit(self, batches: Iterable[pa.Table | pa.RecordBatch] | pa.Table | pa.RecordBatch) -> "FeatureSet":
        self.reset()
        for b in [batches] if isinstance(batches, (pa.Table, pa.RecordBatch)) else batches:
            self.partial_fit(b)
        self._finalize()
        return self

    def partial_fit(self, batch: pa.Table | pa.RecordBatch, pool: Executor | None = None) -> "FeatureSet":
        """Add one batch's statistics (label values are checked here too, so bad labels fail in the first pass).
        With `pool`, features are processed in parallel threads (Arrow and numpy release the GIL)."""
        self._check_columns(batch)
        if self.label and self.label in batch.column_names:
            C.as_label(batch.column(self.label), self.label)
        _map(pool, lambda f: self._fit_feature(f, batch.column(f.source)), self.features)
        self.rows_ += batch.num_rows
        self._dirty = True
        return self

    def _fit_feature(self, f: FeatureSpec, col: pa.Array | pa.ChunkedArray) -> None:
        if f.type == "categorical":
            s = C.as_lists(col, f.source, f.delimiter).elements if f.multi_valued else C.as_strings(col, f.source)
            self.vocabs_[f.name].partial_fit(s.dictionary, s.indices[s.indices >= 0])
        elif f.type == "continuous":
            x = C.as_floats(col, f.source)
            ok = ~np.isnan(x)
            self.quantiles_[f.name].partial_fit(x[ok], nulls=len(x) - int(ok.sum()))
        elif f.multi_valued:
            C.as_lists(col, f.source, f.delimiter)  # hashed: nothing to learn, but check the dtype in this pass
        else:
            C.as_strings(col, f.source)

    def merge(self, other: "FeatureSet") -> "FeatureSet":
        """Add the statistics another FeatureSet (same specs) gathered on another part of the data."""
        if (self.features, self.crosses, self.label) != (other.features, other.crosses, other.label):
            raise ValueError("cannot merge FeatureSets with different features, crosses or label")
        for name, v in self.vocabs_.items():
            v.merge(other.vocabs_[name])
        for name, q in self.quantiles_.items():
            q.merge(other.quantiles_[name])
        self.rows_ += other.rows_
        self._dirty = True
        return self

    def _finalize(self) -> None:
        if self._dirty:
            for v in self.vocabs_.values():
                v.finalize()
            for q in self.quantiles_.values():
                q.finalize()
            self._memos, self._blocks, self._plans, self._dirty = {}, {}, {}, False

    # ---- transforming ------------------------------------------------------------------------------------------------

    def _check_columns(self, table: pa.Table | pa.RecordBatch) -> None:
        have = set(table.column_names)
        for name in self.input_columns:
            if name not in have:
                raise FeatureError(name, f"missing column {name!r} (columns: {sorted(have)})")

    def transform(self, table: pa.Table | pa.RecordBatch, pool: Executor | None = None) -> Encoded:
        """Encode rows (label included when the label column is present); `pool` encodes features in parallel."""
        self._finalize()
        self._check_columns(table)
        encoded = _map(pool, lambda f: self._encode(f, table.column(f.source)), self.features)
        cols = {f.name: c for f, c in zip(self.features, encoded)}
        label = None
        if self.label and self.label in table.column_names:
            label = C.as_label(table.column(self.label), self.label)
        return self._assemble(cols, table.num_rows, label, pool)

    def transform_records(self, records: Sequence[Mapping[str, Any]], strict: bool = True) -> Encoded:
        """The serving path: records (field -> value) through the same transform; no label."""
        self._finalize()
        return self._assemble(self._encode_records(records, self.features, strict), len(records), None)

    def transform_request(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], strict: bool = True
    ) -> Encoded:
        """A ranking request: context features encoded once and broadcast over the candidates.

        Equals `transform_records([{**context, **c} for c in candidates])`; a field present in the first candidate is
        read from every candidate, any other from the context.
        """
        self._finalize()
        n = len(candidates)
        if n == 0:
            return self.transform_records([])
        if n <= SMALL_BATCH and isinstance(candidates[0], Mapping):  # the candidates' fields as columns (one C-level pass)
            given = C.record_columns(candidates, [s for s in self.input_columns if s in candidates[0]])
            encoded = None if given is None else self._plan(given).encode(self, context, given, n, strict)
            if encoded is not None:
                return encoded
        own = set(candidates[0])
        ctx = [f for f in self.features if f.source not in own]
        cand = [f for f in self.features if f.source in own]
        cols = self._context(context, ctx, n, strict)
        cols.update(self._encode_records(candidates, cand, strict))
        return self._assemble(cols, n, None)

    def transform_columns(
        self, context: Mapping[str, Any], columns: Mapping[str, Sequence[Any]], strict: bool = True
    ) -> Encoded:
        """A ranking request whose candidates come as columns: field -> one value per candidate, all of one length.

        Equals `transform_request(context, rows)` of the same values; a field that is not a column is read from the
        context. Each column is encoded whole (widedeep.features.columnar); errors name the field and the row.
        """
        self._finalize()
        n = column_length(columns)
        if n == 0:
            return self.transform_records([])
        encoded = self._plan(columns).encode(self, context, columns, n, strict)
        if encoded is not None:
            return encoded
        # The general path. The context's continuous values join the columns' in one FloatBlock.
        ctx = [f for f in self.features if f.source not in columns and f.type != "continuous"]
        cols = self._context(context, ctx, n, strict)

        def values_of(source: str) -> list:
            return column_values(columns[source], source) if source in columns else C.record_values([context], source, strict)

        rest = [f for f in self.features if f.source in columns or f.type == "continuous"]
        cols.update(encode_values(self, rest, values_of, n))
        return self._assemble(cols, n, None)

    def _plan(self, columns: Mapping[str, Any]) -> RequestPlan:
        """The plan of requests with these columns (made on first use; remade if the fitted state changed since)."""
        key = tuple(columns)
        plan = self._plans.get(key)
        if plan is None or not plan.valid(self):
            if len(self._plans) >= PLANS_LIMIT:
                self._plans = {}
            plan = self._plans[key] = RequestPlan(self, {s for s in self.input_columns if s in columns})
        return plan

    def _encode_records(self, records: Sequence[Mapping[str, Any]], feats: Sequence[FeatureSpec], strict: bool) -> dict:
        if len(records) > SMALL_BATCH:
            kinds = {f.source: kind(f) for f in feats}
            table = C.from_records(records, kinds, strict)
            return {f.name: self._encode(f, table.column(f.source)) for f in feats}
        given = C.record_columns(records, list(dict.fromkeys(f.source for f in feats)))
        if given is not None:
            return encode_values(self, feats, given.__getitem__)
        return encode_values(self, feats, lambda source: C.record_values(records, source, strict))

    def _memo(self, f: FeatureSpec) -> TokenMemo:
        key = self.vocabs_[f.name].tokens_ if f.type == "categorical" else None  # a hashed feature's ids never change
        memo = self._memos.get(f.name)
        if memo is None or memo.key is not key:  # a vocabulary replaced or refitted since: start over
            memo = self._memos[f.name] = TokenMemo(key, lambda d: self._token_ids(f, d))
        return memo

    def _token_ids(self, f: FeatureSpec, dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Ids and hashes of distinct token strings: the single place a token's id is decided (empty string -> 1)."""
        h = hash_strings(dictionary)
        uniq = self.vocabs_[f.name].lookup(dictionary, h) if f.type == "categorical" else bucket(h, f.buckets)
        empty = C.empty_entries(dictionary)
        if empty is not None:
            uniq[empty] = 1
        return uniq, h

    def _encode(self, f: FeatureSpec, col: pa.ChunkedArray | pa.Array) -> Column:
        """Ids (and dense values, and token hashes when a cross needs them) of one feature."""
        want_tokens = f.name in self._in_cross
        if f.type == "continuous":
            return self._encode_continuous(f, C.as_floats(col, f.source))
        if f.multi_valued:
            lists = C.as_lists(col, f.source, f.delimiter)
            s, offsets = lists.elements, lists.offsets
        else:
            s, offsets = C.as_strings(col, f.source), None
        uniq, h = self._token_ids(f, s.dictionary)  # empty strings never reach a list's elements (as_lists drops them)
        if offsets is None:
            # A trailing sentinel lets index -1 (a null row) pick id 1 and hash 0 without a mask pass.
            ids = np.append(uniq, np.int32(1))[s.indices]
            tokens = Tokens(np.append(h, np.uint64(0))[s.indices], None, ids == 1) if want_tokens else None
            return Column(ids, None, None, tokens)
        ids, out_off = fill_rows(uniq[s.indices], offsets, lists.null, np.int32(1))
        tokens = Tokens(h[s.indices], offsets, lists.null) if want_tokens else None
        return Column(ids.astype(np.int32, copy=False), out_off, None, tokens)

    def _encode_continuous(self, f: FeatureSpec, x: np.ndarray) -> Column:
        """Bucket id, normalized value and null flag of a continuous feature from float64 values (NaN = missing)."""
        null = np.isnan(x)
        q = self.quantiles_[f.name]
        i = q.bucketize(x)
        ids = (i + 2).astype(np.int32)
        ids[null] = 1
        value = q.normalize(x, i)
        value[null] = 0.0
        tokens = Tokens(hash_ints(i, BUCKET_SALT), None, null) if f.name in self._in_cross else None
        return Column(ids, None, (value, null.astype(np.float32)), tokens)

    def _add_crosses(self, cols: dict[str, Column], crosses: Sequence[CrossSpec], pool: Executor | None = None) -> None:
        crossed = _map(pool, lambda c: cross([cols[name].tokens for name in c.columns], c.buckets), crosses)
        for c, out in zip(crosses, crossed):
            cols[c.name] = Column(out, None) if isinstance(out, np.ndarray) else Column(out[0], out[1])

    def _context(self, context: Mapping[str, Any], feats: Sequence[FeatureSpec], n: int, strict: bool) -> dict[str, Column]:
        """The context's features, and the crosses among them, encoded once and repeated over a request's n rows."""
        cols = self._encode_records([context], feats, strict)
        self._add_crosses(cols, [c for c in self.crosses if all(name in cols for name in c.columns)])
        later = {name for c in self.crosses if c.name not in cols for name in c.columns}  # crosses with candidate fields
        return {k: (c if k in later else Column(c.ids, c.offsets, c.dense)).repeat(n) for k, c in cols.items()}

    def _assemble(
        self, cols: dict[str, Column], n: int, label: np.ndarray | None, pool: Executor | None = None
    ) -> Encoded:
        self._add_crosses(cols, [c for c in self.crosses if c.name not in cols], pool)
        dense_cols = [cols[f.name].dense for f in self.features if f.type == "continuous"]
        ids_in, dense_in = [cols[name].ids for name in self.id_slots], [x for pair in dense_cols for x in pair]
        ids, dense = _map(pool, lambda p: _stack_columns(*p, n), [(ids_in, np.int32), (dense_in, np.float32)])
        lists = {name: (cols[name].ids, cols[name].offsets) for name in self.list_slots}
        return Encoded(ids=ids, dense=dense, lists=lists, label=label)

    # ---- persistence (features.json: widedeep.features.persist) ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        from widedeep.features.persist import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSet":
        from widedeep.features.persist import from_dict

        return from_dict(cls, d)

    def save(self, path: str | Path) -> Path:
        """Write features.json atomically."""
        from widedeep.features.persist import save

        return save(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        from widedeep.features.persist import load

        return load(cls, Path(path))
