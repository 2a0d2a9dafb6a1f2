"""The small-batch serving path (Python values through the token memo) gives exactly the Arrow path's encodings."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_log

from widedeep.config import CrossSpec, FeatureSpec, load
from widedeep.features import small as small_mod
from widedeep.features import transform as transform_mod
from widedeep.features.columns import FeatureError
from widedeep.features.encoded import Encoded
from widedeep.features.transform import FeatureSet


def identical(a: Encoded, b: Encoded) -> None:
    assert a.ids.dtype == b.ids.dtype and a.dense.dtype == b.dense.dtype
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.dense, b.dense)
    assert list(a.lists) == list(b.lists)
    for k, (v, o) in a.lists.items():
        assert v.dtype == b.lists[k][0].dtype and o.dtype == b.lists[k][1].dtype, k
        assert np.array_equal(v, b.lists[k][0]) and np.array_equal(o, b.lists[k][1]), k


def arrow_path(fs: FeatureSet, monkeypatch: pytest.MonkeyPatch, fn):
    with monkeypatch.context() as m:
        m.setattr(transform_mod, "SMALL_BATCH", -1)
        return fn()


def features() -> FeatureSet:
    feats = (
        FeatureSpec("c", "categorical"),
        FeatureSpec("tags", "categorical", multi_valued=True),
        FeatureSpec("h", "hashed", buckets=10),
        FeatureSpec("hl", "hashed", buckets=7, multi_valued=True),
        FeatureSpec("x", "continuous", quantiles=4),
    )
    crosses = (
        CrossSpec("c_x_tags", ("c", "tags"), 50),
        CrossSpec("c_x_x", ("c", "x"), 40),
        CrossSpec("h_x_hl", ("h", "hl"), 30),
        CrossSpec("c_h", ("c", "h"), 20),
    )
    return FeatureSet(feats, crosses, "y")


TOKENS = ["a", "b", "c", "", None, "zzz", "é", "a b", "0", 7, 12, -3]


def records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def some_list():
        r = rng.random()
        return None if r < 0.15 else [] if r < 0.25 else [rng.choice(TOKENS) for _ in range(rng.randint(1, 4))]

    def x():
        r = rng.random()
        return None if r < 0.1 else float("nan") if r < 0.15 else rng.choice([1, 2.5, -4.0, 1e9, 0])

    rows = []
    for _ in range(n):
        rows.append({"c": rng.choice(TOKENS), "tags": some_list(), "h": rng.choice(TOKENS), "hl": some_list(), "x": x()})
    return rows


@pytest.fixture
def fitted() -> FeatureSet:
    recs = records(300, 0)
    return features().fit(pa.table({**{k: [r[k] for r in recs] for k in ("x",)},
                                    "c": [None if r["c"] is None else str(r["c"]) for r in recs],
                                    "tags": [None if r["tags"] is None else [None if t is None else str(t) for t in r["tags"]]
                                             for r in recs],
                                    "h": pa.nulls(300, pa.string()), "hl": pa.nulls(300, pa.list_(pa.string())),
                                    "y": [0] * 300}))  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_path_equals_arrow_path(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    recs = records(200, seed)  # OOV, nulls, "", ints, empty and null lists, null and "" list elements, crosses, NaN
    expected = arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(recs))
    identical(fitted.transform_records(recs), expected)
    identical(fitted.transform_records(recs), expected)  # warm memo
    ctx, cands = {k: recs[0][k] for k in ("c", "tags", "x")}, [{"h": r["h"], "hl": r["hl"]} for r in recs]
    identical(fitted.transform_request(ctx, cands), arrow_path(fitted, monkeypatch, lambda: fitted.transform_request(ctx, cands)))


def test_small_path_equals_file_transform(fitted: FeatureSet) -> None:
    recs = records(100, 4)
    canon = [{k: (str(v) if isinstance(v, int) and k in ("c", "h") else v) for k, v in r.items()} for r in recs]
    for r in canon:
        for k in ("tags", "hl"):
            r[k] = None if r[k] is None else [None if t is None else str(t) for t in r[k]]
    table = pa.table({k: [r[k] for r in canon] for k in ("c", "tags", "h", "hl", "x")})
    identical(fitted.transform_records(recs), fitted.transform(table))


def test_one_record_and_memo_limit(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = records(150, 5)
    expected = arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(recs))
    monkeypatch.setattr(small_mod, "MEMO_LIMIT", 4)  # the memo starts over again and again
    identical(fitted.transform_records(recs), expected)
    assert all(len(m) <= 12 for m in fitted._memos.values())
    one = fitted.transform_records(recs[7:8])
    assert np.array_equal(one.ids, expected.ids[7:8]) and np.array_equal(one.dense, expected.dense[7:8])


def test_refit_invalidates_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = features()
    base = {"tags": ["a"], "h": "a", "hl": [], "x": 1.0}
    fs.fit(pa.table({"c": ["a", "b", "b"], "tags": [["a"]] * 3, "h": ["a"] * 3, "hl": [[]] * 3, "x": [1.0, 2.0, 3.0]}))
    before = fs.transform_records([{**base, "c": "a"}, {**base, "c": "b"}]).ids[:, 0].tolist()
    assert before == [4, 3]  # b is more frequent
    fs.fit(pa.table({"c": ["a", "a", "b"], "tags": [["a"]] * 3, "h": ["a"] * 3, "hl": [[]] * 3, "x": [1.0, 2.0, 3.0]}))
    assert fs.transform_records([{**base, "c": "a"}, {**base, "c": "b"}]).ids[:, 0].tolist() == [3, 4]


def test_values_the_memo_leaves_to_arrow(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = {"c": True, "tags": [False, "a", 3], "h": False, "hl": ("t", "u"), "x": 2}  # booleans, a tuple
    identical(fitted.transform_records([ok, {**ok, "c": "a"}]),
              arrow_path(fitted, monkeypatch, lambda: fitted.transform_records([ok, {**ok, "c": "a"}])))  # fmt: skip
    for bad, field in [({"c": 1.5}, "c"), ({"c": ["a"]}, "c"), ({"tags": "a,b"}, "tags"), ({"tags": [{"a": 1}]}, "tags"),
                       ({"x": "3"}, "x"), ({"h": {"k": 1}}, "h")]:  # fmt: skip
        rec = [{**ok, **bad}]
        with pytest.raises(FeatureError) as small_err:
            fitted.transform_records(rec)
        with pytest.raises(FeatureError) as arrow_err:
            arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(rec))
        assert small_err.value.field == field and str(small_err.value) == str(arrow_err.value)


def test_tiny_config_records_both_paths(tiny_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FeatureSet.from_config(load(tiny_config)).fit(pq.read_table(tiny_config.parent / "train.parquet"))
    recs = make_log(300, 11).to_pylist()
    identical(fs.transform_records(recs), arrow_path(fs, monkeypatch, lambda: fs.transform_records(recs)))


def test_missing_fields_and_non_mappings_report_like_the_arrow_path(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = records(5, 6)
    broken = [recs[0], {k: v for k, v in recs[1].items() if k != "h"}, recs[2]]
    for rows in (broken, [recs[0], ["not", "a", "record"]]):
        with pytest.raises(FeatureError) as small_err:
            fitted.transform_records(rows)
        with pytest.raises(FeatureError) as arrow_err:
            arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(rows))
        assert str(small_err.value) == str(arrow_err.value)
    lenient = fitted.transform_records(broken, strict=False)
    identical(lenient, arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(broken, strict=False)))
    assert lenient.ids[1, fitted.id_slots.index("h")] == 1


@pytest.mark.parametrize(
    "xs",
    [
        [1, 2.5, -4.0, 1e9, 0, float("nan"), 3],  # the numpy fast path
        [1.5, True, 2],  # a bool: Arrow converts it
        [1.0, 2**60, 3],  # an integer beyond float64's exact range: Arrow decides
    ],
)
def test_numbers_without_arrow_equal_the_arrow_path(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch, xs: list) -> None:
    from widedeep.features.columns import small_floats

    recs = [{"c": "a", "tags": ["b"], "h": "c", "hl": None, "x": x} for x in xs]
    fast = small_floats(xs)
    assert (fast is not None) == (xs[1] == 2.5)
    try:
        expected = arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(recs))
    except FeatureError:
        with pytest.raises(FeatureError, match="x"):
            fitted.transform_records(recs)
        return
    identical(fitted.transform_records(recs), expected)


def test_long_tokens_bound_the_memo_by_characters(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    recs = [{**r, "c": "c" * 3000 + str(i), "h": "hé" * rng.randint(500, 2000) + str(i)} for i, r in enumerate(records(40, 8))]
    expected = arrow_path(fitted, monkeypatch, lambda: fitted.transform_records(recs))
    monkeypatch.setattr(small_mod, "MEMO_CHARS", 10_000)
    for i, rec in enumerate(recs):  # one new long token per feature and call
        one = fitted.transform_records([rec])
        assert np.array_equal(one.ids, expected.ids[i : i + 1]) and np.array_equal(one.dense, expected.dense[i : i + 1])
        for name in ("c", "h"):
            assert sum(len(t) for t in fitted._memos[name]._ids if t is not None) <= 10_000
    identical(fitted.transform_records(recs), expected)  # a batch larger than the limit still encodes exactly


def test_float_block_equals_each_feature_bit_for_bit() -> None:
    from widedeep.features.quantile import Quantiles
    from widedeep.features.small import FloatBlock

    rng = np.random.default_rng(3)
    data = {
        "spread": rng.normal(0, 5, 500),
        "masses": np.concatenate([np.zeros(400), rng.exponential(3, 100)]),  # a heavy point mass at 0
        "constant": np.full(50, 2.0),  # one bucket
        "unseen": np.array([np.nan] * 5),  # nothing seen: every value out of range
    }
    qs = []
    for normalization in ("interpolated", "bucket"):
        for values in data.values():
            x = values[~np.isnan(values)]
            qs.append(Quantiles(8, normalization=normalization).partial_fit(x, nulls=len(values) - len(x)).finalize())
    probe = [np.nan, np.inf, -np.inf, -0.0, 0.0, 2.0, -1e300, 1e300, *rng.normal(0, 6, 40)]
    x = np.array([probe + [b for b in q.boundaries_[:4]] + [0.0] * (4 - min(4, len(q.boundaries_))) for q in qs])
    varied = [j for j, q in enumerate(qs) if q.buckets > 1]  # without the constant column's empty bucket
    assert FloatBlock(qs)._empty and not FloatBlock([qs[j] for j in varied])._empty  # both ways of masking empty buckets
    for rows in (list(range(len(qs))), varied):
        i, ids, value, null = FloatBlock([qs[j] for j in rows]).encode(x[rows])
        for r, j in enumerate(rows):
            q = qs[j]
            want_i = q.bucketize(x[j])
            want = q.normalize(x[j], want_i)
            ok = ~np.isnan(x[j])
            assert np.array_equal(null[r], ~ok) and np.array_equal(i[r][ok], want_i[ok]), j
            assert np.array_equal(ids[r], np.where(ok, want_i + 2, 1).astype(np.int32)), j
            assert np.array_equal(value[r][ok].view(np.uint32), want[ok].view(np.uint32)) and (value[r][~ok] == 0).all(), j


def test_float_block_ragged_equals_each_row() -> None:
    from widedeep.features.quantile import Quantiles
    from widedeep.features.small import FloatBlock

    rng = np.random.default_rng(4)
    qs = [Quantiles(q, normalization=nm).partial_fit(rng.exponential(s, 300)).finalize()
          for q, nm, s in [(10, "interpolated", 1.0), (4, "bucket", 5.0), (100, "interpolated", 50.0)]]  # fmt: skip
    block = FloatBlock(qs)
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, -1e300, 1e300]
    patterns = [(5, 1, 3), (1, 1, 1), (0, 7, 2), (4, 4, 4), (3, 1, 1), (6, 2, 1)]  # single values at the end: bisect
    for counts in patterns * 10:
        # normal values, each feature's own boundaries (equal values go right) and special values
        pools = [np.concatenate([rng.normal(2, 3, 5), q.boundaries_, special]) for q in qs]
        x = np.concatenate([rng.choice(pool, k) for pool, k in zip(pools, counts)])
        c, ids, value, null = block.encode_flat(x, counts)
        i = c + 1
        a = 0
        for j, k in enumerate(counts):
            s, ok = slice(a, a + k), ~np.isnan(x[a : a + k])
            want_i, want_ids, want_value, want_null = FloatBlock([qs[j]]).encode(x[None, s])  # (1, k) each
            assert np.array_equal(i[s][ok], want_i[0][ok]) and np.array_equal(ids[s], want_ids[0]), (counts, j)
            assert np.array_equal(value[s].view(np.uint32), want_value[0].view(np.uint32)), (counts, j)
            assert np.array_equal(null[s], want_null[0]), (counts, j)
            a += k
