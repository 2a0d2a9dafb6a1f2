"""UCI Adult: the shipped file, the stratified split, and the example configs loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from widedeep.config import load
from widedeep.datasets import adult, adult_split
from widedeep.datasets.adult import CATEGORICAL, LABEL, NUMERIC, ROWS, stratified_split

ROOT = Path(__file__).resolve().parents[1]


def test_adult_rows_columns_and_label_rate():
    t = adult()
    assert t.num_rows == ROWS == 48_842
    assert set(t.column_names) == {*CATEGORICAL, *NUMERIC, LABEL}
    assert all("-" not in c for c in t.column_names)
    assert t[LABEL].to_numpy().sum() == 11_687  # 0.2393
    assert set(pc.unique(t[LABEL]).to_pylist()) == {0, 1}
    assert t["occupation"].null_count == 2809 and t["education"].null_count == 0
    assert "?" not in pc.unique(t["workclass"]).to_pylist()


def test_stratified_split_keeps_the_label_rate():
    label = np.r_[np.zeros(801, dtype=np.int64), np.ones(199, dtype=np.int64)]
    train, test = stratified_split(label, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1000
    assert (label[test] == 1).sum() == round(199 * 0.2) and (label[test] == 0).sum() == round(801 * 0.2)
    again, other = stratified_split(label, 0.2, seed=0), stratified_split(label, 0.2, seed=1)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)
    with pytest.raises(ValueError, match="1.5"):
        stratified_split(label, 1.5)


def test_adult_split_files(tmp_path: Path):
    train_path, test_path = adult_split(tmp_path, seed=0)
    train, test = pq.read_table(train_path), pq.read_table(test_path)
    assert train.num_rows + test.num_rows == ROWS and abs(test.num_rows - 0.2 * ROWS) <= 2
    rates = [pc.mean(t[LABEL]).as_py() for t in (train, test)]
    assert abs(rates[0] - rates[1]) < 1e-3, rates
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["adult.toml", "appstore.toml"])
def test_example_configs_load(name: str):
    cfg = load(ROOT / "examples" / name)
    assert cfg.model.type == "wide_deep" and cfg.model.wide and cfg.model.deep
    assert cfg.data.label in ("income_50k", "installed")
    assert any(c.name in cfg.model.wide for c in cfg.crosses)


def test_shipped_demo_config_is_the_example():
    shipped = ROOT / "src" / "widedeep" / "datasets" / "data" / "appstore.toml"
    assert shipped.read_text() == (ROOT / "examples" / "appstore.toml").read_text()


def test_adult_config_reads_the_split_columns(tmp_path: Path):
    cfg = load(ROOT / "examples" / "adult.toml")
    columns = set(adult().column_names)
    assert {f.source for f in cfg.features} <= columns
    assert cfg.data.label == LABEL
