"""Checkpoints: optimizer state round-trips exactly, folders are atomic and pruned, damaged files are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from widedeep.atomic import remove_stale
from widedeep.optim.state import OptimizerStateError, load_optimizer_tensors, optimizer_tensors
from widedeep.train.checkpoint import (
    CheckpointError,
    LoopState,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    restore,
    save_checkpoint,
)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = torch.nn.EmbeddingBag(50, 1, mode="sum", sparse=True)
        self.mlp = torch.nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.wide(ids).squeeze(1) + self.mlp(x).squeeze(1)


def make(seed: int = 0) -> tuple[Toy, dict[str, torch.optim.Optimizer]]:
    torch.manual_seed(seed)
    model = Toy()
    opts = {
        "wide": torch.optim.SparseAdam(list(model.wide.parameters()), lr=0.05),
        "deep": torch.optim.Adagrad(list(model.mlp.parameters()), lr=0.1),
    }
    return model, opts


def steps(model: Toy, opts: dict[str, torch.optim.Optimizer], start: int, n: int) -> None:
    for i in range(start, start + n):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, 50, (8, 3), generator=g)
        x = torch.randn(8, 4, generator=g)
        y = torch.randint(0, 2, (8,), generator=g).float()
        for o in opts.values():
            o.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids, x), y).backward()
        for o in opts.values():
            o.step()


def test_optimizer_tensors_keys_and_exact_roundtrip() -> None:
    model, opts = make()
    steps(model, opts, 0, 5)
    flat = optimizer_tensors(opts, model)
    assert "deep/mlp.weight::sum" in flat and "deep/mlp.weight::step" in flat
    assert "wide/wide.weight::exp_avg" in flat
    assert all(isinstance(v, torch.Tensor) for v in flat.values())

    fresh, fresh_opts = make(seed=1)
    fresh.load_state_dict(model.state_dict())
    load_optimizer_tensors(fresh_opts, fresh, flat)
    steps(model, opts, 5, 3)
    steps(fresh, fresh_opts, 5, 3)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_python_number_state_roundtrips_as_number() -> None:
    model, opts = make()
    steps(model, opts, 0, 1)
    opts["deep"].state[model.mlp.bias]["counter"] = 7
    flat = optimizer_tensors(opts, model)
    assert flat["deep/mlp.bias::counter"].dtype == torch.int64
    fresh, fresh_opts = make()
    load_optimizer_tensors(fresh_opts, fresh, flat)
    assert fresh_opts["deep"].state[fresh.mlp.bias]["counter"] == 7
    assert isinstance(fresh_opts["deep"].state[fresh.mlp.bias]["counter"], int)


@pytest.mark.parametrize(
    "key, message",
    [("nogroup", "not of the form"), ("other/mlp.weight::sum", "unknown optimizer group"), ("wide/mlp.weight::sum", "not optimized by")],
)
def test_load_optimizer_tensors_rejects_bad_keys(key: str, message: str) -> None:
    model, opts = make()
    with pytest.raises(OptimizerStateError, match=message):
        load_optimizer_tensors(opts, model, {key: torch.zeros(1)})


def test_load_optimizer_tensors_rejects_wrong_shape() -> None:
    model, opts = make()
    with pytest.raises(OptimizerStateError, match="shape"):
        load_optimizer_tensors(opts, model, {"deep/mlp.weight::sum": torch.zeros(3, 3)})


def test_save_read_restore_and_keep_last_two(tmp_path) -> None:
    model, opts = make()
    ckpt_dir = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        steps(model, opts, step - 2, 2)
        save_checkpoint(ckpt_dir, model, opts, LoopState(step=step, epoch=0, batch=step), "fp-1")
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000000004", "step-000000006"]
    assert not any(p.name.startswith(".") for p in ckpt_dir.iterdir())  # no temporary folder left behind

    ckpt = read_checkpoint(latest_checkpoint(ckpt_dir))
    assert ckpt.state.step == 6 and ckpt.state.batch == 6 and ckpt.fingerprint == "fp-1"
    fresh, fresh_opts = make(seed=3)
    restore(ckpt, fresh, fresh_opts)
    steps(model, opts, 6, 2)
    steps(fresh, fresh_opts, 6, 2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


KILLED_MID_WRITE = """
import os, sys, torch
import widedeep.train.checkpoint as ckpt
ckpt.save_file = lambda *args, **kwargs: os._exit(3)  # the process dies while writing the tensor files
ckpt.save_checkpoint(sys.argv[1], torch.nn.Linear(2, 1), {}, ckpt.LoopState(step=2), "fp")
"""


def test_a_write_killed_midway_is_ignored_and_removed_by_remove_stale(tmp_path) -> None:
    model, opts = make()
    save_checkpoint(tmp_path, model, opts, LoopState(step=1), "fp")
    r = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert left.name.startswith(".step-000000002.tmp-")  # a `widedeep.atomic` temporary name, with the writer's pid
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    assert latest_checkpoint(tmp_path / "none") is None
    assert remove_stale(tmp_path) == [left]  # its process is gone
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001"]


def test_truncated_or_tampered_checkpoint_is_refused(tmp_path) -> None:
    model, opts = make()
    steps(model, opts, 0, 1)
    path = save_checkpoint(tmp_path, model, opts, LoopState(step=1), "fp")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)

    path = save_checkpoint(tmp_path, model, opts, LoopState(step=2), "fp")
    meta = json.loads((path / "state.json").read_text())
    meta["sha256"]["optimizer.safetensors"] = "0" * 64
    (path / "state.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="optimizer.safetensors: checksum mismatch"):
        read_checkpoint(path)

    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no state.json"):
        read_checkpoint(tmp_path)


def test_restore_into_a_different_model_is_refused(tmp_path) -> None:
    model, opts = make()
    path = save_checkpoint(tmp_path, model, opts, LoopState(step=1), "fp")
    other = torch.nn.Linear(4, 1)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore(read_checkpoint(path), other, {})


def test_restore_with_optimizer_state_that_does_not_fit_is_refused(tmp_path) -> None:
    model, opts = make()
    steps(model, opts, 0, 1)
    path = save_checkpoint(tmp_path, model, opts, LoopState(step=1), "fp")
    fresh, fresh_opts = make()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors does not fit these optimizers.*unknown optimizer group"):
        restore(read_checkpoint(path), fresh, {"deep": fresh_opts["deep"]})
