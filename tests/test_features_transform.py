"""FeatureSet: the one transform. Reserved ids, layout, file == records == request, CSV == Parquet, save/load, errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import make_log

from widedeep.config import CrossSpec, FeatureSpec, load
from widedeep.features.columns import FeatureError
from widedeep.features.encoded import Encoded
from widedeep.features.io import iter_batches
from widedeep.features.transform import FeatureSet


def same(a: Encoded, b: Encoded) -> None:
    assert np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.dense, b.dense)
    assert list(a.lists) == list(b.lists)
    for k in a.lists:
        assert np.array_equal(a.lists[k][0], b.lists[k][0]) and np.array_equal(a.lists[k][1], b.lists[k][1]), k


@pytest.fixture(scope="module")
def fitted(tiny_config: Path) -> FeatureSet:
    return FeatureSet.from_config(load(tiny_config)).fit(pq.read_table(tiny_config.parent / "train.parquet"))


def small() -> FeatureSet:
    feats = (
        FeatureSpec("c", "categorical"),
        FeatureSpec("tags", "categorical", multi_valued=True),
        FeatureSpec("h", "hashed", buckets=10),
        FeatureSpec("x", "continuous", quantiles=4),
    )
    return FeatureSet(feats, (CrossSpec("c_x_tags", ("c", "tags"), 50), CrossSpec("c_x_x", ("c", "x"), 40)), "y")


def small_table() -> pa.Table:
    return pa.table(
        {
            "c": pa.array(["a", "b", "a", None, "", "zzz"]),
            "tags": pa.array([["t1", "t2"], [], None, ["t1", None, ""], ["t2"], ["t9"]], pa.list_(pa.string())),
            "h": pa.array([1, 2, None, 4, 5, 6], pa.int64()),
            "x": pa.array([1.0, 2.0, float("nan"), None, 3.0, 4.0], pa.float64()),
            "y": pa.array([0, 1, 0, 1, 0, 1], pa.int8()),
        }
    )


def test_layout(fitted: FeatureSet) -> None:
    assert fitted.id_slots == ("country", "impression_app", "user_id", "age", "price", "country_x_impression")
    assert fitted.list_slots == ("installed_apps", "installed_x_impression")
    assert fitted.dense_names == ("age", "age__null", "price", "price__null")
    assert fitted.input_columns == ("country", "installed_apps", "impression_app", "user_id", "age", "price")
    card = fitted.cardinality
    assert card["country"] == 3 + len(fitted.vocabulary("country")) and card["user_id"] == 3 + 64
    assert card["installed_x_impression"] == 3 + 512 and card["age"] == 3 + len(fitted.boundaries("age")) + 1
    enc = fitted.transform(make_log(300, 5))
    for j, name in enumerate(fitted.id_slots):
        assert 1 <= enc.ids[:, j].min() and enc.ids[:, j].max() < card[name], name
    assert enc.label.dtype == np.uint8 and enc.ids.dtype == np.int32 and enc.dense.dtype == np.float32


def test_reserved_ids() -> None:
    fs = small()
    t = small_table()
    fs.fit(t.slice(0, 3))  # vocab c: a(2), b; tags: t1, t2; x boundaries from 1.0, 2.0
    enc = fs.transform(t)
    c, h, x, cx = (enc.ids[:, fs.id_slots.index(n)] for n in ("c", "h", "x", "c_x_x"))
    assert fs.vocabulary("c") == ["a", "b"] and c.tolist() == [3, 4, 3, 1, 1, 2]  # null and "" missing; unseen OOV
    assert h[2] == 1 and all(3 <= v < 13 for i, v in enumerate(h) if i != 2)  # hashed slots never give OOV
    assert x[2] == 1 and x[3] == 1 and x[0] >= 3  # NaN and null are both missing
    assert enc.dense[2].tolist() == [0.0, 1.0] and enc.dense[0, 1] == 0.0
    assert cx[3] == 1 and cx[4] == 1 and cx[5] >= 3  # a cross with a missing component is missing; OOV still crosses
    values, offsets = enc.lists["tags"]
    rows = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(6)]
    assert rows == [[3, 4], [], [1], [3], [4], [2]]  # null list -> [1]; null and "" elements dropped; unseen -> 2
    values, offsets = enc.lists["c_x_tags"]
    crossed = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(6)]
    assert len(crossed[0]) == 2 and crossed[1] == [] and crossed[2] == [1] and crossed[3] == [1] and crossed[4] == [1]
    assert enc.label.tolist() == [0, 1, 0, 1, 0, 1]


def test_file_and_records_give_identical_encodings(fitted: FeatureSet, tiny_config: Path) -> None:
    table = pq.read_table(tiny_config.parent / "eval.parquet")
    from_file = [fitted.transform(b) for b in iter_batches([tiny_config.parent / "eval.parquet"], dictionary=True)]
    records = table.drop_columns(["installed"]).to_pylist()
    served = fitted.transform_records(records)
    same(Encoded(np.concatenate([e.ids for e in from_file]), np.concatenate([e.dense for e in from_file]),
                 {k: _cat([e.lists[k] for e in from_file]) for k in fitted.list_slots}), served)  # fmt: skip
    assert served.label is None


def _cat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([v for v, _ in parts])
    offsets, base = [np.zeros(1, np.int64)], 0
    for v, o in parts:
        offsets.append(o[1:] + base)
        base += len(v)
    return values, np.concatenate(offsets)


def test_request_broadcasts_context(fitted: FeatureSet) -> None:
    recs = make_log(50, 9).to_pylist()
    context = {k: recs[0][k] for k in ("country", "installed_apps", "user_id", "age")}
    candidates = [{k: r[k] for k in ("impression_app", "price")} for r in recs]
    same(fitted.transform_request(context, candidates), fitted.transform_records([{**context, **c} for c in candidates]))
    assert len(fitted.transform_request(context, [])) == 0


def test_csv_and_parquet_agree(fitted: FeatureSet, tmp_path: Path) -> None:
    t = make_log(200, 3)
    joined = ["|".join(x) if x is not None else None for x in t["installed_apps"].to_pylist()]
    csv_table = t.set_column(1, "installed_apps", pa.array(joined, pa.string()))
    csv_table = csv_table.set_column(3, "user_id", csv_table["user_id"].cast(pa.string()))
    pcsv.write_csv(csv_table, tmp_path / "log.csv")
    types = {"installed_apps": pa.string(), "user_id": pa.string(), "country": pa.string(), "impression_app": pa.string()}
    batches = list(iter_batches([tmp_path / "log.csv"], types=types))
    from_csv = fitted.transform(pa.Table.from_batches(batches))
    from_parquet = fitted.transform(t)
    empty_lists = np.array([x == [] for x in t["installed_apps"].to_pylist()])
    assert empty_lists.any()  # an empty list is an empty CSV field: also an empty list after the round trip
    same(from_csv, from_parquet)


def test_save_load_round_trip_is_exact_and_deterministic(fitted: FeatureSet, tiny_config: Path, tmp_path: Path) -> None:
    fitted.save(tmp_path / "a.json")
    again = FeatureSet.from_config(load(tiny_config)).fit(pq.read_table(tiny_config.parent / "train.parquet"))
    again.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = FeatureSet.load(tmp_path / "a.json")
    t = make_log(300, 11)
    same(loaded.transform(t), fitted.transform(t))
    assert loaded.cardinality == fitted.cardinality and loaded.vocabulary("country") == fitted.vocabulary("country")
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["features"][0]["vocabulary"]["tokens"] == fitted.vocabulary("country")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temp files left behind


def test_bucket_embedded_follows_the_config_and_the_data(tiny_config: Path) -> None:
    """"auto" embeds the bucket of a feature whose most common value holds at least half of its values (a zero-inflated
    amount), not of a smooth one; true and false are obeyed; the choice survives features.json."""
    cfg = load(tiny_config)
    table = pq.read_table(tiny_config.parent / "train.parquet")
    price = table.column("price").to_numpy()
    inflated = table.set_column(table.schema.get_field_index("price"), "price", pa.array(np.where(np.arange(len(price)) % 10 < 7, 0.0, price)))
    assert FeatureSet.from_config(cfg).fit(table).bucket_embedded == frozenset()  # age normal, price exponential
    fs = FeatureSet.from_config(cfg).fit(inflated)
    assert fs.bucket_embedded == {"price"}
    assert FeatureSet.from_dict(json.loads(json.dumps(fs.to_dict()))).bucket_embedded == {"price"}
    told = tuple(replace(f, embed_buckets=f.name == "age") if f.type == "continuous" else f for f in cfg.features)
    assert FeatureSet(told, cfg.crosses, cfg.data.label).fit(inflated).bucket_embedded == {"age"}


def test_feature_files_without_newer_keys_keep_their_old_meaning(fitted: FeatureSet) -> None:
    """features.json written before the interpolated normalization and bucket embeddings: "bucket", and no embedding
    (so a model trained then rebuilds with the same parameters)."""
    doc = fitted.to_dict()
    for f in doc["features"]:
        if f["type"] == "continuous":
            del f["normalization"], f["embed_buckets"]
    old = FeatureSet.from_dict(doc)
    assert [(f.normalization, f.embed_buckets) for f in old.features if f.type == "continuous"] == [("bucket", False)] * sum(
        f.type == "continuous" for f in fitted.features
    )
    assert all(f.embed_buckets == "auto" for f in fitted.features if f.type == "continuous")


def test_load_errors_name_the_file(fitted: FeatureSet, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        FeatureSet.load(tmp_path / "bad.json")
    doc = fitted.to_dict()
    doc["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"v\.json.*version 99"):
        FeatureSet.load(tmp_path / "v.json")
    with pytest.raises(ValueError, match="missing.json"):
        FeatureSet.load(tmp_path / "missing.json")


def test_merge_and_streaming_equal_one_fit(tiny_config: Path) -> None:
    cfg = load(tiny_config)
    t = pq.read_table(tiny_config.parent / "train.parquet")
    whole = FeatureSet.from_config(cfg).fit(t)
    a = FeatureSet.from_config(cfg).fit(t.slice(0, 700))
    b = FeatureSet.from_config(cfg).fit(t.slice(700))
    assert a.merge(b).to_dict() == whole.to_dict()
    streamed = FeatureSet.from_config(cfg)
    for batch in t.to_batches(max_chunksize=300):
        streamed.partial_fit(batch)
    assert streamed.to_dict() == whole.to_dict()


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"country": 3.5}, "country", "expected a string or integer"),
        ({"country": float("nan")}, "country", "expected a string or integer"),
        ({"country": ["us"]}, "country", "expected a string or integer"),
        ({"installed_apps": "app1"}, "installed_apps", "expected a list"),
        ({"age": "old"}, "age", "expected a number"),
    ],
)
def test_serving_errors_name_the_field(fitted: FeatureSet, change: dict, field: str, message: str) -> None:
    rec = make_log(3, 1).drop_columns(["installed"]).to_pylist()
    rec[1].update(change)
    with pytest.raises(FeatureError, match=message) as err:
        fitted.transform_records(rec)
    assert err.value.field == field and "record 1" in str(err.value)


def test_missing_field_is_an_error_unless_not_strict(fitted: FeatureSet) -> None:
    rec = make_log(2, 1).drop_columns(["installed"]).to_pylist()
    del rec[1]["age"]
    with pytest.raises(FeatureError, match="record 1 has no field 'age'") as err:
        fitted.transform_records(rec)
    assert err.value.field == "age"
    enc = fitted.transform_records(rec, strict=False)
    assert enc.ids[1, fitted.id_slots.index("age")] == 1 and enc.dense[1, 1] == 1.0


def test_serving_accepts_numbers_for_tokens_and_none_or_nan_for_missing(fitted: FeatureSet) -> None:
    rec = make_log(2, 1).drop_columns(["installed"]).to_pylist()
    as_text = [{**r, "user_id": str(r["user_id"])} for r in rec]
    same(fitted.transform_records(rec), fitted.transform_records(as_text))
    a = fitted.transform_records([{**rec[0], "age": None}])
    b = fitted.transform_records([{**rec[0], "age": math.nan}])
    same(a, b)
    assert a.ids[0, fitted.id_slots.index("age")] == 1


def test_table_errors_name_the_column(fitted: FeatureSet) -> None:
    t = make_log(10, 1)
    with pytest.raises(FeatureError, match="missing column 'age'"):
        fitted.transform(t.drop_columns(["age"]))
    with pytest.raises(FeatureError, match="'country' has dtype double"):
        fitted.transform(t.set_column(0, "country", pa.array(np.ones(10))))
    with pytest.raises(FeatureError, match="must be 0 or 1, got 2 at row 4"):
        fitted.transform(t.set_column(6, "installed", pa.array([0, 1, 0, 1, 2, 0, 0, 0, 0, 0])))


def test_parallel_features_give_the_same_result(fitted: FeatureSet, tiny_config: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    t = make_log(500, 21)
    with ThreadPoolExecutor(3) as pool:
        same(fitted.transform(t, pool), fitted.transform(t))
        cfg = load(tiny_config)
        a = FeatureSet.from_config(cfg).partial_fit(t, pool)
    assert a.to_dict() == FeatureSet.from_config(cfg).fit(t).to_dict()


def test_continuous_in_a_cross_uses_its_bucket() -> None:
    fs = small().fit(small_table())
    t = pa.table({"c": ["a", "a", "a"], "tags": [["t1"]] * 3, "h": [1, 1, 1], "x": [1.0, 1.0 + 1e-9, 4.0]})
    cx = fs.transform(t).ids[:, fs.id_slots.index("c_x_x")]
    x = fs.transform(t).ids[:, fs.id_slots.index("x")]
    assert x[0] == x[1] != x[2] and cx[0] == cx[1] != cx[2]
