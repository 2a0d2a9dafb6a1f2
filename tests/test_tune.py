"""widedeep tune: the [tune] table, the search space, the study (pruning, resuming, shared by worker processes) and its
outputs (best.toml that trains the best model again, the trial table, the best model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_CONFIG, make_log

from widedeep.config import ConfigError, TuneParam, from_dict, load, to_dict

optuna = pytest.importorskip("optuna")

from widedeep.tune import space  # noqa: E402
from widedeep.tune.outputs import config_toml  # noqa: E402
from widedeep.tune.study import fail_dead_trials, objective, open_storage, open_study, tune  # noqa: E402

TUNE_TABLE = """
[tune]
embedding_dim = [4, 8]
hidden = [[8], [16, 8]]
dropout = [0.0, 0.3]
batch_size = {choices = [128, 256]}

[tune.wide_optimizer]
alpha = [0.05, 0.5]
l1 = {low = 0.0, high = 1e-3}

[tune.deep_optimizer]
lr = [0.01, 0.1]
"""
SETTINGS = ["embedding_dim", "hidden", "dropout", "batch_size", "wide_optimizer.alpha", "wide_optimizer.l1", "deep_optimizer.lr"]


def _config_text(tune_table: str = TUNE_TABLE) -> str:
    text = TINY_CONFIG.replace('label = "installed"', 'test = "test.parquet"\nlabel = "installed"')
    return text.replace("epochs = 2", 'epochs = "auto"\nmax_epochs = 2') + tune_table


@pytest.fixture
def tune_config(tmp_path: Path) -> Path:
    """The tiny log with train, eval and test splits; automatic epochs (at most 2) and a small [tune] space."""
    for name, n, seed in (("train", 2000, 1), ("eval", 500, 2), ("test", 500, 3)):
        pq.write_table(make_log(n, seed=seed), tmp_path / f"{name}.parquet")
    (tmp_path / "config.toml").write_text(_config_text())
    return tmp_path / "config.toml"


def _storage(path: Path):
    return open_storage(str(path))


def _parse(extra: str, model_type: str = "wide_deep"):
    text = _config_text(extra).replace('type = "wide_deep"', f'type = "{model_type}"')
    return from_dict(tomllib.loads(text), Path("/cfg/config.toml"))


# ----------------------------------------------------------------------------------------------------------------------
# The [tune] table


def test_tune_table_is_read_and_round_trips_through_to_dict():
    cfg = _parse(TUNE_TABLE)
    params = {p.name: p for p in cfg.tune.params}
    assert list(params) == SETTINGS
    assert params["embedding_dim"] == TuneParam("embedding_dim", choices=(4, 8))
    assert params["hidden"].choices == ((8,), (16, 8))
    assert params["dropout"] == TuneParam("dropout", 0.0, 0.3, log=False)  # low = 0: uniform
    assert params["wide_optimizer.alpha"] == TuneParam("wide_optimizer.alpha", 0.05, 0.5, log=True)  # low > 0: log
    assert params["wide_optimizer.l1"].log is False
    assert params["batch_size"].choices == (128, 256)
    assert from_dict(json.loads(json.dumps(to_dict(cfg))), cfg.path).tune == cfg.tune
    assert _parse("").tune is None and "tune" not in to_dict(_parse(""))


@pytest.mark.parametrize(
    "table, message",
    [
        ("[tune]\ndropout = [0.0, 0.2, 0.4]", "[tune] dropout: must be [low, high] (a range) or {choices = [...]}"),
        ("[tune]\ndropout = [0.2, 1.0]", "[tune] dropout: values must be in [0, 1), got 1.0"),
        ("[tune]\nembedding_dim = [0, 8]", "[tune] embedding_dim: values must be >= 1, got 0"),
        ("[tune]\nembedding_dim = [8.0, 16.0]", "[tune] embedding_dim: values must be integers, got 8.0"),
        ("[tune]\nhidden = [[8, 0]]", "[tune] hidden: choices must be lists of positive integers, got [8, 0]"),
        ("[tune]\nhidden = {low = 8, high = 16}", "[tune] hidden: takes {choices = [...]}"),
        ("[tune]\nbatch_size = {choices = []}", "[tune] batch_size: must list at least one choice"),
        ("[tune.wide_optimizer]\nalpha = [0.5, 0.1]", "[tune.wide_optimizer] alpha: low must be below high, got 0.5 and 0.1"),
        ("[tune.wide_optimizer]\nalpha = [0.0, 0.1]", "[tune.wide_optimizer] alpha: values must be > 0, got 0.0"),
        ("[tune.wide_optimizer]\nl1 = {low = 0.0, high = 1.0, log = true}", "[tune.wide_optimizer] l1: a log range needs low"),
        (
            "[tune.wide_optimizer]\nlr = [0.1, 1.0]",
            "[tune.wide_optimizer]: unknown key 'lr' (accepted keys: ['alpha', 'beta', 'l1', 'l2'])",
        ),
        ("[tune.deep_optimizer]\nlr = {low = 0.01, high = 0.1, step = 2}", "[tune.deep_optimizer] lr: unknown key 'step'"),
        ("[tune]\nlearning_rate = [0.1, 1.0]", "[tune]: unknown key 'learning_rate'"),
        ("[tune]", "[tune]: names no setting to search (leave [tune] out to search the default space)"),
    ],
)
def test_bad_tune_table_names_the_key(table: str, message: str):
    with pytest.raises(ConfigError) as e:
        _parse("\n" + table + "\n")
    assert message in str(e.value)
    assert str(e.value).startswith("/cfg/config.toml: ")


def test_tune_table_refuses_settings_of_a_missing_part():
    with pytest.raises(ConfigError, match=r"\[tune\] hidden: the model has no deep part \(type 'wide'\)"):
        _parse("\n[tune]\nhidden = [[8]]\n", model_type="wide")
    with pytest.raises(ConfigError, match=r"\[tune\] wide_optimizer: the model has no wide part \(type 'deep'\)"):
        _parse("\n[tune.wide_optimizer]\nalpha = [0.1, 0.2]\n", model_type="deep")


# ----------------------------------------------------------------------------------------------------------------------
# The search space


def test_default_space_searches_the_parts_the_model_has():
    names = lambda cfg: [p.name for p in space.search_space(cfg)]  # noqa: E731
    both = _parse("")
    assert names(both) == [
        "embedding_dim", "hidden", "dropout", "batch_size",
        "wide_optimizer.alpha", "wide_optimizer.beta", "wide_optimizer.l1", "wide_optimizer.l2", "deep_optimizer.lr",
    ]  # fmt: skip
    ftrl = ["wide_optimizer.alpha", "wide_optimizer.beta", "wide_optimizer.l1", "wide_optimizer.l2"]
    assert names(_parse("", model_type="wide")) == ["batch_size", *ftrl]
    deep_lr = next(p for p in space.search_space(both) if p.name == "deep_optimizer.lr")
    assert (deep_lr.low, deep_lr.high, deep_lr.log) == pytest.approx((0.005, 0.5, True))  # a decade either side of 0.05
    assert names(_parse(TUNE_TABLE)) == SETTINGS  # a [tune] table replaces the default space


def test_suggested_values_make_the_trial_config():
    cfg = _parse(TUNE_TABLE)
    trial = optuna.trial.FixedTrial(
        {"embedding_dim": 8, "hidden": "[16, 8]", "dropout": 0.25, "batch_size": 256,
         "wide_optimizer.alpha": 0.1, "wide_optimizer.l1": 1e-4, "deep_optimizer.lr": 0.02}
    )  # fmt: skip
    values = space.suggest(trial, cfg.tune.params)
    assert values["hidden"] == (16, 8)
    trial_cfg = space.apply(cfg, values)
    assert (trial_cfg.model.embedding_dim, trial_cfg.model.hidden, trial_cfg.model.dropout) == (8, (16, 8), 0.25)
    assert trial_cfg.train.batch_size == 256
    assert trial_cfg.train.wide_optimizer.kwargs() == {"alpha": 0.1, "l1": 1e-4}
    assert trial_cfg.train.deep_optimizer.kwargs() == {"lr": 0.02}
    assert space.from_json(json.loads(json.dumps(space.to_json(values)))) == values


def test_best_toml_reads_back_to_the_same_config(tmp_path: Path):
    raw = tomllib.loads(_config_text())
    raw["features"]['odd "name".x'] = {"type": "hashed", "buckets": 8, "column": "user_id"}  # a key TOML must quote
    cfg = from_dict(raw, tmp_path / "config.toml")
    folder = tmp_path / "run" / "tune"
    folder.mkdir(parents=True)
    (folder / "best.toml").write_text(config_toml(cfg, folder, "a comment"))
    back = load(folder / "best.toml")
    assert (back.features, back.crosses, back.model, back.tune) == (cfg.features, cfg.crosses, cfg.model, cfg.tune)
    assert replace(back.train, out="") == replace(cfg.train, out="")
    assert back.out_dir.resolve() == cfg.out_dir.resolve() and back.prepared_dir.resolve() == cfg.prepared_dir.resolve()
    for split in ("train", "eval", "test"):
        resolved = lambda c: [c.resolve(p).resolve() for p in getattr(c.data, split)]  # noqa: E731
        assert resolved(back) == resolved(cfg)


# ----------------------------------------------------------------------------------------------------------------------
# The study


def test_tune_chooses_on_eval_writes_outputs_and_continues(tune_config: Path):
    from widedeep.artifact import read_meta
    from widedeep.train.loop import train

    cfg = load(tune_config)
    result = tune(cfg, 3, progress=False)
    folder = cfg.out_dir / "tune" / "config"
    assert result.folder == folder
    table = pq.read_table(folder / "trials.parquet").to_pylist()
    assert [r["trial"] for r in table] == [0, 1, 2]
    assert {r["state"] for r in table} <= {"complete", "pruned"} and table[0]["state"] == table[1]["state"] == "complete"
    study = optuna.load_study(study_name="config", storage=_storage(folder.parent / "journal.log"))
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result.best["number"] == best.number and result.best["eval_auc"] == best.value
    for t, row in zip(study.trials, table):
        assert set(row) >= {*SETTINGS, "eval_auc", "test_auc"}
        if t.state.name == "COMPLETE":  # each epoch's eval AUC was reported; the test split recorded, not chosen on
            assert sorted(t.intermediate_values) == [1, 2] and row["eval_auc"] == t.value
            assert row["test_auc"] == t.user_attrs["test"]["auc"] != t.value
    assert not list((folder / "trials").glob("*/checkpoints"))
    assert "**" + str(best.number) + "**" in (folder / "trials.md").read_text()

    # The best model is published beside best.toml, and best.toml trains it again: the same eval AUC.
    assert read_meta(folder / "model")["files"] == read_meta(folder / "trials" / f"{best.number:04d}" / "model")["files"]
    again = load(folder / "best.toml")
    assert space.apply(cfg, space.from_json(best.user_attrs["values"])).model == again.model
    meta = read_meta(train(again, progress=False))
    assert meta["metrics"]["eval"]["auc"] == pytest.approx(best.value, abs=1e-9)
    if (folder / "history.png").exists():
        assert (folder / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Running again continues the study, with new draws (not those of the first trials again).
    tune(cfg, 1, progress=False)
    study = optuna.load_study(study_name="config", storage=_storage(folder.parent / "journal.log"))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert study.trials[3].params != study.trials[0].params
    assert len(pq.read_table(folder / "trials.parquet")) == 4


def test_a_trial_below_the_pruner_stops_after_its_first_epoch(tune_config: Path):
    cfg = load(tune_config)
    from widedeep.features.prepare import prepare

    prepare(cfg, verbose=False)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))  # every AUC < 1
    folder = cfg.out_dir / "tune"
    study.optimize(lambda t: objective(t, cfg, cfg.tune.params, folder, "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    assert not (folder / "trials" / "0000" / "model").exists()


def test_tune_needs_eval_data_and_a_study_name_fit_for_a_folder(tune_config: Path):
    cfg = load(tune_config)
    with pytest.raises(ValueError, match=r"config.toml: tune chooses on eval AUC and needs eval data"):
        tune(replace(cfg, data=replace(cfg.data, eval=())), 1, progress=False)
    with pytest.raises(ValueError, match=r"it names a folder\), got '../x'"):
        tune(cfg, 1, study_name="../x", progress=False)


def test_a_study_refuses_a_config_with_other_features(tune_config: Path, tmp_path: Path):
    cfg = load(tune_config)
    url = str(tmp_path / "journal.log")
    open_study(cfg, url, "s")
    open_study(replace(cfg, model=replace(cfg.model, dropout=0.3)), url, "s")  # searched settings may differ
    other = replace(cfg, model=replace(cfg.model, deep=cfg.model.deep[:-1]))
    with pytest.raises(ValueError, match="study 's' in .* was begun with other features, crosses, label or model inputs"):
        open_study(other, url, "s")


def test_trials_of_dead_processes_are_marked_failed(tune_config: Path, tmp_path: Path):
    study = open_study(load(tune_config), str(tmp_path / "journal.log"), "s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    for pid in (int(dead), os.getpid()):
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    fail_dead_trials(study)
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]


def test_worker_processes_share_one_study(tune_config: Path, tmp_path: Path):
    """--jobs 2: two processes of `python -m widedeep tune` on one study in a shared storage."""
    from widedeep.cli import main

    storage = tmp_path / "shared.log"
    assert main(["tune", str(tune_config), "--trials", "2", "--jobs", "2", "--storage", str(storage), "--study", "s"]) == 0
    study = optuna.load_study(study_name="s", storage=_storage(storage))
    assert sorted(t.number for t in study.trials) == [0, 1]  # the trials of both, no number twice
    pids = [t.user_attrs["pid"] for t in study.trials]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert len(pq.read_table(load(tune_config).out_dir / "tune" / "s" / "trials.parquet")) == 2
