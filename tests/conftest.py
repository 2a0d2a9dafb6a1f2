"""Shared fixtures: a tiny impression log with every kind of feature, its config, and a model trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TINY_CONFIG = """
[data]
train = "train.parquet"
eval = "eval.parquet"
label = "installed"

[features.country]
type = "categorical"
min_count = 2
[features.installed_apps]
type = "categorical"
multi_valued = true
[features.impression_app]
type = "categorical"
[features.user_id]
type = "hashed"
buckets = 64
[features.age]
type = "continuous"
quantiles = 10
[features.price]
type = "continuous"
quantiles = 5

[crosses.installed_x_impression]
columns = ["installed_apps", "impression_app"]
buckets = 512
[crosses.country_x_impression]
columns = ["country", "impression_app"]
buckets = 256

[model]
type = "wide_deep"
wide = ["installed_x_impression", "country_x_impression", "impression_app", "age"]
deep = ["installed_apps", "impression_app", "country", "user_id", "age", "price"]
embedding_dim = 8
hidden = [16, 8]

[train]
batch_size = 128
epochs = 2
out = "run"
seed = 0
"""


def make_log(n: int, seed: int) -> pa.Table:
    """A small impression log: label driven by an installed-app x impression-app effect and a country x app effect."""
    rng = np.random.default_rng(seed)
    apps = np.array([f"app{i}" for i in range(30)])
    countries = np.array(["us", "de", "fr", "jp", "br", "rare"])
    country = countries[rng.choice(6, n, p=[0.3, 0.2, 0.2, 0.15, 0.149, 0.001])]
    impression = apps[rng.integers(0, 30, n)]
    lengths = rng.integers(0, 5, n)
    installed = [list(apps[rng.integers(0, 30, k)]) for k in lengths]
    age = rng.normal(35, 10, n)
    age[rng.random(n) < 0.05] = np.nan
    price = np.round(rng.exponential(2.0, n), 2)
    app_effect = np.linspace(-1.0, 1.0, 30)[np.char.lstrip(impression.astype(str), "app").astype(int)]
    logit = -1.0 + 0.05 * (np.nan_to_num(age, nan=35) - 35) + app_effect
    logit += np.array([1.5 if (imp in inst and imp[-1] in "02468") else 0.0 for imp, inst in zip(impression, installed)])
    logit += np.where((country == "us") & (np.char.endswith(impression.astype(str), "1")), 1.0, 0.0)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table(
        {
            "country": pa.array(country, pa.string()),
            "installed_apps": pa.array(installed, pa.list_(pa.string())),
            "impression_app": pa.array(impression, pa.string()),
            "user_id": pa.array(rng.integers(0, 500, n), pa.int64()),
            "age": pa.array(age, pa.float64(), mask=np.isnan(age)),
            "price": pa.array(price, pa.float64()),
            "installed": pa.array(label, pa.int64()),
        }
    )


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.parquet (2000 rows), eval.parquet (500 rows) and config.toml; returns the config path."""
    root = tmp_path_factory.mktemp("tiny")
    pq.write_table(make_log(2000, seed=1), root / "train.parquet")
    pq.write_table(make_log(500, seed=2), root / "eval.parquet")
    (root / "config.toml").write_text(TINY_CONFIG)
    return root / "config.toml"


@pytest.fixture(scope="session")
def tiny_model(tiny_config: Path) -> Path:
    """The model directory of a wide & deep model trained on the tiny log (trained once per test session)."""
    from widedeep.config import load
    from widedeep.train.loop import train

    return train(load(tiny_config), progress=False)
