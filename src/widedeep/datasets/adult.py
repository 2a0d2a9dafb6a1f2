"""The UCI Adult census data (the classic Wide & Deep tutorial data), shipped as a small Parquet file.

Predict whether a person earns more than $50K a year (`income_50k`, 0/1) from 14 census attributes.
Source and licence: `data/ATTRIBUTION.md` (Becker & Kohavi 1996, CC BY 4.0).

    python -m widedeep.datasets adult data/adult    # writes data/adult/{train,test}.parquet, the split examples/adult.toml reads
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.atomic import publish_file

LABEL = "income_50k"
ROWS = 48_842
CATEGORICAL = ("workclass", "education", "marital_status", "occupation", "relationship", "race", "gender", "native_country")
NUMERIC = ("age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week")


def adult() -> pa.Table:
    """All 48,842 rows: the numeric and categorical columns above (missing values are null) and the 0/1 label."""
    with resources.as_file(resources.files("widedeep.datasets") / "data" / "adult.parquet") as path:
        table = pq.read_table(path)
    if table.num_rows != ROWS or LABEL not in table.column_names:
        raise ValueError(f"{path}: expected {ROWS} rows with a {LABEL!r} column, got {table.num_rows} rows, columns {table.column_names}")
    return table


def stratified_split(label: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), each sorted, with the label rate of every class kept in both parts."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    label = np.asarray(label)
    test = []
    for value in np.unique(label):  # one pass per class (two), not per row
        rows = np.flatnonzero(label == value)
        test.append(rng.permutation(rows)[: int(round(len(rows) * test_fraction))])
    is_test = np.zeros(len(label), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def adult_split(out_dir: str | Path, seed: int = 0, test_fraction: float = 0.2) -> tuple[Path, Path]:
    """Write the stratified train/test split to `out_dir/train.parquet` and `out_dir/test.parquet`; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = adult()
    train_rows, test_rows = stratified_split(table[LABEL].to_numpy(), test_fraction, seed)
    paths = (out / "train.parquet", out / "test.parquet")
    for path, rows in zip(paths, (train_rows, test_rows)):
        with publish_file(path) as tmp:
            pq.write_table(table.take(pa.array(rows)), tmp, compression="zstd")
    return paths
