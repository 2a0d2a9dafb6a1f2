"""Training never loses or confuses state: runs keep their own checkpoints, divergence publishes nothing, dead runs'
temporary folders are cleaned up without touching live ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from widedeep import atomic
from widedeep.cli import main
from widedeep.config import Config, OptimizerConfig, load
from widedeep.train.checkpoint import list_checkpoints
from widedeep.train.loop import TrainingDiverged, train
from conftest import make_log


def own_data(tiny_config: Path, root: Path, **train_changes) -> Config:
    """The tiny config over a private copy of its data (so the test may change the files), training into root/run."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.parquet", "eval.parquet", "config.toml"):
        shutil.copy(tiny_config.parent / name, root / name)
    cfg = load(root / "config.toml")
    return replace(cfg, train=replace(cfg.train, **train_changes))


def steps(folder: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(folder)]


def test_a_new_run_in_an_old_out_dir_keeps_its_own_checkpoints_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    cfg = own_data(tiny_config, tmp_path, epochs=2, checkpoint_every=3)
    train(cfg, progress=False)  # a finished run: checkpoints up to step 32
    (old,) = (cfg.out_dir / "checkpoints").iterdir()
    old_steps = steps(old)
    assert old_steps[-1] == 32

    pq.write_table(make_log(2000, seed=5), tmp_path / "train.parquet")  # new data: another run
    train(cfg, progress=False, max_steps=10)  # "killed" after many checkpoint writes
    new = next(p for p in (cfg.out_dir / "checkpoints").iterdir() if p != old)
    assert steps(new) == [9, 10] and steps(old) == old_steps  # neither run pruned the other's checkpoints
    model_dir = train(cfg, progress=False, resume=True)  # resumes the new run, not the old one
    assert json.loads((model_dir / "model.json").read_text())["metrics"]["steps"] == 32
    assert steps(new)[-1] == 32


def test_divergence_is_an_error_and_publishes_no_model(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = own_data(tiny_config, tmp_path, epochs=1)
    huge = replace(cfg.train, deep_optimizer=OptimizerConfig("sgd", (("lr", 1e30),)), wide_optimizer=OptimizerConfig("sgd", (("lr", 1e30),)))
    cfg = replace(cfg, data=replace(cfg.data, eval=()), train=huge)
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+ \(loss is NaN or inf\)"):
        train(cfg, progress=False)
    assert not (cfg.out_dir / "model").exists()
    assert not any(p.name.startswith(".model") for p in cfg.out_dir.iterdir())

    text = (tmp_path / "config.toml").read_text()
    text = text.replace('eval = "eval.parquet"\n', "")
    text = text.replace("[train]", '[train]\nwide_optimizer = { name = "sgd", lr = 1e30 }\ndeep_optimizer = { name = "sgd", lr = 1e30 }')
    (tmp_path / "bad.toml").write_text(text)
    assert main(["train", str(tmp_path / "bad.toml")]) == 2
    assert "diverged at step" in capsys.readouterr().err
    assert not (cfg.out_dir / "model").exists()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def leftover(target: Path, pid: int) -> Path:
    """A temporary folder as `atomic` names them, left by process `pid`."""
    name = atomic.temp_path(target).name.replace(f"-{atomic.os.getpid()}-", f"-{pid}-")
    path = target.with_name(name)
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"x" * 1000)
    return path


def test_dead_runs_temp_folders_are_removed_live_ones_kept(tiny_config: Path, tmp_path: Path) -> None:
    cfg = own_data(tiny_config, tmp_path, epochs=1)
    train(cfg, progress=False)
    (ckpts,) = (cfg.out_dir / "checkpoints").iterdir()
    dead = [leftover(cfg.out_dir / "model", dead_pid()), leftover(ckpts / "step-000000007", dead_pid())]
    live = leftover(cfg.out_dir / "model", atomic.os.getpid())
    train(cfg, progress=False)
    assert not any(p.exists() for p in dead)
    assert live.exists()  # this process is alive: never removed
