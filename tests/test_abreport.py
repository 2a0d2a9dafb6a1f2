"""widedeep ab-report: handcrafted logs with known rates give the known lift, its Katz interval and the Wilson rate
intervals (checked against the formulas written out here); labels follow the join's rules; the CLI writes its folder."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widedeep.cli import main
from widedeep.loop.abreport import ab_report, arm_results, choose_control, lift, rate_interval
from widedeep.serve.log_schema import EVENT_SCHEMA, impression_schema

T0 = datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
Z = 1.959963984540054  # the 97.5% normal quantile


def wilson(x: int, n: int) -> tuple[float, float]:
    p = x / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n * n))
    return centre - half, centre + half


def katz(n: int, x: int, nc: int, xc: int) -> tuple[float, float, float, float]:
    ratio = (x / n) / (xc / nc)
    se = math.sqrt(1 / x - 1 / n + 1 / xc - 1 / nc)
    p = math.erfc(abs(math.log(ratio)) / se / math.sqrt(2))
    return ratio - 1, ratio * math.exp(-Z * se) - 1, ratio * math.exp(Z * se) - 1, p


def write_logs(folder: Path, plan: dict[tuple[int, str], tuple[int, int]], per_request: int = 4) -> None:
    """Impressions and install events: plan maps (day, arm) -> (impressions, positives). Each request shows
    `per_request` items; the positives are its first items, installed 1 h later. Noise that must not count: a click on
    every negative, an install 30 h after some negatives of day 0 (outside a 24 h window), every install reported twice."""
    imp, ev = [], []
    for (day, arm), (n, x) in plan.items():
        for i in range(n):
            rid = f"{arm}-{day}-{i // per_request}"
            t = T0 + timedelta(days=day, seconds=i // per_request)
            imp.append((rid, t, f"{arm}-v{day}", arm, i % per_request, i % per_request))
            if i < x:
                ev += [(rid, i % per_request, "install", t + timedelta(hours=1))] * 2
            else:
                ev.append((rid, i % per_request, "click", t + timedelta(minutes=5)))
                if day == 0 and i % 7 == 0:
                    ev.append((rid, i % per_request, "install", t + timedelta(hours=30)))
    names = ["request_id", "time", "model_version", "arm", "position", "index"]
    cols = {k: [r[j] for r in imp] for j, k in enumerate(names)}
    cols["score"] = np.full(len(imp), 0.5, np.float32)
    (folder / "impressions").mkdir(parents=True)
    (folder / "events").mkdir(parents=True)
    table = pa.table(cols, schema=impression_schema(()))
    half = table.num_rows // 2  # two part files, as a rolling log writes them
    pq.write_table(table.slice(0, half), folder / "impressions" / "part-1.parquet")
    pq.write_table(table.slice(half), folder / "impressions" / "part-2.parquet")
    events = pa.table({k: [r[j] for r in ev] for j, k in enumerate(EVENT_SCHEMA.names)}, schema=EVENT_SCHEMA)
    pq.write_table(events, folder / "events" / "part-1.parquet")


PLAN = {
    (0, "control"): (2000, 200), (0, "treatment"): (2000, 240),
    (1, "control"): (1600, 120), (1, "treatment"): (1800, 171),
    (2, "control"): (400, 1), (2, "treatment"): (400, 9),  # the last day: young, left out unless include_immature
}  # fmt: skip


def test_known_rates_give_known_lift_and_intervals(tmp_path: Path):
    write_logs(tmp_path, PLAN)
    report = ab_report(tmp_path / "impressions", tmp_path / "events", tmp_path / "out", window="24h", include_immature=True)
    assert report.control == "control"  # the arm named control, without --control
    assert list(report.days) == ["2024-05-01", "2024-05-02", "2024-05-03"]
    for d, day in enumerate(report.days):
        for r in report.days[day]:
            n, x = PLAN[(d, r.arm)]
            assert (r.impressions, r.positives) == (n, x)
            assert r.rate == x / n
            np.testing.assert_allclose([r.rate_low, r.rate_high], wilson(x, n), rtol=1e-9)
        c, t = report.days[day]
        assert c.arm == "control" and c.lift is None and c.p_value is None
        np.testing.assert_allclose([t.lift, t.lift_low, t.lift_high, t.p_value], katz(*PLAN[(d, "treatment")], *PLAN[(d, "control")]), rtol=1e-9)
    day0 = report.days["2024-05-01"][1]
    assert day0.lift == pytest.approx(0.2)  # 12% against 10%
    c, t = report.arms
    assert (c.impressions, c.positives, t.impressions, t.positives) == (4000, 321, 4200, 420)
    np.testing.assert_allclose([t.lift, t.lift_low, t.lift_high, t.p_value], katz(4200, 420, 4000, 321), rtol=1e-9)
    assert t.lift_low > 0 and t.p_value < 0.05  # 10.0% against 8.0%: a real gain
    assert report.details["model_versions"] == {"control": ["control-v0", "control-v1", "control-v2"],
                                                "treatment": ["treatment-v0", "treatment-v1", "treatment-v2"]}  # fmt: skip
    assert report.details["impressions_per_request"] == 4

    doc = json.loads((tmp_path / "out" / "ab_report.json").read_text())
    assert doc["arms"][1]["lift"] == pytest.approx(t.lift) and doc["control"] == "control"
    md = (tmp_path / "out" / "ab_report.md").read_text()
    assert "| treatment | 4,200 | 420 | 10.00%" in md and "+20.00%" in md
    assert (tmp_path / "out" / "ab_report.png").read_bytes()[:4] == b"\x89PNG"


def test_young_impressions_are_left_out_as_by_join(tmp_path: Path):
    write_logs(tmp_path, PLAN)
    report = ab_report(tmp_path / "impressions", tmp_path / "events", tmp_path / "out", window="24h")
    assert list(report.days) == ["2024-05-01", "2024-05-02"]  # day 2 is younger than 24 h before the newest time
    assert report.details["join"]["immature"] == 800
    # a window shorter than the hour to the installs: nothing is positive
    report = ab_report(tmp_path / "impressions", tmp_path / "events", tmp_path / "out", window="30m", include_immature=True)
    assert all(r.positives == 0 for r in report.arms)
    assert all(math.isnan(r.lift) for r in report.arms[1:])


def test_lift_against_scipy_edge_cases():
    assert lift(10, 100, 10, 100)[0] == 0.0 and lift(10, 100, 10, 100)[3] == pytest.approx(1.0)
    up, low, high, p = lift(0, 100, 10, 100)
    assert up == -1.0 and math.isnan(p)
    low, high = rate_interval(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(wilson(0, 50)[1])
    # p < 0.05 exactly when the interval excludes zero
    for x in range(100, 140):
        up, low, high, p = lift(x, 1000, 100, 1000)
        assert (p < 0.05) == (low > 0)
    rows = arm_results({"b": (100, 12), "a": (100, 10), "ctl": (100, 10)}, "ctl")
    assert [r.arm for r in rows] == ["ctl", "a", "b"] and rows[2].lift == pytest.approx(0.2)


def test_control_choice():
    assert choose_control(["treatment", "control"], None) == "control"
    assert choose_control(["default"], None) == "default"
    assert choose_control(["a", "b"], "b") == "b"
    with pytest.raises(ValueError, match=r"--control 'c': no such arm .*\['a', 'b'\]"):
        choose_control(["a", "b"], "c")
    with pytest.raises(ValueError, match="name the control arm with --control"):
        choose_control(["a", "b"], None)


def test_cli(tmp_path: Path, capsys):
    write_logs(tmp_path, {(0, "wide"): (400, 40), (0, "wide_deep"): (400, 48)})
    argv = ["ab-report", "--impressions", str(tmp_path / "impressions"), "--events", str(tmp_path / "events"),
            "--window", "24h", "--include-immature", "--control", "wide", "--out", str(tmp_path / "ab")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wide_deep" in out and "+20.00%" in out
    assert sorted(p.name for p in (tmp_path / "ab").iterdir()) == ["ab_report.json", "ab_report.md", "ab_report.png"]
    assert main([*argv[:-4], "--control", "nope", "--out", str(tmp_path / "ab2")]) == 2
    assert "--control 'nope'" in capsys.readouterr().err and not (tmp_path / "ab2").exists()
