"""Columnar candidates (field -> one value per candidate): the same encodings and scores as the same candidates given as
objects, checked column by column with errors that name the value (``candidates.price[17]``), over HTTP too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_log
from test_features_small import TOKENS, features, identical, records

from widedeep.config import load
from widedeep.features.columnar import Rows
from widedeep.features.columns import FeatureError
from widedeep.features.transform import FeatureSet
from widedeep.serve.logs import Rolling, ServerLogs
from widedeep.serve.errors import RequestError
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5}


def columns_of(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def cands(n: int) -> list[dict]:
    return [{"impression_app": f"app{i % 33}", "price": i % 3 if i % 2 else float(i % 7) / 2} for i in range(n)]


@pytest.fixture(scope="module")
def fitted() -> FeatureSet:
    recs = [{k: (str(v) if isinstance(v, int) and k in ("c", "h") else v) for k, v in r.items()} for r in records(300, 0)]
    for r in recs:
        for k in ("tags", "hl"):
            r[k] = None if r[k] is None else [None if t is None else str(t) for t in r[k]]
    return features().fit(pa.table({**{k: [r[k] for r in recs] for k in ("c", "tags", "h", "hl", "x")}, "y": [0] * 300}))


# -- the transform -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("in_context", [(), ("c", "x"), ("c", "tags", "x"), ("tags", "hl"), ("c", "tags", "h", "hl")])
def test_columns_encode_as_the_same_records(fitted: FeatureSet, seed: int, in_context: tuple[str, ...]) -> None:
    # OOV, nulls, "", integer tokens, empty and null lists, null and "" list elements, NaN, every cross kind
    recs = records(200, seed)
    context = {k: recs[0][k] for k in in_context}
    rows = [{k: v for k, v in r.items() if k not in in_context} for r in recs]
    expected = fitted.transform_records([{**context, **r} for r in rows])  # the general path, without a plan
    identical(fitted.transform_columns(context, columns_of(rows)), expected)
    identical(fitted.transform_columns(context, columns_of(rows)), expected)  # warm memos and float block
    identical(fitted.transform_request(context, rows), expected)  # the same plan, from the candidate objects


def test_one_row_numpy_columns_and_no_rows(fitted: FeatureSet) -> None:
    recs = records(50, 3)
    one = fitted.transform_columns({}, columns_of(recs[7:8]))
    identical(one, fitted.transform_records(recs[7:8]))
    cols = columns_of(recs)
    cols["x"] = np.array([np.nan if v is None else v for v in cols["x"]])  # NaN and None both mean missing
    cols["c"] = np.array([str(v) for v in cols["c"]], dtype=object)
    want = [{**r, "c": str(r["c"])} for r in recs]
    identical(fitted.transform_columns({}, cols), fitted.transform_records(want))
    assert len(fitted.transform_columns({"c": "a"}, {})) == 0 and len(fitted.transform_columns({}, {"x": []})) == 0


def test_tiny_config_columns_equal_records(tiny_config: Path) -> None:
    fs = FeatureSet.from_config(load(tiny_config)).fit(pq.read_table(tiny_config.parent / "train.parquet"))
    recs = make_log(300, 11).drop_columns(["installed"]).to_pylist()
    identical(fs.transform_columns({}, columns_of(recs)), fs.transform_records(recs))
    context = {"country": "de", "user_id": 7, "age": None}
    rows = [{k: v for k, v in r.items() if k not in context} for r in recs]
    expected = fs.transform_records([{**context, **r} for r in rows])
    identical(fs.transform_columns(context, columns_of(rows)), expected)
    identical(fs.transform_request(context, rows), expected)


@pytest.mark.parametrize(
    "column,values,field,message",
    [
        ("x", [1.0, "3", 2.0], "x", "record 1: expected a number, got str '3'"),
        ("c", ["a", 1.5, "b"], "c", "record 1: expected a string or integer, got float 1.5"),
        ("c", ["a", "b", ["a"]], "c", "record 2: expected a string or integer, got list ['a']"),
        ("tags", [["a"], "a,b", []], "tags", "record 1: expected a list, got str 'a,b'"),
        ("x", [1.0, 2.0**60, 2], "x", "record 1: the integer"),
    ],
)
def test_a_bad_value_names_its_column_and_row(fitted: FeatureSet, column: str, values: list, field: str, message: str) -> None:
    recs = records(3, 4)
    cols = columns_of(recs)
    cols[column] = [int(v) if isinstance(v, float) and v > 2**53 else v for v in values]
    with pytest.raises(FeatureError) as e:
        fitted.transform_columns({}, cols)
    assert e.value.field == field and message in str(e.value)


def test_columns_of_other_lengths_or_not_lists_name_the_column(fitted: FeatureSet) -> None:
    cols = columns_of(records(4, 5))
    with pytest.raises(FeatureError, match="has 3 values where 'c' has 4") as e:
        fitted.transform_columns({}, {**cols, "h": cols["h"][:3]})
    assert e.value.field == "h"
    with pytest.raises(FeatureError, match="expected a list of values") as e:
        fitted.transform_columns({}, {**cols, "x": 3.5})
    assert e.value.field == "x"


def test_the_plan_encodes_usual_requests_itself(fitted: FeatureSet) -> None:
    # every context value (None, "", an integer, OOV) through the context's ids and its cross c_h as Python ints; the
    # general path (with the context given as a column of one value) is the reference
    recs = records(60, 9)
    cols = {"c": [r["c"] for r in recs], "x": [r["x"] for r in recs]}  # with None and NaN among the numbers
    for value in TOKENS:
        context = {"c": value, "tags": ["a", None], "h": value, "hl": [value, "zzz"], "x": 2.5}
        for given in (cols, {k: v for k, v in cols.items() if k != "c"}):
            plan = fitted._plan(given)
            got = plan.encode(fitted, {**context, **{k: None for k in given}}, given, 60, True)
            assert got is not None, (value, list(given))
            rows = [{**context, **{k: v[i] for k, v in given.items()}} for i in range(60)]
            identical(got, fitted.transform_records(rows))
            identical(fitted.transform_columns(context, given), got)


def test_the_plan_leaves_other_values_to_the_general_path(fitted: FeatureSet) -> None:
    cols = columns_of(records(20, 10))
    plan = fitted._plan(cols)
    assert plan.encode(fitted, {}, cols, 20, True) is not None
    for name, value in [("x", True), ("x", "3"), ("x", 2**60), ("c", 1.5), ("c", True), ("h", ["a"])]:
        bad = {**cols, name: [value, *cols[name][1:]]}
        assert plan.encode(fitted, {}, bad, 20, True) is None, (name, value)
    for name, value in [("x", 2**40), ("c", 42), ("x", 1e300), ("x", -np.inf)]:  # converted exactly, or left to Arrow
        other = {**cols, name: [*cols[name][:-1], value]}
        rows = [dict(zip(other, r)) for r in zip(*other.values())]
        identical(fitted.transform_columns({}, other), fitted.transform_records(rows))
    ctx = {k: v[0] for k, v in cols.items() if k in ("c", "h")}
    rest = {k: v for k, v in cols.items() if k not in ctx}
    assert fitted._plan(rest).encode(fitted, {"c": "a"}, rest, 20, True) is None  # "h" missing: strict raises, else None
    with pytest.raises(FeatureError, match="record 0 has no field 'h'"):
        fitted.transform_columns({"c": "a"}, rest)
    lenient = fitted.transform_columns({"c": "a"}, rest, strict=False)
    assert (lenient.ids[:, fitted.id_slots.index("h")] == 1).all()


@pytest.mark.parametrize(
    "xs,fast",
    [
        ([2.5, 1e9, -4.0, float("nan"), None, 3], True),  # numpy reads them all; None and NaN are missing
        ([2.5, 7, 1.0, 0.0, -0.0], True),  # a 0 or a 1: each value's type is checked, and they are numbers
        ([2.5, True, 3.0], False),  # a boolean, which numpy would read as 1.0
        ([2, False, 3], False),
        ([2.5, "3", 1.5], False),
        ([2.5, [1.0], 1.5], False),
        ([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], False),  # lists of numbers: not numbers
        ([2.5, 2**53, 1.5], False),  # an integer past float64's exact range (the general path raises)
        ([2.5, -(2**63), 1.5], False),
        ([2.5, 1e300, 1.5], True),  # a float that large is fine
        ([np.float32(0.1), 2.5, 3.5], True),
    ],
)
def test_numbers_take_numpy_or_the_exact_check(fitted: FeatureSet, xs: list, fast: bool) -> None:
    cols = {"c": [("a", "b", "zzz")[i % 3] for i in range(len(xs))], "x": xs}
    context = {"tags": ["a"], "h": "b", "hl": None}
    assert (fitted._plan(cols).encode(fitted, context, cols, len(xs), True) is not None) == fast
    rows = [{**context, "c": c, "x": x} for c, x in zip(cols["c"], xs)]
    try:
        expected = fitted.transform_records(rows)
    except FeatureError as e:
        with pytest.raises(FeatureError) as got:
            fitted.transform_columns(context, cols)
        assert str(got.value) == str(e)
        return
    identical(fitted.transform_columns(context, cols), expected)


def test_a_refit_remakes_the_plan() -> None:
    fs = features()
    table = {"tags": [["a"]] * 3, "h": ["a"] * 3, "hl": [[]] * 3, "x": [1.0, 2.0, 3.0]}
    cols = {"c": ["a", "b"], "x": [1.0, 3.0]}
    context = {"tags": ["a"], "h": "a", "hl": []}
    fs.fit(pa.table({"c": ["a", "b", "b"], **table}))
    assert fs.transform_columns(context, cols).ids[:, 0].tolist() == [4, 3]  # b is more frequent
    fs.fit(pa.table({"c": ["a", "a", "b"], **{**table, "x": [10.0, 20.0, 30.0]}}))
    enc = fs.transform_columns(context, cols)
    assert enc.ids[:, 0].tolist() == [3, 4] and enc.dense[0, 0] == 0.0  # 1.0 is below the new minimum
    fs.vocabs_["c"] = type(fs.vocabs_["c"]).from_dict({"tokens": ["b", "a"], "counts": [2, 1]})  # replaced in place
    assert fs.transform_columns(context, cols).ids[:, 0].tolist() == [4, 3]


def test_one_candidate_and_a_memo_that_starts_over(fitted: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    import widedeep.features.small as small_mod

    recs = records(80, 12)
    expected = fitted.transform_records(recs)
    monkeypatch.setattr(small_mod, "MEMO_LIMIT", 4)
    for i in (0, 5, 79):
        identical(fitted.transform_columns({}, columns_of(recs[i : i + 1])), fitted.transform_records(recs[i : i + 1]))
    identical(fitted.transform_columns({}, columns_of(recs)), expected)


def test_rows_show_columns_as_records() -> None:
    rows = Rows({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert len(rows) == 3 and rows[1] == {"a": 2, "b": "y"} and rows[-1] == {"a": 3, "b": "z"} and list(rows)[0]["b"] == "x"
    with pytest.raises(IndexError):
        rows[3]


# -- the scorer ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(tiny_model: Path) -> Scorer:
    return Scorer.load(tiny_model, sub_batch=16, threads=2)


def test_scores_equal_the_objects_scores_exactly(scorer: Scorer) -> None:
    rng = np.random.default_rng(0)
    rows = [{**c, "installed_apps": [f"app{j}" for j in rng.integers(0, 30, rng.integers(0, 4))] if i % 5 else None,
             "age": None if i % 7 == 0 else float(rng.normal(35, 10))} for i, c in enumerate(cands(45))]  # fmt: skip
    for context, cand in [
        (CONTEXT, cands(45)),  # multi-valued and continuous features in the context
        ({"country": "fr", "user_id": "u9"}, rows),  # ... and in the candidates, with nulls
    ]:
        want, got = scorer.recommend(context, cand, k=45), scorer.recommend(context, columns_of(cand), k=45)
        assert np.array_equal(got.index, want.index) and np.array_equal(got.score, want.score)
        full = [{**context, **c} for c in cand]
        assert np.array_equal(scorer.score(columns_of(full)), scorer.score(full))


@pytest.mark.parametrize(
    "context,columns,field",
    [
        (CONTEXT, {"impression_app": ["a", "b"], "price": [1, "x"]}, "candidates.price[1]"),
        (CONTEXT, {"impression_app": ["a", "b"]}, "candidates.price"),  # in neither the columns nor the context
        ({**CONTEXT, "age": "old"}, {"impression_app": ["a"], "price": [1]}, "context.age"),
        (CONTEXT, {"impression_app": ["a", "b"], "price": [1]}, "candidates.price"),
        (CONTEXT, {"impression_app": [], "price": []}, "candidates"),
        (CONTEXT, {}, "candidates"),
    ],
)
def test_scorer_errors_name_the_value(scorer: Scorer, context: dict, columns: dict, field: str) -> None:
    with pytest.raises(RequestError) as e:
        scorer.recommend(context, columns)
    assert e.value.field == field


# -- over HTTP -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_model: Path):
    live = LiveScorer(tiny_model, lambda p: Scorer.load(p, sub_batch=16, threads=2))
    app = create_app(live, Limits(max_body_bytes=64 * 1024, max_candidates=50, max_string_bytes=1000))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def test_http_columns_answer_as_objects(client: httpx.Client) -> None:
    rows = cands(40)
    want = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": rows, "k": 7})
    got = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": columns_of(rows), "k": 7})
    assert want.status_code == got.status_code == 200, got.text
    assert got.json()["items"] == want.json()["items"]
    full = [{**CONTEXT, **c} for c in rows[:9]]
    want, got = (client.post("/v1/score", json={"instances": x}) for x in (full, columns_of(full)))
    assert got.status_code == 200 and got.json()["scores"] == want.json()["scores"]


USER = {"country": "us", "user_id": 1, "age": 3}  # a context without installed_apps: the candidates carry it


def _body(columns: dict, context: dict = CONTEXT) -> str:
    return json.dumps({"context": context, "candidates": columns, "k": 3}, allow_nan=True)


def _cols(n: int = 20, **changes) -> dict:
    cols = columns_of(cands(n))
    for name, (i, value) in changes.items():
        cols[name] = [*cols[name][:i], value, *cols[name][i + 1 :]]
    return cols


@pytest.mark.parametrize(
    "body,field",
    [
        (_body(_cols(price=(3, "abc"))), "candidates.price[3]"),  # a wrong type
        (_body(_cols(price=(17, True))), "candidates.price[17]"),  # a boolean
        (_body(_cols(impression_app=(2, False))), "candidates.impression_app[2]"),
        (_body(_cols(price=(17, math.nan))), "candidates.price[17]"),  # NaN is no JSON number
        (_body(_cols(price=(5, math.inf))), "candidates.price[5]"),
        (_body(_cols(impression_app=(4, ["app1"]))), "candidates.impression_app[4]"),  # a list for a scalar
        (_body(_cols(price=(6, {"a": 1}))), "candidates.price[6]"),
        (_body(_cols(impression_app=(5, "x" * 1001))), "candidates.impression_app[5]"),  # past max_string_bytes
        (_body(_cols(impression_app=(8, "é" * 501))), "candidates.impression_app[8]"),  # 1002 UTF-8 bytes
        (_body({**_cols(), "impression_app": [None, 7, *["a"] * 10, "é" * 501, *["b"] * 7]}), "candidates.impression_app[12]"),
        (_body({**_cols(), "installed_apps": [["a"], [], ["b", "y" * 1001], *[[]] * 17]}, USER),
         "candidates.installed_apps[2][1]"),  # fmt: skip
        (_body({**_cols(), "installed_apps": [["a"], ["b", True], *[[]] * 18]}, USER), "candidates.installed_apps[1][1]"),
        (_body({**_cols(), "price": [1.0] * 19}), "candidates.price"),  # another length than the first column
        (_body({**_cols(), "price": 2.5}), "candidates.price"),  # not a list
        (_body({"impression_app": ["a", "b"]}), "candidates.price"),  # a missing feature column
        (_body(_cols(51)), "candidates"),  # too many candidates
        (_body({"impression_app": [], "price": []}), "candidates"),
        (_body({}), "candidates"),
        (_body(_cols(), {**CONTEXT, "age": [1]}), "context.age"),
        (_body(_cols(), {**CONTEXT, "user_id": True}), "context.user_id"),
    ],
)
def test_http_errors_name_the_value(client: httpx.Client, body: str, field: str) -> None:
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["message"]


def test_http_values_just_within_the_limits_and_score_errors(client: httpx.Client) -> None:
    cols = {"impression_app": ["x" * 1000, "é" * 500, "true"], "price": [1, 2.5, None]}
    r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cols, "k": 3})
    assert r.status_code == 200, r.text
    full = columns_of([{**CONTEXT, **c} for c in cands(3)])
    for changes, field in [({"user_id": None}, "instances.user_id"), ({"age": [1, True, 2]}, "instances.age[1]")]:
        doc = {k: v for k, v in {**full, **changes}.items() if v is not None}
        r = client.post("/v1/score", json={"instances": doc})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_openapi_request_models_accept_both_shapes(client: httpx.Client) -> None:
    spec = json.dumps(client.get("/openapi.json").json()["paths"]["/v1/recommend"]["post"]["requestBody"])
    assert '"anyOf"' in spec and "an object of columns" in spec


def test_impressions_of_columnar_requests_are_logged_as_received(tiny_model: Path, tmp_path: Path) -> None:
    live = LiveScorer(tiny_model, lambda p: Scorer.load(p, sub_batch=16, threads=1))
    logs = ServerLogs(tmp_path, 1.0, Rolling(seconds=3600))
    rows = cands(9)
    with BackgroundServer(create_app(live, Limits(max_candidates=50), logs)) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/recommend", json={"context": CONTEXT, "candidates": columns_of(rows), "k": 4})
        assert r.status_code == 200, r.text
    table = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "impressions").glob("part-*.parquet"))])
    logged = table.sort_by("position").to_pylist()
    assert [x["index"] for x in logged] == [it["index"] for it in r.json()["items"]]
    for x in logged:
        want = rows[x["index"]]
        assert x["impression_app"] == want["impression_app"] and x["price"] == float(want["price"])
        assert x["country"] == "us" and x["installed_apps"] == CONTEXT["installed_apps"] and x["user_id"] == "42"
