"""Vocabulary: order by count then value, min_count, max_size, OOV, empty strings, exact merges."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.features.vocab import Vocabulary


def fit(values: list[str | None], **kw) -> Vocabulary:
    v = Vocabulary(**kw)
    d = pc.dictionary_encode(pa.array(values, pa.string()))
    idx = d.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return v.partial_fit(d.dictionary, idx[idx >= 0]).finalize()


def test_order_is_count_then_value() -> None:
    v = fit(["b", "a", "c", "b", "a", "d", "d", "c", "b", None, ""])
    assert v.tokens_.to_pylist() == ["b", "a", "c", "d"]  # b:3, then a, c, d (2 each) by value; null and "" never tokens
    assert v.token_counts_.tolist() == [3, 2, 2, 2]


def test_min_count_and_max_size() -> None:
    data = ["x"] * 5 + ["y"] * 3 + ["z"] * 2 + ["w"]
    assert fit(data, min_count=2).tokens_.to_pylist() == ["x", "y", "z"]
    assert fit(data, min_count=2, max_size=2).tokens_.to_pylist() == ["x", "y"]


def test_lookup_ids_and_oov() -> None:
    v = fit(["b", "a", "b", "é"])
    ids = v.lookup(pa.array(["b", "a", "é", "unseen", ""]))
    assert ids.tolist() == [3, 4, 5, 2, 2]


def test_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    data = [f"t{int(x)}" for x in rng.zipf(1.5, 5000) % 300]
    whole = fit(data, min_count=3)
    parts = fit(data[:2000], min_count=3)
    parts.merge(fit(data[2000:], min_count=3)).finalize()
    assert parts.tokens_.to_pylist() == whole.tokens_.to_pylist()
    assert parts.token_counts_.tolist() == whole.token_counts_.tolist()


def test_many_batches_compact_exactly() -> None:
    v = Vocabulary()
    for i in range(50):
        d = pa.array([f"t{j}" for j in range(i, i + 10)])
        v.partial_fit(d, np.arange(10))
    v.finalize()
    counts = dict(zip(v.tokens_.to_pylist(), v.token_counts_.tolist()))
    assert counts["t0"] == 1 and counts["t9"] == 10 and counts["t30"] == 10 and len(counts) == 59


def test_round_trip() -> None:
    v = fit(["b", "a", "b"])
    w = Vocabulary.from_dict(v.to_dict())
    q = pa.array(["a", "b", "c"])
    assert np.array_equal(v.lookup(q), w.lookup(q))


def test_lookup_accepts_every_string_type() -> None:
    v = fit(["b", "a", "b"])
    for kind in (pa.string(), pa.large_string(), pa.string_view()):
        assert v.lookup(pa.array(["a", "b", "c"]).cast(kind)).tolist() == [4, 3, 2]
