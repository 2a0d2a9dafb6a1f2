"""widedeep simulate: the simulated users (retrieval, attention, installs) and a tiny experiment run end to end through
a real `widedeep serve --arms` process, its logs, the join, retrain, validate and promote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from widedeep.datasets.app_store import N_APPS, install_probability, world
from widedeep.loop.simulate import Simulation, paper_lifts, simulate
from widedeep.loop.traffic import arrivals, attention, installs, retrieve
from widedeep.serve.arms import Arm, Arms


def test_retrieval_mixes_popular_and_explored_apps():
    c = retrieve(0, 1, 400, candidates=100, explore=0.3)
    assert c.shape == (400, 100) and c.min() >= 0 and c.max() < N_APPS
    assert all(len(set(row)) == 100 for row in c.tolist())  # distinct candidates per request
    w = world(0)
    popular, explored = c[:, :70], c[:, 70:]
    assert not w.app_new[popular].any()  # popularity draws only launched apps
    assert w.app_new[explored].mean() == pytest.approx(w.app_new.mean(), abs=0.02)  # exploration: uniform over the rest
    weight = np.diff(np.concatenate([[0.0], w.seen_cdf]))
    assert weight[popular].mean() > 3 * weight[explored].mean()
    assert np.array_equal(c, retrieve(0, 1, 400)) and not np.array_equal(c, retrieve(0, 2, 400))


def test_installs_are_attention_times_ground_truth():
    users = arrivals(0, 1, 4000)
    shown = retrieve(0, 1, 4000, candidates=10, explore=0.5)
    shown[:5, 7:] = -1  # a short answer: nothing there, nothing installed
    installed, expected = installs(0, 1, users, shown)
    p = install_probability(np.repeat(users, 10), shown.clip(0).ravel()).reshape(shown.shape)
    np.testing.assert_allclose(expected[shown >= 0], (p * attention(np.arange(10))[None, :])[shown >= 0])
    assert (expected[shown < 0] == 0).all() and not installed[shown < 0].any()
    # the draws follow their probabilities: per position, within 4 standard errors
    for pos in range(10):
        e = expected[:, pos]
        assert abs(installed[:, pos].mean() - e.mean()) < 4 * np.sqrt((e * (1 - e)).sum()) / len(e)
    assert attention(np.array([0, 1, 2])).tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.5])


def test_simulation_checks_its_sizes(tmp_path: Path):
    with pytest.raises(ValueError, match="--arms 'wide,bogus'"):
        Simulation(arms=("wide", "bogus"))
    with pytest.raises(ValueError, match="--days"):
        Simulation(days=0)
    (tmp_path / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        simulate(Simulation(days=1, users=10, offline_rows=1000), tmp_path, progress=False)


def test_tiny_experiment_end_to_end(tmp_path: Path):
    """Two arms, one day: every step runs, each user stays in the arm its user_id hashes to, the report counts what the
    users did (simulate itself checks the join's labels against the installs posted)."""
    sim = Simulation(days=1, users=150, arms=("wide", "wide_deep"), offline_rows=8000)
    report = simulate(sim, tmp_path / "sim", progress=False)
    out = tmp_path / "sim"

    assert report.control == "wide" and [a.arm for a in report.arms] == ["wide", "wide_deep"]
    assert sum(a.impressions for a in report.arms) == sim.users * sim.k  # every request answered with k items, logged
    assert list(report.days) == ["day 1"]

    labelled = pq.read_table(out / "days" / "2026-01-02" / "labelled.parquet")
    assert labelled.num_rows == sim.users * sim.k
    assert sum(a.positives for a in report.arms) == pc.sum(labelled.column("installed")).as_py()
    # each request's arm is the one its user's id hashes to (the server's split by user_id)
    split = Arms([Arm(name, 1, None) for name in sim.arms])  # type: ignore[arg-type]  # arm_of reads names and weights only
    users = arrivals(sim.seed, 1, sim.users)
    arm_of_request = dict(zip(labelled.column("request_id").to_pylist(), labelled.column("arm").to_pylist()))
    assert len(arm_of_request) == sim.users
    assert all(arm_of_request[f"d1-r{r}"] == split.arm_of(str(u)).name for r, u in enumerate(users.tolist()))

    doc = json.loads((out / "report" / "ab_report.json").read_text())
    assert doc["reference_lift"] == pytest.approx(paper_lifts()) and paper_lifts() == pytest.approx({"deep": 0.029, "wide_deep": 0.039})
    nights = doc["nights"]
    assert [(n["day"], n["arm"]) for n in nights] == [("2026-01-01", "wide"), ("2026-01-01", "wide_deep"),
                                                      ("2026-01-02", "wide"), ("2026-01-02", "wide_deep")]  # fmt: skip
    assert all(n["promoted"] for n in nights[:2])  # day 0: the first version of each registry
    for n in nights[2:]:  # a night's model is promoted, and then served, or refused with the checks it failed
        assert n["warm_start"] == nights[0 if n["arm"] == "wide" else 1]["version"]
        assert n["promoted"] or n["failed_checks"]
    md = (out / "report" / "ab_report.md").read_text()
    assert "| wide_deep |" in md and "+3.90%" in md and "## Ground truth" in md
    assert (out / "report" / "ab_report.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["events", "impressions"]
