"""A FeatureSet's not-yet-finalized statistics as bytes, so that ranks fitting parts of the data can merge them.

Vocabulary counts merge exactly and quantile statistics merge as exact values (below `Quantiles.exact_limit`) or as KLL
sketches, so the merged FeatureSet is the one a single process fits: identical vocabularies, identical boundaries in
the exact regime, boundaries within the sketch's rank error (~0.14%) beyond it. The bytes are a JSON header followed by
Arrow IPC streams (token counts), raw little-endian float64 (exact quantile values) and KLL serializations; no pickle.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from datasketches import kll_doubles_sketch

from widedeep.features.quantile import Quantiles
from widedeep.features.transform import FeatureSet
from widedeep.features.vocab import Vocabulary

_MAGIC = b"WDSTATS1"


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_table(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(blob)).read_all()


def pack_stats(fs: FeatureSet) -> bytes:
    """The not-yet-finalized statistics of `fs` (token counts, quantile values or sketches, row count) as bytes."""
    header: dict = {"rows": fs.rows_, "vocabs": {}, "quantiles": {}}
    blobs: list[bytes] = []

    def add(b: bytes) -> list[int]:
        blobs.append(b)
        return [sum(map(len, blobs[:-1])), len(b)]

    for name, v in fs.vocabs_.items():
        header["vocabs"][name] = add(_arrow_bytes(pa.table({"v": v.values_.cast(pa.string()), "c": pa.array(v.counts_, pa.int64())})))
    for name, q in fs.quantiles_.items():
        # Quantiles keeps exact values until its limit, then a KLL sketch; both are carried as they are.
        exact = np.concatenate(q._exact) if q._exact else np.zeros(0, np.float64)
        header["quantiles"][name] = {
            "count": q.count_, "nulls": q.nulls_,
            "min": None if q.count_ == 0 else q.min_, "max": None if q.count_ == 0 else q.max_,
            "exact": add(np.ascontiguousarray(exact, dtype="<f8").tobytes()),
            "sketch": None if q._sketch is None else add(q._sketch.serialize()),
        }  # fmt: skip
    head = json.dumps(header).encode()
    return _MAGIC + struct.pack("<Q", len(head)) + head + b"".join(blobs)


def unpack_stats(blob: bytes, like: FeatureSet) -> FeatureSet:
    """A FeatureSet with `like`'s specs holding the statistics `pack_stats` wrote (ready to `merge`)."""
    if blob[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"not a widedeep statistics blob (starts with {blob[:8]!r})")
    n = struct.unpack("<Q", blob[len(_MAGIC) : len(_MAGIC) + 8])[0]
    start = len(_MAGIC) + 8
    header = json.loads(blob[start : start + n])
    body = memoryview(blob)[start + n :]

    def part(span: list[int]) -> bytes:
        return bytes(body[span[0] : span[0] + span[1]])

    fs = FeatureSet(like.features, like.crosses, like.label)
    if set(header["vocabs"]) != set(fs.vocabs_) or set(header["quantiles"]) != set(fs.quantiles_):
        raise ValueError(f"statistics are for features {sorted(header['vocabs'])} + {sorted(header['quantiles'])}, "
                         f"this config has {sorted(fs.vocabs_)} + {sorted(fs.quantiles_)}")  # fmt: skip
    fs.rows_ = int(header["rows"])
    for name, span in header["vocabs"].items():
        t = _arrow_table(part(span))
        v: Vocabulary = fs.vocabs_[name]
        v.values_, v.counts_ = t["v"].combine_chunks(), t["c"].to_numpy()
    for name, s in header["quantiles"].items():
        q: Quantiles = fs.quantiles_[name]
        exact = np.frombuffer(part(s["exact"]), dtype="<f8")
        q.count_, q.nulls_ = int(s["count"]), int(s["nulls"])
        q.min_ = np.inf if s["min"] is None else float(s["min"])
        q.max_ = -np.inf if s["max"] is None else float(s["max"])
        q._exact, q._exact_n = ([exact.copy()] if len(exact) else []), len(exact)
        q._sketch = None if s["sketch"] is None else kll_doubles_sketch.deserialize(part(s["sketch"]))
    fs._dirty = True
    return fs


def merge_packed(blobs: Iterable[bytes], like: FeatureSet) -> FeatureSet:
    """One FeatureSet (`like`'s specs) holding the statistics of every packed part, merged in order."""
    merged = FeatureSet(like.features, like.crosses, like.label)
    for blob in blobs:
        merged.merge(unpack_stats(blob, like))
    return merged
