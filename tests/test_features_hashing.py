"""Stable hashing: golden values pin the algorithm; a plain-Python reference checks the vectorized implementation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from widedeep.features.hashing import (
    bucket,
    combine,
    combine_int,
    hash_ints,
    hash_string,
    hash_strings,
    splitmix64,
    splitmix64_int,
)

M64 = (1 << 64) - 1


def reference(s: str) -> int:
    h = 0xCBF29CE484222325
    for byte in s.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & M64
    h = (h + 0x9E3779B97F4A7C15) & M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


GOLDEN = {
    "": 0xC3817C016BA4FF30,
    "a": 0x5F29C2AADD9B8527,
    "hello": 0xF3E8EEC5EB46E500,
    "héllo": 0x4019771FFD0488F9,
    "42": 0x2E3F71EE82C2E0F4,
}


def test_golden_values() -> None:
    got = hash_strings(pa.array(list(GOLDEN), pa.string()))
    assert [int(x) for x in got] == list(GOLDEN.values())
    assert all(reference(s) == v for s, v in GOLDEN.items())


def test_matches_reference_on_random_strings() -> None:
    rng = np.random.default_rng(0)
    alphabet = list("abcxyz019 _-é€𝄞")
    strings = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(300)] + ["x" * 1000]
    got = hash_strings(pa.array(strings, pa.string()))
    assert [int(x) for x in got] == [reference(s) for s in strings]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
def test_same_hash_for_every_string_type_and_slice(kind: pa.DataType) -> None:
    values = ["u", "", "longer value", "é", "z"]
    arr = pa.array(values, pa.string()).cast(kind)
    assert np.array_equal(hash_strings(arr), [reference(s) for s in values])
    assert np.array_equal(hash_strings(arr.slice(2, 2)), [reference(s) for s in values[2:4]])
    assert np.array_equal(hash_strings(pa.chunked_array([arr[:2], arr[2:]])), [reference(s) for s in values])


def test_numbers_hash_through_their_decimal_string() -> None:
    ints = pa.array([0, 7, -3, 123456789012], pa.int64()).cast(pa.string())
    assert np.array_equal(hash_strings(ints), hash_strings(pa.array(["0", "7", "-3", "123456789012"])))


def test_combine_and_bucket_golden() -> None:
    h = hash_strings(pa.array(["us", "app1"]))
    c = combine(h[:1], h[1:])
    assert int(c[0]) == 0x4D79DDF6F44106D5
    assert combine(h[1:], h[:1])[0] != c[0]  # order matters: a cross is over an ordered list of features
    assert int(bucket(c, 1000)[0]) == 3 + 0x4D79DDF6F44106D5 % 1000
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert int(hash_ints(np.array([5]), 1)[0]) == int(hash_ints(np.array([5]), 1)[0])
    assert hash_ints(np.array([5]), 1)[0] != hash_ints(np.array([5]), 2)[0]


def test_python_int_versions_equal_the_array_versions() -> None:
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
                        np.array([0, 1, 2**64 - 1], np.uint64)])  # fmt: skip
    b = a[::-1].copy()
    assert [splitmix64_int(int(x)) for x in a] == splitmix64(a).tolist()
    assert [combine_int(int(x), int(y)) for x, y in zip(a, b)] == combine(a, b).tolist()
    words = ["", "a", "us", "é", "app1" * 20]
    assert [hash_string(w) for w in words] == hash_strings(pa.array(words)).tolist()


def test_bucket_ids_in_range() -> None:
    h = hash_strings(pa.array([str(i) for i in range(10_000)]))
    b = bucket(h, 97)
    assert b.dtype == np.int32 and b.min() == 3 and b.max() == 99
    assert np.bincount(b - 3).min() > 50  # spread over every bucket


def test_long_strings_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes past the position loop go through the prefix scan: all of them, none, several scan passes per string or
    many strings per pass; lengths at every boundary, multi-byte characters, and a string of 300 kB."""
    import widedeep.features.hashing as hashing

    rng = np.random.default_rng(1)
    alphabet = list("ab z09_é€𝄞\x00\x7f")
    lengths = [0, 1, 7, 8, 9, 15, 16, 17, 40, 63, 64, 65, 100, 129, 1000]
    strings = ["".join(rng.choice(alphabet, n)) for n in lengths + list(rng.integers(0, 300, 100))]
    want = [reference(s) for s in strings]
    for head, loop_min, scan in ((32, 128, 1 << 18), (0, 1, 1 << 18), (0, 10**9, 1 << 18), (0, 10**9, 64), (5, 20, 1000)):
        monkeypatch.setattr(hashing, "HEAD_BYTES", head)
        monkeypatch.setattr(hashing, "LOOP_MIN_STRINGS", loop_min)
        monkeypatch.setattr(hashing, "SCAN_BYTES", scan)
        assert [int(x) for x in hash_strings(pa.array(strings, pa.string()))] == want, (head, loop_min, scan)
        assert [int(x) for x in hash_strings(pa.array(strings[::-1], pa.large_string()).slice(3))] == want[::-1][3:]
    monkeypatch.undo()
    huge = "".join(rng.choice(alphabet, 100_000))  # ~300 kB of UTF-8
    assert int(hash_strings(pa.array([huge, "a"]))[0]) == reference(huge)
