"""Quantiles: boundaries at ranks j/n_q, the paper's (i-1)/(n-1) and the interpolated normalization, ties, point masses,
constant columns, merges."""

from __future__ import annotations

import numpy as np
import pytest

from widedeep.features.quantile import Quantiles


def test_exact_boundaries_and_normalization() -> None:
    q = Quantiles(4, normalization="bucket").partial_fit(np.arange(1.0, 101.0)).finalize()
    assert q.boundaries_.tolist() == [25.0, 50.0, 75.0]
    x = np.array([1.0, 25.0, 25.5, 50.0, 99.0, 1000.0, -5.0])
    i = q.bucketize(x)
    assert i.tolist() == [1, 2, 2, 3, 4, 4, 1]
    assert q.normalize(x, i).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 0])


def test_interpolated_normalization_keeps_order_inside_buckets_and_clips_outside() -> None:
    q = Quantiles(4).partial_fit(np.arange(1.0, 101.0)).finalize()  # edges 1 | 25 | 50 | 75 | 100
    x = np.array([-5.0, 1.0, 13.0, 25.0, 25.5, 37.5, 50.0, 99.0, 100.0, 1000.0])
    got = q.normalize(x, q.bucketize(x))
    assert got.tolist() == pytest.approx([0, 0, 0.125, 0.25, 0.255, 0.375, 0.5, 0.99, 1.0, 1.0], abs=1e-6)
    assert np.all(np.diff(got) >= 0)


def test_ties_merge_duplicate_cut_points() -> None:
    x = np.array([0.0] * 70 + [1.0] * 20 + [5.0] * 10)
    q = Quantiles(20).partial_fit(x).finalize()
    assert q.boundaries_.tolist() == [1.0, 5.0]  # cut points at 0 (the minimum) are dropped, duplicates merged
    assert q.buckets == 3
    x = np.array([0.0, 1.0, 5.0])
    assert Quantiles(20, normalization="bucket").partial_fit(x).finalize().boundaries_.tolist() == [1.0, 5.0]
    assert q.normalize(x, q.bucketize(x)).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_constant_column_is_one_bucket_at_zero() -> None:
    q = Quantiles(100).partial_fit(np.full(50, 3.0)).finalize()
    x = np.array([3.0, 10.0])
    assert q.buckets == 1 and q.normalize(x, q.bucketize(x)).tolist() == [0.0, 0.0]
    empty = Quantiles(10).finalize()
    assert empty.buckets == 1


def test_infinities_bucket_but_stay_out_of_boundaries() -> None:
    q = Quantiles(4).partial_fit(np.array([1.0, 2.0, 3.0, 4.0, np.inf, -np.inf])).finalize()
    assert np.all(np.isfinite(q.boundaries_))
    assert q.bucketize(np.array([-np.inf, np.inf])).tolist() == [1, q.buckets]


def test_merge_equals_one_pass() -> None:
    x = np.random.default_rng(0).lognormal(size=10_000)
    whole = Quantiles(50).partial_fit(x).finalize()
    a, b = Quantiles(50).partial_fit(x[:3000]), Quantiles(50).partial_fit(x[3000:])
    assert np.array_equal(a.merge(b).finalize().boundaries_, whole.boundaries_)


def test_sketch_regime_within_rank_tolerance() -> None:
    x = np.random.default_rng(1).lognormal(size=200_000)
    q = Quantiles(20, exact_limit=1000)
    for part in np.array_split(x, 10):
        q.partial_fit(part)
    q.finalize()
    ranks = np.searchsorted(np.sort(x), q.boundaries_, side="right") / len(x)
    assert np.abs(ranks - np.arange(1, 20) / 20).max() < 0.01  # KLL k=2000: ~0.14% normalized rank error


def test_round_trip() -> None:
    q = Quantiles(10).partial_fit(np.random.default_rng(2).normal(size=500), nulls=7).finalize()
    r = Quantiles.from_dict(q.to_dict(), 10)
    assert np.array_equal(r.boundaries_, q.boundaries_) and r.nulls_ == 7 and r.normalization == "interpolated"
    x = np.linspace(-3, 3, 50)
    assert np.array_equal(r.normalize(x, r.bucketize(x)), q.normalize(x, q.bucketize(x)))
    old = {k: v for k, v in q.to_dict().items() if k != "normalization"}  # written before "interpolated" existed
    assert Quantiles.from_dict(old, 10).normalization == "bucket"
    with pytest.raises(ValueError, match="strictly increasing"):
        Quantiles.from_dict({"boundaries": [2.0, 1.0]})


def zero_inflated(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.9, 0.0, rng.lognormal(8.0, 1.5, n))


@pytest.mark.parametrize("exact_limit", [1 << 20, 1000])  # exact values, and the KLL sketch
def test_a_point_mass_does_not_swallow_the_tail(exact_limit: int) -> None:
    x = zero_inflated(20_000, seed=3)
    q = Quantiles(20, exact_limit=exact_limit)
    for part in np.array_split(x, 4):
        q.partial_fit(part)
    q.finalize()
    probe = np.sort(zero_inflated(5_000, seed=4))
    v = q.normalize(probe, q.bucketize(probe))
    assert np.all(np.diff(v) >= 0)  # monotone
    assert len(np.unique(v[probe > 0])) >= 0.9 * 20
    paper = Quantiles(20, exact_limit=exact_limit, normalization="bucket").partial_fit(x).finalize()
    assert len(np.unique(paper.normalize(probe, paper.bucketize(probe))[probe > 0])) <= 3  # what it replaces


@pytest.mark.parametrize("exact_limit", [1 << 20, 1000])
def test_top_share_is_the_most_common_values_share(exact_limit: int) -> None:
    x = zero_inflated(20_000, seed=6)
    q = Quantiles(100, exact_limit=exact_limit).partial_fit(x[:7000]).merge(Quantiles(100, exact_limit=exact_limit).partial_fit(x[7000:]))
    assert q.finalize().top_share_ == pytest.approx(np.mean(x == 0), abs=0.005)
    smooth = Quantiles(100).partial_fit(np.random.default_rng(0).normal(size=5000)).finalize()
    assert smooth.top_share_ <= 0.01
    assert Quantiles.from_dict(q.to_dict()).top_share_ == q.top_share_
    old = {k: v for k, v in q.to_dict().items() if k != "top_share"}  # written before the share was kept
    assert Quantiles.from_dict(old).top_share_ == 0.0


def test_mass_aware_cuts_merge_equals_one_pass() -> None:
    x = zero_inflated(10_000, seed=5)
    whole = Quantiles(50).partial_fit(x).finalize()
    a, b = Quantiles(50).partial_fit(x[:3000]), Quantiles(50).partial_fit(x[3000:])
    assert np.array_equal(a.merge(b).finalize().boundaries_, whole.boundaries_)
