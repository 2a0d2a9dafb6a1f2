"""k-way crosses: scalar and ragged Cartesian products against a plain-Python reference; missing values."""

from __future__ import annotations

import itertools

import numpy as np

from widedeep.features.cross import Tokens, cross, fill_rows, offsets_of
from widedeep.features.hashing import bucket, combine


def ragged(rows: list[list[int]], null: list[bool]) -> Tokens:
    values = np.array([v for r in rows for v in r], np.uint64)
    return Tokens(values, offsets_of(np.array([len(r) for r in rows])), np.array(null))


def scalar(values: list[int], null: list[bool]) -> Tokens:
    return Tokens(np.array(values, np.uint64), None, np.array(null))


def test_scalar_cross() -> None:
    a, b = scalar([1, 2, 3], [False, True, False]), scalar([10, 20, 30], [False, False, False])
    ids = cross([a, b], 1000)
    want = bucket(combine(a.hashes, b.hashes), 1000)
    assert ids.tolist() == [want[0], 1, want[2]]


def test_ragged_three_way_matches_reference() -> None:
    lists = [[1, 2], [], [3], [4, 5, 6], [7]]
    a = ragged(lists, [False, False, False, False, True])
    b = scalar([10, 20, 30, 40, 50], [False, False, False, False, False])
    c = ragged([[100], [200, 201], [300, 301], [400], [500]], [False] * 5)
    values, offsets = cross([a, b, c], 997)
    got = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(5)]
    for i in range(4):
        want = [
            int(bucket(combine(combine(np.array([x], np.uint64), np.array([10 * (i + 1)], np.uint64)), np.array([z], np.uint64)), 997)[0])
            for x, z in itertools.product(lists[i], [[100], [200, 201], [300, 301], [400]][i])
        ]
        assert got[i] == want
    assert got[1] == [] and got[4] == [1]  # an empty list crosses to nothing; a missing list to the missing id


def test_fill_rows() -> None:
    values, offsets = fill_rows(np.array([1, 2, 3, 4]), np.array([0, 2, 2, 4]), np.array([True, False, True]), 9)
    assert values.tolist() == [9, 9] and offsets.tolist() == [0, 1, 1, 2]
