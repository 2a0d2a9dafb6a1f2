"""benchmarks/bf16_cost.py and benchmarks/sweep_data.py at their --smoke sizes, run from the repository root as the docs
show them, and the paired statistics behind the bf16 table."""

from __future__ import annotations

import json
import math
import re
import sys

import pyarrow.parquet as pq
import pytest
from benchmark_run import ROOT, cells, run_benchmark

from widedeep.config import load
from widedeep.features.io import resolve_paths

NAMES = ("appstore", "adult", "adult_plain", "criteo_like_small", "criteo_like_large")


def test_sweep_data_smoke() -> None:
    out = run_benchmark("benchmarks/sweep_data.py", "--smoke")
    rows = cells(out, "| data set | train rows |")
    assert [r[0] for r in rows] == list(NAMES), out
    for name, train_rows, eval_rows, config in rows:
        cfg = load(config)  # a valid config whose data paths resolve to the files written
        for paths, rows_listed in ((cfg.data.train, train_rows), (cfg.data.eval, eval_rows)):
            files = resolve_paths(paths, cfg.root)
            assert files and sum(pq.read_metadata(f).num_rows for f in files) == int(rows_listed.replace(",", "")), name
    plain = load(ROOT / "runs" / "sweep_data_smoke" / "adult_plain.toml")
    assert {c.name for c in plain.crosses} >= {"education_x_occupation", "native_country_x_occupation"}
    assert plain.model.hidden == (1024, 512, 256) and plain.train.batch_size == 1024  # left at the defaults
    criteo = load(ROOT / "runs" / "sweep_data_smoke" / "criteo_like_large.toml")
    assert (criteo.model.embedding_dim, criteo.model.hidden, criteo.train.epochs) == (32, (1024, 512, 256), 1)


def test_bf16_cost_smoke() -> None:
    result_path = ROOT / "runs" / "bf16_cost_smoke" / "results.json"
    result_path.unlink(missing_ok=True)
    out = run_benchmark("benchmarks/bf16_cost.py", "--smoke", "--json", "runs/bf16_cost_smoke/results.json")
    assert re.search(r"^native bf16 \(cpu_has_native_bf16\): (yes|no: bf16 is emulated, and slow)$", out, re.M), out
    summary = cells(out, "| data set | train / eval rows | seeds | fp32 AUC | bf16 AUC | bf16 - fp32 (± SE) |")
    assert [r[0] for r in summary] == list(NAMES), out
    for row in summary:
        fp32, bf16, diff_se, noise = float(row[3]), float(row[4]), row[5], float(row[6])
        assert all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in (fp32, bf16, noise)), row
        diff, se = (float(x) for x in diff_se.split("±"))
        assert abs(diff - (bf16 - fp32)) <= 1.5e-4 and math.isfinite(se), row  # a mean of paired differences
        assert row[7] in ("yes", "no", "no, bf16 higher"), row

    result = json.loads(result_path.read_text())
    assert len(result["runs"]) == len(NAMES) * 2 * 2  # data sets x seeds 0, 1 x precisions
    for name in NAMES:
        runs = {(r["seed"], r["precision"]): r for r in result["runs"] if r["dataset"] == name}
        assert set(runs) == {(s, p) for s in (0, 1) for p in ("fp32", "bf16")}
        assert all(math.isfinite(r["auc"]) and r["examples_per_s"] > 0 for r in runs.values())
        diffs = [runs[s, "bf16"]["auc"] - runs[s, "fp32"]["auc"] for s in (0, 1)]
        assert result["summaries"][name]["diff_auc"] == pytest.approx(sum(diffs) / 2, abs=1e-12)


@pytest.fixture(scope="module")
def bf16_cost():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bf16_cost

        yield bf16_cost
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def runs_of(fp32: list[float], bf16: list[float]) -> list[dict]:
    out = []
    for seed, (f, b) in enumerate(zip(fp32, bf16)):
        for precision, auc in (("fp32", f), ("bf16", b)):
            out.append({"dataset": "d", "seed": seed, "precision": precision, "auc": auc, "logloss": 0.5, "examples_per_s": 1.0})
    return out


def test_summary_pairs_runs_by_seed_and_compares_with_seed_noise(bf16_cost) -> None:
    # Paired differences -0.01, -0.01, -0.005: mean -0.008333, sd 0.0028868, SE 0.0016667; fp32 seed sd 0.01.
    s = bf16_cost.summarize(runs_of([0.80, 0.81, 0.82], [0.79, 0.80, 0.815]))
    assert s["diff_auc"] == pytest.approx(-0.025 / 3)
    assert s["diff_auc_se"] == pytest.approx(0.005 / math.sqrt(3) / math.sqrt(3))
    assert s["fp32_auc_seed_sd"] == pytest.approx(0.01)
    assert s["cost_exceeds_noise"] == "no"  # a loss of 0.0083 is within a seed's 0.01
    s = bf16_cost.summarize(runs_of([0.800, 0.801, 0.802], [0.790, 0.792, 0.791]))
    assert s["diff_auc"] == pytest.approx(-0.010) and s["cost_exceeds_noise"] == "yes"
    assert bf16_cost.summarize(runs_of([0.800, 0.801], [0.810, 0.812]))["cost_exceeds_noise"] == "no, bf16 higher"
    assert bf16_cost.summarize(runs_of([0.8], [0.7]))["cost_exceeds_noise"] == "n/a (1 seed)"
    with pytest.raises(ValueError, match=r"missing \(seed, precision\): \[\(1, 'bf16'\)\]"):
        bf16_cost.summarize(runs_of([0.8, 0.8], [0.8, 0.8])[:-1])
