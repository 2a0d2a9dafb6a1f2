"""One feature's Python values (a list per source column, from records or a request's columns) to its encoded column,
the serving path's general case: token memos (widedeep.features.small) and numpy where they can, else the Arrow path
of `FeatureSet._encode`, which also raises the usual errors in feature order. The continuous features go through one
FloatBlock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from widedeep.config import FeatureSpec
from widedeep.features import columns as C
from widedeep.features.cross import Tokens, fill_rows
from widedeep.features.encoded import Column
from widedeep.features.hashing import BUCKET_SALT, hash_ints
from widedeep.features.small import BLOCKS_LIMIT, FloatBlock, list_tokens

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet


def kind(f: FeatureSpec) -> C.Kind:
    """The canonical form of a feature's input column (widedeep.features.columns)."""
    return "float" if f.type == "continuous" else "list" if f.multi_valued else "string"


def encode_values(
    fs: FeatureSet, feats: Sequence[FeatureSpec], values_of: Callable[[str], list], n: int | None = None
) -> dict[str, Column]:
    """Features from their Python values (a list per source column, or one value to repeat over `n` rows): the memo
    and numpy where they can, else the Arrow path, which raises the first error in feature order. The continuous
    features go through one FloatBlock."""
    out, floats = {}, []
    for f in feats:
        values = values_of(f.source)
        if f.type == "continuous":
            x = C.small_floats(values)
            if x is not None:
                floats.append((f, x))
                continue
            col = None
        else:
            col = encode_tokens(fs, f, values)
        col = col if col is not None else fs._encode(f, C.column(values, kind(f), f.source))
        out[f.name] = col if n is None or len(values) == n else col.repeat(n)
    if floats:
        out.update(encode_floats(fs, floats, len(floats[0][1]) if n is None else n))
    return out

def encode_floats(fs: FeatureSet, floats: list[tuple[FeatureSpec, np.ndarray]], n: int) -> dict[str, Column]:
    """`FeatureSet._encode_continuous` of several features at once (small.FloatBlock: the same values, fewer numpy calls); a
    single value is repeated over the `n` rows."""
    names = tuple(f.name for f, _ in floats)
    block = fs._blocks.get(names)
    if block is None or any(b is not fs.quantiles_[name].boundaries_ for b, name in zip(block.key, names)):
        if len(fs._blocks) >= BLOCKS_LIMIT:  # clients choose which fields are columns: bound the combinations kept
            fs._blocks = {}
        block = fs._blocks[names] = FloatBlock([fs.quantiles_[name] for name in names])
    x = np.empty((len(floats), n))
    for j, (_, values) in enumerate(floats):
        x[j] = values
    i, ids, value, null = block.encode(x)  # (F, n) each
    flags = null.astype(np.float32)
    out = {}
    for j, (f, _) in enumerate(floats):
        tokens = Tokens(hash_ints(i[j], BUCKET_SALT), None, null[j]) if f.name in fs._in_cross else None
        out[f.name] = Column(ids[j], None, (value[j], flags[j]), tokens)
    return out

def encode_tokens(fs: FeatureSet, f: FeatureSpec, values: list) -> Column | None:
    """`FeatureSet._encode` of Python token values through the feature's memo (small.py); None where the Arrow path must run."""
    want_tokens = f.name in fs._in_cross
    memo = fs._memo(f)
    if not f.multi_valued:
        found = memo.lookup(values, want_tokens)
        if found is None:
            return None
        ids, h = found
        return Column(ids, None, None, Tokens(h, None, ids == 1) if want_tokens else None)
    parts = list_tokens(values)
    found = None if parts is None else memo.lookup(parts[0], want_tokens)
    if found is None:
        return None
    (ids, h), (_, lengths, null) = found, parts
    dropped = ids == 1  # null and empty-string elements, the only ones with id 1: dropped, as columns.as_lists does
    if dropped.any():
        keep = ~dropped
        lengths = np.bincount(np.repeat(np.arange(len(values)), lengths)[keep], minlength=len(values))
        ids, h = ids[keep], None if h is None else h[keep]
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out, out_off = fill_rows(ids, offsets, null, np.int32(1))
    return Column(out, out_off, None, Tokens(h, offsets, null) if want_tokens else None)
