"""Scorer on a trained model: same numbers as the artifact's own predict, context-once and sub-batch parity, precise errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from widedeep.artifact import Model
from widedeep.serve.errors import RequestError
from widedeep.serve.scorer import Scorer, top_k

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7", "app12"], "user_id": 42, "age": 31.5}


def candidates(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"impression_app": f"app{int(a)}", "price": float(p)} for a, p in zip(rng.integers(0, 30, n), rng.exponential(2, n).round(2))]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Model:
    return Model.load(tiny_model)


@pytest.fixture(scope="module")
def scorer(tiny_model: Path) -> Scorer:
    s = Scorer.load(tiny_model, sub_batch=200, threads=1)
    yield s
    s.close()


def test_score_matches_the_artifact_predict(scorer: Scorer, model: Model):
    rows = [{**CONTEXT, **c} for c in candidates(50)]
    rows[3] = {**rows[3], "age": None, "country": "never-seen", "installed_apps": None}  # missing and OOV values
    got = scorer.score(rows)
    want = model.predict(rows)
    assert got.shape == (50,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert scorer.version == model.version and len(scorer.version) == 12


def test_recommend_equals_scoring_every_merged_record(scorer: Scorer, model: Model):
    cands = candidates(120, seed=1)
    ranked = scorer.recommend(CONTEXT, cands, k=15)
    p = model.predict([{**CONTEXT, **c} for c in cands])
    order = np.lexsort((np.arange(len(p)), -p))[:15]
    np.testing.assert_allclose(ranked.score, p[ranked.index], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sort(ranked.score)[::-1], p[order], rtol=1e-5, atol=1e-6)
    assert list(ranked.score) == sorted(ranked.score, reverse=True)
    assert len(ranked) == 15 and len(list(ranked)) == 15


def test_context_half_changes_nothing(tiny_model: Path):
    cands = candidates(200, seed=2)
    plain = Scorer.load(tiny_model, context_half=False)
    split = Scorer.load(tiny_model)
    assert split.network.context_half(frozenset(CONTEXT)) is not None  # the fast path is really taken
    a = plain.score([{**CONTEXT, **c} for c in cands])
    b = split.recommend(CONTEXT, cands, k=200)
    np.testing.assert_allclose(b.score, a[b.index], rtol=1e-5, atol=1e-6)


def test_a_candidate_field_overrides_the_same_context_field(scorer: Scorer, model: Model):
    cands = candidates(20, seed=4)
    cands = [{**c, "age": 20.0 + i} for i, c in enumerate(cands)]  # age varies by candidate although the context has it
    ranked = scorer.recommend(CONTEXT, cands, k=20)
    p = model.predict([{**CONTEXT, **c} for c in cands])
    np.testing.assert_allclose(ranked.score, p[ranked.index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "hybrid"])
@pytest.mark.parametrize("sub_batch,threads", [(100, 2), (50, 4), (33, 3), (1, 2)])
def test_parallel_sub_batches_equal_the_unsplit_batch(tiny_model: Path, sub_batch: int, threads: int, backend: str):
    if backend == "hybrid":
        pytest.importorskip("onnxruntime")
    cands = candidates(200, seed=3)
    whole = Scorer.load(tiny_model, sub_batch=200, threads=1, backend=backend).recommend(CONTEXT, cands, k=200)
    s = Scorer.load(tiny_model, sub_batch=sub_batch, threads=threads, backend=backend)
    try:
        split = s.recommend(CONTEXT, cands, k=200)
        np.testing.assert_array_equal(split.index, whole.index)
        np.testing.assert_allclose(split.score, whole.score, rtol=1e-6, atol=1e-7)
    finally:
        s.close()


def test_unknown_categorical_values_take_the_oov_id(scorer: Scorer):
    ranked = scorer.recommend({**CONTEXT, "country": "atlantis"}, [{"impression_app": "brand-new-app", "price": 1.0}], k=3)
    assert len(ranked) == 1 and 0.0 < ranked.score[0] < 1.0


def test_top_k_breaks_ties_by_position():
    r = top_k(np.array([0.5, 0.9, 0.5, 0.9, 0.1], dtype=np.float32), 3)
    assert r.index.tolist() == [1, 3, 0]
    assert top_k(np.array([0.2, 0.3], dtype=np.float32), 10).index.tolist() == [1, 0]


@pytest.mark.parametrize(
    "context,cands,k,field,words",
    [
        (CONTEXT, [{"impression_app": "app1", "price": 1.0}] * 3 + [{"impression_app": "app1", "price": "abc"}], 5,
         "candidates[3].price", "number"),
        (CONTEXT, [{"impression_app": "app1", "price": 1.0}, {"impression_app": "app1"}], 5, "candidates[1].price", "missing"),
        ({k: v for k, v in CONTEXT.items() if k != "age"}, [{"impression_app": "app1", "price": 1.0}], 5, "context.age", "missing"),
        (CONTEXT, [{"impression_app": ["app1"], "price": 1.0}], 5, "candidates[0].impression_app", "string"),
        ({**CONTEXT, "installed_apps": "app1"}, [{"impression_app": "app1", "price": 1.0}], 5, "context.installed_apps", "list"),
        ({**CONTEXT, "age": {"v": 1}}, [{"impression_app": "app1", "price": 1.0}], 5, "context.age", "number"),
        (CONTEXT, [], 5, "candidates", "empty"),
        (CONTEXT, [{"impression_app": "app1", "price": 1.0}, 7], 5, "candidates[1]", "object"),
        (CONTEXT, [{"impression_app": "app1", "price": 1.0}], 0, "k", "positive"),
        (CONTEXT, [{"impression_app": "app1", "price": 1.0}], True, "k", "positive"),
        ([1], [{"impression_app": "app1", "price": 1.0}], 5, "context", "object"),
    ],
)
def test_bad_requests_name_the_field(scorer: Scorer, context, cands, k, field, words):
    with pytest.raises(RequestError) as e:
        scorer.recommend(context, cands, k)
    assert e.value.field == field
    assert words in e.value.message


def test_bad_instances_name_the_field(scorer: Scorer):
    rows = [{**CONTEXT, **c} for c in candidates(4)]
    rows[2] = {**rows[2], "user_id": 1.5}
    with pytest.raises(RequestError) as e:
        scorer.score(rows)
    assert e.value.field == "instances[2].user_id"
    with pytest.raises(RequestError) as e:
        scorer.score([])
    assert e.value.field == "instances"
