"""`widedeep retrain`: daily files into an empty registry, a warm-started second day, a refused bad day, idempotent
re-runs, and a run killed with SIGKILL mid-training that a re-run finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY_CONFIG, make_log
from widedeep.atomic import sha256_file
from widedeep.cli import main
from widedeep.config import ConfigError, load
from widedeep.loop.retrain import RetrainResult, holdout_mask, retrain, split_day
from widedeep.serve.registry import Registry

DAYS = ("2024-03-01", "2024-03-02", "2024-03-03")
ROWS = 2500  # per day
# A holdout of ~250 rows measures AUC within a few hundredths: the tolerances let that noise pass, not a broken model.
TOLERANCES = {"auc_tolerance": 0.1, "logloss_tolerance": 0.1}
CONFIG = TINY_CONFIG.replace('eval = "eval.parquet"\n', "") + '\n[retrain]\nhistory = "history"\nwindow_days = 7\n'


def day_log(k: int, n: int = ROWS) -> pa.Table:
    """Day k's impressions; every request shows three candidates (three rows share a request_id)."""
    t = make_log(n, seed=100 + k)
    return t.append_column("request_id", pa.array([f"d{k}-r{i // 3}" for i in range(n)]))


def write_workspace(root: Path, config: str = CONFIG) -> Path:
    """A config folder with each day's file under incoming/<day>/; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    for k, day in enumerate(DAYS[:2], start=1):
        (root / "incoming" / day).mkdir(parents=True)
        pq.write_table(day_log(k), root / "incoming" / day / "impressions.parquet")
    (root / "config.toml").write_text(config)
    return root / "config.toml"


def retrain_argv(config: Path, registry: Path, data: str, day: str, *extra: str) -> list[str]:
    tolerances = [f"--{k.replace('_', '-')}={v}" for k, v in TOLERANCES.items()]
    return ["retrain", str(config), "--registry", str(registry), "--data", data, "--day", day, *tolerances, *extra]


def weights_sha(model_dir: Path) -> str:
    return sha256_file(model_dir / "model.safetensors")


@dataclass
class Workspace:
    config: Path
    registry: Path

    def run(self, k: int, **kwargs) -> RetrainResult:
        data = [self.config.parent / "incoming" / DAYS[k - 1] / "impressions.parquet"]
        return retrain(load(self.config), self.registry, data, day=DAYS[k - 1], progress=False, **TOLERANCES, **kwargs)

    def cli(self, k: int, *extra: str, config: Path | None = None) -> int:
        data = str(self.config.parent / "incoming" / DAYS[k - 1] / "impressions.parquet")
        return main(retrain_argv(config or self.config, self.registry, data, DAYS[k - 1], *extra))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("retrain")
    return Workspace(write_workspace(root), root / "registry")


@pytest.fixture(scope="module")
def day1(ws: Workspace) -> RetrainResult:
    return ws.run(1)


@pytest.fixture(scope="module")
def day2(ws: Workspace, day1: RetrainResult) -> RetrainResult:
    return ws.run(2)


# ----------------------------------------------------------------------------------------------------------------------
# The split


def test_holdout_by_request_id_keeps_requests_whole_and_depends_on_the_id_only() -> None:
    t = day_log(1, 6000)
    held = holdout_mask(t, 0, 0.1)
    ids = np.asarray(t.column("request_id").to_pylist())
    assert 0.07 < held.mean() < 0.13
    per_request = {i: set() for i in ids}
    for i, h in zip(ids, held):
        per_request[i].add(bool(h))
    assert all(len(v) == 1 for v in per_request.values())  # no request is split
    order = np.random.default_rng(0).permutation(t.num_rows)  # another row order and offset: the same rows held out
    assert np.array_equal(holdout_mask(t.take(order), 123, 0.1), held[order])


def test_holdout_by_row_number_is_exact_and_the_same_batch_by_batch() -> None:
    t = make_log(1003, seed=1)
    held = holdout_mask(t, 0, 0.1)
    assert held.sum() == 100
    by_parts = np.concatenate([holdout_mask(t.slice(0, 400), 0, 0.1), holdout_mask(t.slice(400), 400, 0.1)])
    assert np.array_equal(by_parts, held)


def test_a_csv_day_is_split_with_the_feature_column_types(tmp_path: Path) -> None:
    rows = "".join(f"{i:03d},{20 + i % 30},{i % 2}\n" for i in range(100))
    (tmp_path / "day.csv").write_text("user_id,age,installed\n" + rows)
    counts = split_day([tmp_path / "day.csv"], {"user_id": pa.string(), "age": pa.float64()}, tmp_path, 0.1)
    assert counts == {"holdout": 10, "train": 90}
    parts = [pq.read_table(tmp_path / name) for name in ("holdout.parquet", "day-train.parquet")]
    assert all(t.schema.field("user_id").type == pa.string() for t in parts)  # "007" stays a token, not the number 7
    ids = parts[0].column("user_id").to_pylist() + parts[1].column("user_id").to_pylist()
    assert sorted(ids) == [f"{i:03d}" for i in range(100)]


# ----------------------------------------------------------------------------------------------------------------------
# Days


def test_first_day_trains_from_scratch_and_is_promoted(ws: Workspace, day1: RetrainResult) -> None:
    reg = Registry(ws.registry)
    assert day1.promoted and not day1.already_promoted and day1.warm_start is None
    assert reg.versions() == [day1.version] and reg.current_version() == day1.version
    assert weights_sha(reg.path(day1.version)) == weights_sha(day1.model_dir)
    # The day's files kept in the history; the run folder holds the run's config, the day's two parts and the model.
    kept = ws.config.parent / "history" / DAYS[0] / "impressions.parquet"
    assert sha256_file(kept) == sha256_file(ws.config.parent / "incoming" / DAYS[0] / "impressions.parquet")
    run_cfg = load(day1.run_dir / "config.toml")
    assert run_cfg.data.train == (str(day1.run_dir / "day-train.parquet"),)
    assert run_cfg.data.test == (str(day1.run_dir / "holdout.parquet"),) and run_cfg.retrain is None
    assert run_cfg.out_dir == day1.run_dir == ws.config.parent / "run" / "days" / DAYS[0]
    holdout = pq.read_table(day1.run_dir / "holdout.parquet")
    trained = pq.read_table(day1.run_dir / "day-train.parquet")
    assert holdout.num_rows + trained.num_rows == ROWS and 0.07 * ROWS < holdout.num_rows < 0.13 * ROWS
    assert not set(holdout.column("request_id").to_pylist()) & set(trained.column("request_id").to_pylist())
    assert not (day1.run_dir / "prepared").exists() and not (day1.run_dir / "checkpoints").exists()


def test_second_day_warm_starts_from_the_first(ws: Workspace, day1: RetrainResult, day2: RetrainResult, tmp_path: Path) -> None:
    reg = Registry(ws.registry)
    assert day2.promoted and day2.warm_start == day1.version and day2.report is not None
    assert {c.name for c in day2.report.checks} >= {"auc_vs_current", "logloss_vs_current"}
    assert reg.versions() == sorted([day1.version, day2.version]) and reg.current_version() == day2.version
    run_cfg = load(day2.run_dir / "config.toml")
    day1_file = str(ws.config.parent / "history" / DAYS[0] / "impressions.parquet")
    assert run_cfg.data.train == (day1_file, str(day2.run_dir / "day-train.parquet"))  # the window: day 1 whole, day 2's part
    # "auto" bucket embeddings are decided once, by the first model, and kept: a new day cannot change the layout
    assert {f.name: f.embed_buckets for f in load(day1.run_dir / "config.toml").features if f.type == "continuous"} == {"age": "auto", "price": "auto"}
    assert {f.name: f.embed_buckets for f in run_cfg.features if f.type == "continuous"} == {"age": False, "price": False}
    # The same run trained by hand from day 1's model gives the same weights, bit for bit: retrain did warm start.
    from widedeep.train.loop import train

    by_hand = replace(run_cfg, train=replace(run_cfg.train, out=str(tmp_path)), data=replace(run_cfg.data, prepared=""))
    model = train(by_hand, warm_start=reg.path(day1.version), progress=False)
    assert weights_sha(model) == weights_sha(day2.model_dir)


def test_a_day_that_makes_a_much_worse_model_is_refused(ws: Workspace, day2: RetrainResult, capsys) -> None:
    reg = Registry(ws.registry)
    versions, history = reg.versions(), len(reg.history())
    bad = day_log(3)  # labels flipped on the rows trained on; the holdout keeps the true ones
    flip = ~holdout_mask(bad, 0, 0.1)
    label = np.asarray(bad.column("installed"))
    bad = bad.set_column(bad.schema.get_field_index("installed"), "installed", pa.array(np.where(flip, 1 - label, label)))
    (ws.config.parent / "incoming" / DAYS[2]).mkdir()
    pq.write_table(bad, ws.config.parent / "incoming" / DAYS[2] / "impressions.parquet")
    one_day = ws.config.with_name("one-day.toml")  # a window of one day: the model learns the bad day alone
    one_day.write_text(CONFIG.replace("window_days = 7", "window_days = 1"))

    assert ws.cli(3, config=one_day) == 1
    out, err = capsys.readouterr()
    assert "validation FAILED" in out and "[FAIL] auc_vs_current" in out and "[FAIL] logloss_vs_current" in out
    assert f"day {DAYS[2]}: not promoted; CURRENT still -> {day2.version}" in err
    assert reg.current_version() == day2.version and reg.versions() == versions
    assert len(reg.history()) == history + 1 and reg.history()[-1]["event"] == "refused"


def test_rerunning_a_promoted_day_makes_no_new_version(ws: Workspace, day1: RetrainResult, day2: RetrainResult, capsys) -> None:
    reg = Registry(ws.registry)
    versions, history, current = reg.versions(), len(reg.history()), reg.current_version()
    assert ws.cli(2) == 0
    assert f"day {DAYS[1]}: already promoted as version {day2.version}" in capsys.readouterr().out
    assert ws.cli(1) == 0  # an older day: reported, and CURRENT is not rolled back to it
    assert f"day {DAYS[0]}: already promoted as version {day1.version} (CURRENT -> {current})" in capsys.readouterr().out
    assert reg.versions() == versions and len(reg.history()) == history and reg.current_version() == current


def test_a_run_killed_mid_training_is_finished_by_a_rerun(day1: RetrainResult, tmp_path: Path, capsys) -> None:
    config = write_workspace(tmp_path, CONFIG.replace("seed = 0\n", "seed = 0\ncheckpoint_every = 1\n"))
    ws = Workspace(config, tmp_path / "registry")
    data = str(tmp_path / "incoming" / DAYS[0] / "impressions.parquet")
    argv = retrain_argv(config, ws.registry, data, DAYS[0])
    checkpoints = tmp_path / "run" / "days" / DAYS[0] / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "widedeep", *argv], stdout=log, stderr=log, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("*/step-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (checkpoints.parent / "model").exists() and Registry(ws.registry).current_version() is None

    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "resuming from" in err and "promoted version" in out
    current = Registry(ws.registry).current()
    assert weights_sha(current) == weights_sha(day1.model_dir)  # the same weights as the uninterrupted run


def test_bad_arguments_and_config_are_named(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ws.cli(1, "--holdout-fraction", "1") == 2
    assert "--holdout-fraction must lie strictly between 0 and 1" in capsys.readouterr().err
    data = str(ws.config.parent / "incoming" / DAYS[0])
    assert main(retrain_argv(ws.config, ws.registry, data, "2024-3-1")) == 2
    assert "--day must be a date YYYY-MM-DD, got '2024-3-1'" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text(CONFIG.replace("window_days = 7", "window = 7"))
    with pytest.raises(ConfigError, match=r"\[retrain\]: unknown key 'window'"):
        load(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text(CONFIG.replace("window_days = 7", "window_days = 0"))
    with pytest.raises(ConfigError, match=r"\[retrain\] window_days: must be >= 1"):
        load(tmp_path / "c.toml")
