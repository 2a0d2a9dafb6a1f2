"""The Criteo-like generator: deterministic, the benchmark schema, a Zipf head and a real signal."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from widedeep.datasets.criteo_like import criteo_like, criteo_like_config


def test_criteo_like_schema_and_signal() -> None:
    t = next(criteo_like(20_000, seed=3, chunk_rows=20_000))
    again = next(criteo_like(20_000, seed=3, chunk_rows=20_000))
    assert t.equals(again)
    assert t.column_names[0] == "clicked" and t.num_columns == 40
    assert all(t.column(f"C{j}").type == "string" for j in range(1, 27))
    assert t.column("I12").null_count > 0.6 * 20_000 and t.column("I2").null_count == 0
    assert t.column("C22").null_count > 0.3 * 20_000
    clicked = t.column("clicked").to_numpy()
    assert 0.15 < clicked.mean() < 0.45
    c1 = pc.value_counts(t.column("C1")).field("counts").to_numpy()
    assert c1.max() > 20 * np.median(c1)  # Zipf: a head of frequent values and a long tail
    rates = t.group_by("C1").aggregate([("clicked", "mean"), ("clicked", "count")])
    frequent = rates.filter(pc.greater_equal(rates["clicked_count"], 200))
    r, n, p = frequent["clicked_mean"].to_numpy(), frequent["clicked_count"].to_numpy(), clicked.mean()
    z2 = (r - p) ** 2 / (p * (1 - p) / n)  # ~1 on average if C1 carried no signal
    assert len(r) >= 5 and z2.mean() > 3
    cfg = criteo_like_config("train.parquet", "eval.parquet", "run")
    assert len(cfg.features) == 39 and [c.name for c in cfg.crosses] == ["C1_x_C2", "C3_x_C4"]
