"""Common checks over every fitted transformer: streaming == one pass, merge == one pass, reset, save -> load -> same."""

from __future__ import annotations

import tomllib
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import TINY_CONFIG, make_log

from widedeep.config import from_dict
from widedeep.features.quantile import Quantiles
from widedeep.features.transform import FeatureSet
from widedeep.features.vocab import Vocabulary



RNG = np.random.default_rng(0)
TOKENS = pa.array([f"t{int(x)}" for x in RNG.zipf(1.3, 3000) % 200])
VALUES = RNG.lognormal(size=3000)


def vocab_fit(v: Vocabulary, part: slice) -> Vocabulary:
    d = pc.dictionary_encode(TOKENS[part])
    return v.partial_fit(d.dictionary, d.indices.to_numpy())


def vocab_out(v: Vocabulary) -> Any:
    return v.finalize().lookup(TOKENS).tolist()


def quant_fit(q: Quantiles, part: slice) -> Quantiles:
    return q.partial_fit(VALUES[part])


def quant_out(q: Quantiles) -> Any:
    q.finalize()
    return q.normalize(VALUES, q.bucketize(VALUES)).tolist()


LOG = make_log(1000, 7)


def fs_fit(fs: FeatureSet, part: slice) -> FeatureSet:
    return fs.partial_fit(LOG.slice(part.start or 0, (part.stop or len(LOG)) - (part.start or 0)))


def fs_out(fs: FeatureSet) -> Any:
    e = fs.transform(LOG)
    return [e.ids.tolist(), e.dense.tolist(), {k: [a.tolist() for a in v] for k, v in e.lists.items()}]


def new_fs() -> FeatureSet:
    return FeatureSet.from_config(from_dict(tomllib.loads(TINY_CONFIG)))


CASES = {
    "vocabulary": (lambda: Vocabulary(min_count=2), vocab_fit, vocab_out, lambda v: Vocabulary.from_dict(v.to_dict(), 2)),
    "quantiles": (lambda: Quantiles(20), quant_fit, quant_out, lambda q: Quantiles.from_dict(q.to_dict(), 20)),
    "feature_set": (new_fs, fs_fit, fs_out, lambda fs: FeatureSet.from_dict(fs.to_dict())),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Callable, Callable, Callable, Callable]:
    return CASES[request.param]


def test_streaming_equals_one_pass(case) -> None:
    new, fit, out, _ = case
    whole = out(fit(new(), slice(0, 3000 if new is not new_fs else 1000)))
    half = 1500 if new is not new_fs else 500
    stream = new()
    fit(stream, slice(0, half))
    fit(stream, slice(half, None))
    assert out(stream) == whole


def test_merge_equals_one_pass(case) -> None:
    new, fit, out, _ = case
    half = 1500 if new is not new_fs else 500
    whole = out(fit(new(), slice(0, None)))
    assert out(fit(new(), slice(0, half)).merge(fit(new(), slice(half, None)))) == whole


def test_reset_forgets(case) -> None:
    new, fit, out, _ = case
    half = 1500 if new is not new_fs else 500
    a = fit(new(), slice(half, None))
    b = fit(fit(new(), slice(0, half)).reset(), slice(half, None))
    assert out(a) == out(b)


def test_round_trip_gives_the_same_output(case) -> None:
    new, fit, out, load = case
    a = fit(new(), slice(0, None))
    expect = out(a)
    assert out(load(a)) == expect
