"""The raw-body pre-check of widedeep.serve.request: it may answer yes for a body that holds no bad value (the values are
then walked), but never no for one that does; and no for ordinary bodies, so that their values are never walked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widedeep.serve.request import may_hold_bad_value

MAX_BYTES = 40


def _bad(value) -> bool:
    """A boolean or a string past MAX_BYTES UTF-8 bytes anywhere in a parsed document (keys included)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) > MAX_BYTES
    if isinstance(value, dict):
        return any(_bad(k) or _bad(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_bad, value))
    return False


def _string(rng: np.random.Generator, tricky: bool) -> str:
    n = int(rng.choice([0, 1, 5, MAX_BYTES // 4, MAX_BYTES // 2, MAX_BYTES - 1, MAX_BYTES, MAX_BYTES + 1, 3 * MAX_BYTES]))
    letters = "abcdef0123456789 -_"
    if tricky:
        letters += 'é€😀"\\\n/truefalse'
    return "".join(rng.choice(list(letters), n))


def _document(rng: np.random.Generator, tricky: bool) -> dict:
    def value():
        kind = rng.integers(6 if tricky else 4)
        if kind == 0:
            return float(rng.normal() * 1e3)
        if kind == 1:
            return int(rng.integers(-(10**9), 10**9))
        if kind == 2:
            return _string(rng, tricky)
        if kind == 3:
            return [_string(rng, tricky) if rng.random() < 0.5 else float(rng.random()) for _ in range(rng.integers(0, 4))]
        if kind == 4:
            return bool(rng.random() < 0.5)
        return None

    rows = [{f"f{j}": value() for j in range(int(rng.integers(1, 6)))} for _ in range(int(rng.integers(1, 40)))]
    if rng.random() < 0.5:
        return {"context": {"user": value()}, "candidates": rows, "k": 10}
    return {"context": {}, "candidates": {f"f{j}": [value() for _ in rows] for j in range(3)}}


@pytest.mark.parametrize("ascii_only", [True, False])
def test_never_misses_a_boolean_or_a_long_string(ascii_only: bool):
    rng = np.random.default_rng(0)
    seen_bad = 0
    for _ in range(1500):
        doc = _document(rng, tricky=True)
        body = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":") if rng.random() < 0.5 else None).encode()
        if _bad(doc):
            seen_bad += 1
            assert may_hold_bad_value(body, MAX_BYTES), body
    assert seen_bad > 300  # the generator does make bad documents


def test_says_no_for_ordinary_bodies():
    rng = np.random.default_rng(1)
    for _ in range(500):
        doc = _document(rng, tricky=False)
        body = json.dumps(doc).encode()
        assert may_hold_bad_value(body, MAX_BYTES) == _bad(doc), body  # exact without escapes and literals
    # a long run of numbers between two short strings is not a long string
    body = json.dumps({"candidates": {"a": ["x"] * 3, "price": [1234.5678] * 500}}).encode()
    assert not may_hold_bad_value(body, MAX_BYTES)


@pytest.mark.parametrize(
    "body,expected",
    [
        (b'{"a": true}', True),
        (b'{"a": [1, false]}', True),
        (b'{"a": "true"}', True),  # inside a string: a yes, the values are then walked
        (b'{"a": "tru", "b": "alse", "c": "fals"}', False),
        (b'{"a": "' + b"x" * MAX_BYTES + b'"}', False),
        (b'{"a": "' + b"x" * (MAX_BYTES + 1) + b'"}', True),
        (b'{"a": "' + b"x" * 30 + b'\\"' + b"x" * 30 + b'"}', True),  # an escaped quote splits a long string
        (b'{"a": "' + b"x" * 30 + b"\\\\" + b'", "b": "x"}', True),  # a backslash before a quote: a yes, to be safe
        (b'{"a": "x\\\\y", "b": "' + b"x" * MAX_BYTES + b'"}', False),  # one elsewhere: the quotes still pair up
        (b"true", True),
        (b"", False),
    ],
)
def test_examples(body: bytes, expected: bool):
    assert may_hold_bad_value(body, MAX_BYTES) == expected
