"""The training loop end to end on the tiny log: layout, metrics, determinism, stale-data prepare, early stopping, bf16."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from widedeep.cli import main
from widedeep.config import Config, load
from widedeep.train.distributed import resolve_device
from widedeep.train.loop import cpu_threads, train, use_bf16
from conftest import make_log


def variant(tiny_config: Path, out: Path, **train_changes) -> Config:
    cfg = load(tiny_config)
    return replace(cfg, data=replace(cfg.data, prepared=str(cfg.prepared_dir)), train=replace(cfg.train, out=str(out), **train_changes))


def checkpoints(out: Path) -> list[str]:
    """The step folders of the one run that trained into `out`."""
    runs = list((out / "checkpoints").iterdir())
    assert len(runs) == 1, runs
    return sorted(p.name for p in runs[0].iterdir())


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_layout_metrics_and_artifact(tiny_model: Path) -> None:
    out = tiny_model.parent
    assert tiny_model == out / "model"
    assert {"features.json", "model.safetensors", "model.json", "optimizer.safetensors"} <= {p.name for p in tiny_model.iterdir()}
    assert checkpoints(out) == ["step-000000016", "step-000000032"]  # 2 epochs x 16 batches

    lines = records(out)
    evals = [r for r in lines if r["split"] == "eval"]
    trains = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in evals] == [16, 32] and [r["epoch"] for r in evals] == [0, 1]
    for r in evals:
        assert {"auc", "logloss", "calibration", "loss", "time"} <= r.keys() and r["examples"] == 500
        assert 0.0 <= r["auc"] <= 1.0 and r["loss"] == r["logloss"]
    for r in trains:
        assert r["loss"] > 0 and r["examples_per_s"] > 0
    assert trains[-1]["loss"] < trains[0]["loss"]  # it learns the training data

    m = json.loads((tiny_model / "model.json").read_text())["metrics"]
    assert m["eval"]["auc"] == evals[-1]["auc"] and m["steps"] == 32 and m["examples"] == 4000
    assert m["examples_per_s"] > 0 and m["train_seconds"] > 0 and 0.0 <= m["wide_sparsity"] <= 1.0
    trained_in = "bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"  # fp32 unless WIDEDEEP_BF16 forces bf16
    assert m["device"] == "cpu" and m["precision"] == {"train": trained_in, "metrics": "fp32"}


def test_the_saved_model_scores_eval_data_as_training_reported(tiny_model: Path, tiny_config: Path) -> None:
    from widedeep.artifact import Model

    m = Model.load(tiny_model).evaluate(pq.read_table(tiny_config.parent / "eval.parquet"))
    reported = json.loads((tiny_model / "model.json").read_text())["metrics"]["eval"]
    assert m["auc"] == pytest.approx(reported["auc"], abs=1e-9)
    assert m["logloss"] == pytest.approx(reported["logloss"], rel=1e-5)


def test_fixed_seed_is_deterministic(tiny_config: Path, tiny_model: Path, tmp_path: Path) -> None:
    again = train(variant(tiny_config, tmp_path / "a"), progress=False)
    a, b = load_file(str(tiny_model / "model.safetensors")), load_file(str(again / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = train(variant(tiny_config, tmp_path / "b", seed=7), progress=False)
    c = load_file(str(other / "model.safetensors"))
    assert not torch.equal(a["deep.mlp.layers.0.weight"], c["deep.mlp.layers.0.weight"])


def test_stale_encoded_data_is_prepared_again(tiny_config: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_config.parent, root, ignore=shutil.ignore_patterns("run"))
    cfg = replace(load(root / "config.toml"), train=replace(load(root / "config.toml").train, epochs=1))
    train(cfg, progress=False)
    manifest = json.loads((cfg.prepared_dir / "manifest.json").read_text())
    pq.write_table(make_log(1000, seed=9), root / "train.parquet")  # new data: the fingerprint changes
    model_dir = train(cfg, progress=False)
    fresh = json.loads((cfg.prepared_dir / "manifest.json").read_text())
    assert fresh["fingerprint"] != manifest["fingerprint"] and fresh["splits"]["train"]["rows"] == 1000
    assert json.loads((model_dir / "model.json").read_text())["metrics"]["examples"] == 1000


def test_eval_every_and_max_steps(tiny_config: Path, tmp_path: Path) -> None:
    train(variant(tiny_config, tmp_path, eval_every=5, checkpoint_every=4), progress=False, max_steps=13)
    steps = [r["step"] for r in records(tmp_path) if r["split"] == "eval"]
    assert steps == [5, 10, 13]  # every 5 steps, plus the stopping point
    assert checkpoints(tmp_path) == ["step-000000012", "step-000000013"]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]
    assert meta["steps"] == 13 and meta["loop"]["epoch"] == 0 and meta["loop"]["batch"] == 13


def test_early_stopping_keeps_the_best_weights(tiny_config: Path, tmp_path: Path) -> None:
    model_dir = train(variant(tiny_config, tmp_path, epochs=30, eval_every=4, early_stopping=2), progress=False)
    m = json.loads((model_dir / "model.json").read_text())["metrics"]
    evals = [r for r in records(tmp_path) if r["split"] == "eval"]
    best = max(evals, key=lambda r: r["auc"])
    assert m["early_stopping"]["stopped"] and m["steps"] < 30 * 16
    assert m["early_stopping"]["best_step"] == best["step"]
    assert m["eval"]["auc"] == pytest.approx(best["auc"], abs=1e-12)  # the saved weights are the best evaluation's
    assert evals[-1]["step"] > best["step"]


@pytest.mark.parametrize("setting", ["on", "off"])
def test_every_precision_records_the_metrics_the_artifact_reproduces(
    tiny_config: Path, tmp_path: Path, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The precision rule: whatever the training precision, recorded eval metrics are the saved model's fp32 scores.
    bf16 "on" runs on every CPU (emulated where the hardware lacks it), so this path is tested on every machine."""
    from widedeep.artifact import Model

    monkeypatch.delenv("WIDEDEEP_BF16", raising=False)
    model_dir = train(variant(tiny_config, tmp_path, epochs=1, bf16=setting), progress=False)
    m = json.loads((model_dir / "model.json").read_text())["metrics"]
    assert m["precision"] == {"train": "bf16" if setting == "on" else "fp32", "metrics": "fp32"}
    w = load_file(str(model_dir / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in w.values())  # autocast computes in bf16, keeps fp32 weights
    here = Model.load(model_dir).evaluate(pq.read_table(tiny_config.parent / "eval.parquet"))
    assert here["auc"] == pytest.approx(m["eval"]["auc"], abs=1e-9)
    assert here["logloss"] == pytest.approx(m["eval"]["logloss"], rel=1e-6)
    logged = [r for r in records(tmp_path) if r["split"] == "eval"][-1]
    assert logged["auc"] == m["eval"]["auc"]


def test_bf16_changes_the_training_step(tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 "on" really trains in bf16 (other weights than fp32), so the test above exercises that path."""
    monkeypatch.delenv("WIDEDEEP_BF16", raising=False)
    a = load_file(str(train(variant(tiny_config, tmp_path / "a", epochs=1, bf16="on"), progress=False) / "model.safetensors"))
    b = load_file(str(train(variant(tiny_config, tmp_path / "b", epochs=1, bf16="off"), progress=False) / "model.safetensors"))
    assert not torch.equal(a["deep.mlp.layers.0.weight"], b["deep.mlp.layers.0.weight"])


def test_bf16_rule_and_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv("WIDEDEEP_BF16", raising=False)
    assert use_bf16("on", cpu) and not use_bf16("off", cpu)
    assert not use_bf16("auto", cpu)  # fp32 unless bf16 is asked for, on every CPU
    monkeypatch.setenv("WIDEDEEP_BF16", "on")  # forces the bf16 path over any config
    assert use_bf16("auto", cpu) and use_bf16("off", cpu)
    monkeypatch.setenv("WIDEDEEP_BF16", "maybe")
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        use_bf16("auto", cpu)
    monkeypatch.delenv("WIDEDEEP_BF16")
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        use_bf16("maybe", cpu)
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_one_thread_for_small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small = torch.nn.Sequential()
    small.mlp = torch.nn.Linear(8, 8)
    big = torch.nn.Module()
    big.mlp = torch.nn.Linear(1024, 1024)
    assert cpu_threads(small, 256) == 1
    assert cpu_threads(big, 1024) == torch.get_num_threads()


def test_cli_train_and_errors(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = tiny_config.read_text().replace('out = "run"', f'out = "{tmp_path / "cli"}"').replace("epochs = 2", "epochs = 1")
    text = text.replace("[data]", f'[data]\nprepared = "{load(tiny_config).prepared_dir}"')
    (tmp_path / "c.toml").write_text(text.replace('"train.parquet"', f'"{tiny_config.parent / "train.parquet"}"').replace(
        '"eval.parquet"', f'"{tiny_config.parent / "eval.parquet"}"'
    ))  # fmt: skip
    assert main(["train", str(tmp_path / "c.toml"), "--device", "cpu"]) == 0
    assert (tmp_path / "cli" / "model" / "model.json").is_file()
    capsys.readouterr()
    shutil.rmtree(tmp_path / "cli" / "checkpoints")
    assert main(["train", str(tmp_path / "c.toml"), "--resume"]) == 2
    assert "no checkpoint of this run" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.toml"), "--resume=auto"]) == 0  # nothing to resume: starts fresh


def test_automatic_epochs_stop_without_gain_and_keep_the_best_epoch(tiny_config: Path, tmp_path: Path) -> None:
    # A gain of 0.5 AUC is never reached: the first epoch sets the mark, the second misses it, patience 1 stops there.
    model_dir = train(variant(tiny_config, tmp_path, epochs="auto", max_epochs=6, patience=1, min_gain=0.5), progress=False)
    m = json.loads((model_dir / "model.json").read_text())["metrics"]
    evals = [r for r in records(tmp_path) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [16, 32] and m["steps"] == 32
    best = max(range(2), key=lambda i: evals[i]["auc"])
    assert m["best_epoch"] == best + 1 and m["eval"]["auc"] == pytest.approx(evals[best]["auc"], abs=1e-12)
    # With a reachable gain it trains on, up to max_epochs.
    model_dir = train(variant(tiny_config, tmp_path / "long", epochs="auto", max_epochs=3, patience=5), progress=False)
    assert json.loads((model_dir / "model.json").read_text())["metrics"]["steps"] == 48


def test_automatic_epochs_without_eval_data_train_one_epoch(tiny_config: Path, tmp_path: Path) -> None:
    cfg = variant(tiny_config, tmp_path, epochs="auto")
    cfg = replace(cfg, data=replace(cfg.data, eval=(), prepared=str(tmp_path / "prepared")))
    m = json.loads((train(cfg, progress=False) / "model.json").read_text())["metrics"]
    assert m["steps"] == 16 and m["eval"] is None


def test_automatic_epochs_resume_where_they_stopped(tiny_config: Path, tmp_path: Path) -> None:
    settings = dict(epochs="auto", max_epochs=5, patience=1, min_gain=0.01, checkpoint_every=5)
    whole = train(variant(tiny_config, tmp_path / "whole", **settings), progress=False)
    cfg = variant(tiny_config, tmp_path / "cut", **settings)
    train(cfg, progress=False, max_steps=21)
    resumed = train(cfg, progress=False, resume=True)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "model.json").read_text())["metrics"] for d in (whole, resumed))
    assert (ma["steps"], ma["best_epoch"]) == (mb["steps"], mb["best_epoch"])


def test_the_test_split_is_scored_once_and_chooses_nothing(tiny_config: Path, tmp_path: Path) -> None:
    from widedeep.artifact import Model

    root = tiny_config.parent
    pq.write_table(make_log(300, seed=11), tmp_path / "other_test.parquet")
    runs = {}
    for name, test in (("a", str(root / "eval.parquet")), ("b", str(tmp_path / "other_test.parquet"))):
        cfg = variant(tiny_config, tmp_path / name, epochs="auto", max_epochs=4, patience=1)
        cfg = replace(cfg, data=replace(cfg.data, test=(test,), prepared=str(tmp_path / name / "prepared")))
        runs[name] = (train(cfg, progress=False), test)
    (a, test_a), (b, _) = runs["a"], runs["b"]
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # another test set trains the very same model
    m = json.loads((a / "model.json").read_text())["metrics"]
    assert m["test"]["auc"] == pytest.approx(Model.load(a).evaluate(test_a)["auc"], abs=1e-9)
    assert [r["split"] for r in records(tmp_path / "a")].count("test") == 1
