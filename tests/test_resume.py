"""An interrupted run resumed with --resume ends bit-identical to an uninterrupted one (CPU), dropout included."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from widedeep.config import Config, load
from widedeep.train.checkpoint import CheckpointError, list_checkpoints
from widedeep.train.loop import train


def variant(tiny_config: Path, out: Path, model: dict | None = None, **train_changes) -> Config:
    """The tiny config writing to `out`, reading the shared prepared shards, with some settings changed."""
    cfg = load(tiny_config)
    return replace(
        cfg,
        data=replace(cfg.data, prepared=str(cfg.prepared_dir)),
        model=replace(cfg.model, **(model or {})),
        train=replace(cfg.train, out=str(out), **train_changes),
    )


def tensors(model_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / name))


def run_dir(out: Path) -> Path:
    """The checkpoint folder of the one run that trained into `out`."""
    (found,) = (out / "checkpoints").iterdir()
    return found


SETTINGS = dict(epochs=3, checkpoint_every=5, eval_every=7)  # 16 batches per epoch: checkpoints mid-epoch and at ends


@pytest.fixture(scope="module")
def uninterrupted(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    return train(variant(tiny_config, out, {"dropout": 0.2}, **SETTINGS), progress=False)


@pytest.mark.parametrize("stop, resume_from", [(23, 20), (17, 16)])  # 16: an epoch boundary
def test_resume_is_bitwise_identical(tiny_config: Path, uninterrupted: Path, tmp_path: Path, stop: int, resume_from: int) -> None:
    cfg = variant(tiny_config, tmp_path, {"dropout": 0.2}, **SETTINGS)
    train(cfg, progress=False, max_steps=stop)
    # Simulate a crash just before the checkpoint at `stop`: the work after `resume_from` is lost.
    for ckpt in list_checkpoints(run_dir(tmp_path)):
        if int(ckpt.name.split("-")[1]) > resume_from:
            shutil.rmtree(ckpt)
    assert list_checkpoints(run_dir(tmp_path))[-1].name == f"step-{resume_from:09d}"

    resumed = train(cfg, progress=False, resume=True)
    a, b = tensors(uninterrupted), tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa, ob = tensors(uninterrupted, "optimizer.safetensors"), tensors(resumed, "optimizer.safetensors")
    assert oa.keys() == ob.keys() and any(k.endswith("::z") for k in oa)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k

    # The metrics log continues where the checkpoint left it: same eval points, same AUCs.
    def evals(out: Path) -> list[tuple[int, float]]:
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["auc"]) for r in lines if r["split"] == "eval"]

    assert evals(tmp_path) == evals(uninterrupted.parent)

    # So do the training-loss windows, including the one the interruption cut: its running sums are checkpointed.
    def losses(out: Path) -> list[tuple[int, float]]:
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in lines if r["split"] == "train"]

    assert losses(tmp_path) == losses(uninterrupted.parent)


def test_dropout_actually_randomizes_steps(tiny_config: Path, uninterrupted: Path, tmp_path: Path) -> None:
    """Guards the test above: with another seed the weights differ, so equality is not vacuous."""
    other = train(variant(tiny_config, tmp_path, {"dropout": 0.2}, **{**SETTINGS, "seed": 1}), progress=False)
    a, b = tensors(uninterrupted), tensors(other)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_is_an_error(tiny_config: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint of this run"):
        train(variant(tiny_config, tmp_path), progress=False, resume=True)
    model_dir = train(variant(tiny_config, tmp_path, epochs=1), progress=False, resume="auto")  # starts fresh
    assert json.loads((model_dir / "model.json").read_text())["metrics"]["steps"] == 16


def test_resume_with_other_settings_is_refused(tiny_config: Path, tmp_path: Path) -> None:
    train(variant(tiny_config, tmp_path, epochs=1), progress=False, max_steps=3)
    with pytest.raises(CheckpointError, match="no checkpoint of this run .*checkpoints of other runs"):
        train(variant(tiny_config, tmp_path, epochs=1, batch_size=64), progress=False, resume=True)
    # More epochs is allowed: the run continues from step 3.
    model_dir = train(variant(tiny_config, tmp_path, epochs=2), progress=False, resume=True)
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["metrics"]["steps"] == 32 and meta["metrics"]["examples"] == 4000
