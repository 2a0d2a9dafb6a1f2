"""benchmarks/defaults.py at its --smoke size, run from the repository root as the docs show it: the table, the summary
and the JSON agree, the rules reach the optimizers, and runs that resolve to the same settings are shared."""

from __future__ import annotations

import json
import math
import re

from benchmark_run import ROOT, cells, run_benchmark

NAMES = ("adult_plain", "adult_plain_categorical", "criteo_like_small", "adult_plain@256")


def test_defaults_smoke() -> None:
    result_path = ROOT / "runs" / "defaults_smoke" / "results.json"
    result_path.unlink(missing_ok=True)
    args = ["benchmarks/defaults.py", "--smoke", "--only", *NAMES, "--rules", "before", "default", "--json", str(result_path)]
    out = run_benchmark(*args, timeout=900)

    rows = cells(out, "| data set | train / eval rows | rule | wide AUC |")
    assert [(row[0], row[2]) for row in rows] == [(n, rule) for n in NAMES for rule in ("before", "default")], out
    result = json.loads(result_path.read_text())
    for row in rows:
        wide, deep, wd, margin = (float(x) for x in row[3:7])
        assert all(0.0 <= x <= 1.0 for x in (wide, deep, wd)), row
        assert abs(margin - (wd - max(wide, deep))) <= 1.5e-4, row  # the margin over the better half
        stored = result["results"][row[0]][row[2]]
        assert abs(stored["wide_deep"]["auc"] - wd) <= 5e-5 and math.isfinite(stored["wide"]["logloss"]), row

    adult, small_batch = result["results"]["adult_plain"], result["results"]["adult_plain@256"]
    # "before" passes the old values explicitly: they reach the optimizer whatever the batch size
    for res in (adult, small_batch):
        assert res["before"]["params"]["wide"]["alpha"] == 0.2 and res["before"]["params"]["wide"]["beta"] == 1e-3
    # the deep part's settings are the same under both rules, so deep only is trained once and shared
    if adult["before"]["params"]["deep"] == adult["default"]["params"]["deep"]:
        assert adult["before"]["deep"] == adult["default"]["deep"]

    summary = cells(out, "| rule | mean margin |")
    assert [row[0] for row in summary] == ["before", "default"]
    for row in summary:
        mean = float(row[1])
        assert mean == result["summary"][row[0]]["mean_margin"] or abs(mean - result["summary"][row[0]]["mean_margin"]) < 5e-5
        assert row[4] in ("yes", "no")
    assert re.search(r"^adult_plain capital gain/loss", out, re.MULTILINE), out
