"""`prepare`: outputs, freshness, atomicity, and early errors that name the file, column or row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_CONFIG, make_log

from widedeep.config import load
from widedeep.features.columns import FeatureError
from widedeep.features.encoded import Encoded
from widedeep.features.prepare import fingerprint, is_fresh, prepare
from widedeep.features.shards import open_shard, open_split, write_shard
from widedeep.features.transform import FeatureSet


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    pq.write_table(make_log(600, seed=1), tmp_path / "train.parquet")
    pq.write_table(make_log(200, seed=2), tmp_path / "eval.parquet")
    (tmp_path / "config.toml").write_text(TINY_CONFIG)
    return tmp_path / "config.toml"


def test_prepare_writes_features_manifest_and_shards(project: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = load(project)
    out = prepare(cfg)
    assert out == cfg.prepared_dir and "600 train + 200 eval rows" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint(cfg)
    assert manifest["splits"]["train"]["rows"] == 600 and manifest["splits"]["eval"]["rows"] == 200
    fs = FeatureSet.load(out / "features.json")
    assert manifest["id_slots"] == list(fs.id_slots) and fs.rows_ == 600
    train = open_split(out, "train")
    assert sum(len(e) for e in train) == 600 and isinstance(train[0].ids, np.memmap)
    want = fs.transform(pq.read_table(project.parent / "train.parquet"))
    assert np.array_equal(train[0].ids, want.ids) and np.array_equal(train[0].dense, want.dense)
    assert np.array_equal(train[0].label, want.label)
    for k, (values, offsets) in want.lists.items():
        assert np.array_equal(train[0].lists[k][0], values) and np.array_equal(train[0].lists[k][1], offsets)
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]  # no temp folders left


def test_freshness(project: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = load(project)
    assert not is_fresh(cfg)
    prepare(cfg)
    assert is_fresh(cfg)
    stamp = (cfg.prepared_dir / "features.json").stat().st_mtime_ns
    prepare(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (cfg.prepared_dir / "features.json").stat().st_mtime_ns == stamp
    prepare(cfg, force=True)
    assert (cfg.prepared_dir / "features.json").stat().st_mtime_ns != stamp
    pq.write_table(make_log(600, seed=3), project.parent / "train.parquet")  # new data: stale
    assert not is_fresh(cfg)
    project.write_text(TINY_CONFIG.replace("quantiles = 5", "quantiles = 6"))  # new feature config: stale
    assert not is_fresh(load(project))


def test_failure_keeps_previous_result_and_leaves_no_temp_files(project: Path) -> None:
    cfg = load(project)
    prepare(cfg)
    before = (cfg.prepared_dir / "manifest.json").read_text()
    t = make_log(600, seed=1)
    pq.write_table(t.set_column(6, "installed", pa.array(np.full(600, 3))), project.parent / "train.parquet")
    with pytest.raises(FeatureError):
        prepare(cfg)
    assert (cfg.prepared_dir / "manifest.json").read_text() == before
    assert sorted(p.name for p in cfg.prepared_dir.parent.iterdir()) == ["prepared"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t, p: pq.write_table(t.drop_columns(["age"]), p), r"train\.parquet: missing column 'age'"),
        (lambda t, p: pq.write_table(t.drop_columns(["installed"]), p), r"train\.parquet: missing label column"),
        (lambda t, p: pq.write_table(t.set_column(6, "installed", pa.array([0, 1] * 299 + [5, 0])), p),
         r"train\.parquet.*must be 0 or 1, got 5 at row 598"),
        (lambda t, p: pq.write_table(t.set_column(6, "installed", pa.array([None] + [0] * 599, pa.int64())), p),
         r"train\.parquet.*null at row 0"),
        (lambda t, p: pq.write_table(t.slice(0, 0), p), r"train\.parquet: data file has no rows"),
        (lambda t, p: p.write_bytes(b"not parquet at all"), r"train\.parquet: unreadable"),
        (lambda t, p: pq.write_table(t.set_column(4, "age", pa.array(["x"] * 600)), p), r"train\.parquet.*'age' has dtype string"),
        (lambda t, p: pq.write_table(t.set_column(1, "installed_apps", pa.array(np.ones(600))), p),
         r"train\.parquet.*'installed_apps' has dtype double"),
    ],
)  # fmt: skip
def test_bad_data_fails_early_naming_the_file(project: Path, damage, message: str) -> None:
    damage(make_log(600, seed=1), project.parent / "train.parquet")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare(load(project))
    assert not load(project).prepared_dir.exists()


def test_missing_input_names_the_pattern(project: Path) -> None:
    project.write_text(TINY_CONFIG.replace('train = "train.parquet"', 'train = "nothing/*.parquet"'))
    with pytest.raises(FileNotFoundError, match=r"\[data\] train: no data file matches 'nothing/\*\.parquet'"):
        prepare(load(project))
    project.write_text(TINY_CONFIG.replace('eval = "eval.parquet"', 'eval = "gone.parquet"'))
    with pytest.raises(FileNotFoundError, match=r"config\.toml: \[data\] eval: no data file matches 'gone\.parquet'"):
        prepare(load(project))


def test_write_shard_is_atomic_and_round_trips(tmp_path: Path) -> None:
    enc = Encoded(np.arange(6, dtype=np.int32).reshape(3, 2), np.ones((3, 2), np.float32),
                  {"tags": (np.array([3, 4, 5], np.int32), np.array([0, 2, 2, 3]))}, np.array([0, 1, 1], np.uint8))  # fmt: skip
    write_shard(tmp_path / "part-00000", enc)
    back = open_shard(tmp_path / "part-00000")
    assert np.array_equal(back.ids, enc.ids) and np.array_equal(back.lists["tags"][1], enc.lists["tags"][1])
    with pytest.raises(FileExistsError):
        write_shard(tmp_path / "part-00000", enc)
    bad = Encoded(enc.ids, enc.dense, {"../x": enc.lists["tags"]}, enc.label)
    with pytest.raises(ValueError, match="cannot be used as a file name"):
        write_shard(tmp_path / "part-00001", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000"]
    shutil.rmtree(tmp_path / "part-00000")
    assert open_split(tmp_path, "train") == []


def test_csv_inputs_are_checked_and_prepared(project: Path) -> None:
    import pyarrow.csv as pcsv

    t = make_log(300, seed=4)
    joined = pa.array(["|".join(x) for x in t["installed_apps"].to_pylist()], pa.string())
    t = t.set_column(1, "installed_apps", joined)
    pcsv.write_csv(t, project.parent / "train.csv")
    pcsv.write_csv(t.slice(0, 100), project.parent / "eval.csv")
    text = TINY_CONFIG.replace("train.parquet", "train.csv").replace("eval.parquet", "eval.csv")
    project.write_text(text)
    out = prepare(load(project), verbose=False)
    fs = FeatureSet.load(out / "features.json")
    assert fs.rows_ == 300 and len(fs.vocabulary("installed_apps")) == 30
    bad = t.set_column(4, "age", pa.array(["x"] * 300))
    pcsv.write_csv(bad, project.parent / "train.csv")
    with pytest.raises(ValueError, match=r"train\.csv: cannot read.*conversion error to double"):
        prepare(load(project), verbose=False)


# ----------------------------------------------------------------------------------------------------------------------
# Leftovers of dead processes, degenerate data


def test_stale_temp_folders_of_dead_processes_are_removed(project: Path) -> None:
    import subprocess
    import sys

    from widedeep.atomic import temp_path

    cfg = load(project)
    out = cfg.prepared_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temp name made by a process that has exited since (its pid is dead) ...
    code = f"from pathlib import Path; from widedeep.atomic import temp_path; print(temp_path(Path({str(out)!r})))"
    dead = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    (dead / "train").mkdir(parents=True)
    (dead / "train" / "ids.npy").write_bytes(b"half written")
    # ... and one this (live) process is writing.
    live = temp_path(out)
    live.mkdir()
    prepare(cfg, verbose=False)
    assert not dead.exists()
    assert live.is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["prepared", live.name])


@pytest.mark.parametrize("value", [0, 1])
def test_single_class_training_labels_are_refused_before_anything_is_written(project: Path, value: int) -> None:
    t = make_log(600, seed=1)
    pq.write_table(t.set_column(6, "installed", pa.array(np.full(600, value))), project.parent / "train.parquet")
    message = rf"label column 'installed' has only the value {value} in the training data \(600 rows in .*train\.parquet\): nothing to learn"
    with pytest.raises(FeatureError, match=message):
        prepare(load(project), verbose=False)
    assert sorted(p.name for p in project.parent.iterdir()) == ["config.toml", "eval.parquet", "train.parquet"]


def test_single_class_eval_labels_warn_that_auc_is_undefined(project: Path) -> None:
    from widedeep.features.checks import DataWarning

    t = make_log(200, seed=2)
    pq.write_table(t.set_column(6, "installed", pa.array(np.ones(200, np.int64))), project.parent / "eval.parquet")
    with pytest.warns(DataWarning, match=r"label column 'installed' has only the value 1 in the eval data \(200 rows in .*eval\.parquet\).*AUC"):
        out = prepare(load(project), verbose=False)
    assert json.loads((out / "manifest.json").read_text())["splits"]["eval"]["rows"] == 200  # prepared all the same


def _set(t: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, values)


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("price", pa.nulls(600, pa.float64()), r"feature 'price' \(column 'price'\) is null in every row"),
        ("age", pa.array(np.full(600, np.nan)), r"feature 'age' \(column 'age'\) is null in every row"),
        ("price", pa.array(np.full(600, 2.5)), r"feature 'price' \(column 'price'\) has the value 2\.5 in every row"),
        ("country", pa.array(["us"] * 600), r"feature 'country' \(column 'country'\) has the value 'us' in every row"),
        ("country", pa.array([""] * 300 + [None] * 300, pa.string()), r"feature 'country' .* is null in every row"),
        ("user_id", pa.array(np.full(600, 7)), r"feature 'user_id' \(column 'user_id'\) has the value '7' in every row"),
        ("installed_apps", pa.array([[]] * 600, pa.list_(pa.string())), r"feature 'installed_apps' .* is null in every row"),
    ],
)  # fmt: skip
def test_null_or_constant_training_features_warn_naming_feature_and_file(project: Path, column, values, message) -> None:
    from widedeep.features.checks import DataWarning

    pq.write_table(_set(make_log(600, seed=1), column, values), project.parent / "train.parquet")
    with pytest.warns(DataWarning, match=message + r" of the training data \(.*train\.parquet\)") as record:
        prepare(load(project), verbose=False)
    assert len(record) == 1  # only the degenerate feature is named


def test_ordinary_data_gives_no_warning(project: Path) -> None:
    import warnings

    t = make_log(600, seed=1)
    t = _set(t, "country", pa.array(["us"] * 599 + [None], pa.string()))  # one value, but missing once: informative
    pq.write_table(t, project.parent / "train.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(load(project), verbose=False)
