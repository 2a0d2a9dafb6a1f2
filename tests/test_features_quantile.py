"""Quantiles: boundaries at ranks j/n_q, the paper's (i-1)/(n-1) normalization, ties, constant columns, merges."""

from __future__ import annotations

import numpy as np
import pytest

from widedeep.features.quantile import Quantiles


def test_exact_boundaries_and_normalization() -> None:
    q = Quantiles(4).partial_fit(np.arange(1.0, 101.0)).finalize()
    assert q.boundaries_.tolist() == [25.0, 50.0, 75.0]
    i = q.bucketize(np.array([1.0, 25.0, 25.5, 50.0, 99.0, 1000.0, -5.0]))
    assert i.tolist() == [1, 2, 2, 3, 4, 4, 1]
    assert q.normalize(i).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 0])


def test_ties_merge_duplicate_cut_points() -> None:
    x = np.array([0.0] * 70 + [1.0] * 20 + [5.0] * 10)
    q = Quantiles(20).partial_fit(x).finalize()
    assert q.boundaries_.tolist() == [1.0, 5.0]  # cut points at 0 (the minimum) are dropped, duplicates merged
    assert q.buckets == 3
    assert q.normalize(q.bucketize(np.array([0.0, 1.0, 5.0]))).tolist() == [0.0, 0.5, 1.0]


def test_constant_column_is_one_bucket_at_zero() -> None:
    q = Quantiles(100).partial_fit(np.full(50, 3.0)).finalize()
    assert q.buckets == 1 and q.normalize(q.bucketize(np.array([3.0, 10.0]))).tolist() == [0.0, 0.0]
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
    assert np.array_equal(r.boundaries_, q.boundaries_) and r.nulls_ == 7
    with pytest.raises(ValueError, match="strictly increasing"):
        Quantiles.from_dict({"boundaries": [2.0, 1.0]})
