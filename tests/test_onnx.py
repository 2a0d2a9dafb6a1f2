"""ONNX export: onnxruntime reproduces the torch probabilities (|dp| <= 1e-5) on real and random batches of many shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from derived_models import derive, negate
from widedeep.artifact import ArtifactError, Model
from widedeep.batch import Batch
from widedeep.cli import main
from widedeep.serve.onnx import OnnxNetwork, example_tensors, export_onnx, sidecar_path

TOL = 1e-5


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def randomize(module: torch.nn.Module) -> None:
    """Random weights in every row and layer: a trained wide part is sparse (FTRL), and parity must hold for any weights."""
    gen = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with random weights, exported once through the CLI (the export is the slow part: one per module)."""
    model_dir = derive(tiny_model, tmp_path_factory.mktemp("onnx") / "model", randomize)
    assert main(["export", str(model_dir), "--onnx"]) == 0
    return model_dir


@pytest.fixture(scope="module")
def model(exported: Path) -> Model:
    return Model.load(exported)


@pytest.fixture(scope="module")
def net(exported: Path) -> OnnxNetwork:
    return OnnxNetwork(exported / "model.onnx", intra_op_num_threads=1)


def torch_probs(model: Model, ids: torch.Tensor, dense: torch.Tensor, lists: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return sigmoid(model.module.forward_tensors(ids, dense, *lists).numpy())


@pytest.mark.parametrize("rows", [1, 7, 64, 500])
def test_parity_on_real_rows(model: Model, net: OnnxNetwork, tiny_config: Path, rows: int) -> None:
    table = pq.read_table(tiny_config.parent / "eval.parquet").slice(0, rows)
    enc = model.features.transform(table)
    batch = Batch.from_encoded(enc)
    with torch.inference_mode():
        want = sigmoid(model.module(batch).numpy())
    got = sigmoid(net.score_encoded(enc))
    assert got.shape == (rows,)
    assert np.abs(got - want).max() <= TOL
    assert rows == 1 or want.std() > 0.01  # varied scores, not a constant
    # The Scorer's artifact path agrees too (same transform, same network).
    assert np.abs(got - model.predict(table)).max() <= TOL


@pytest.mark.parametrize("rows,max_len", [(1, 1), (3, 40), (33, 2), (256, 9)])
def test_parity_on_random_batches(model: Model, net: OnnxNetwork, rows: int, max_len: int) -> None:
    ids, dense, lists = example_tensors(model.features, rows, max_len, seed=rows)
    want = torch_probs(model, ids, dense, lists)
    got = sigmoid(net(ids.numpy(), dense.numpy(), {s: t.numpy() for s, t in zip(model.features.list_slots, lists)}))
    assert np.abs(got - want).max() <= TOL
    # Lists may also be passed positionally, in list-slot order.
    arrays = [t.numpy() for t in lists]
    by_name = net(ids.numpy(), dense.numpy(), dict(zip(model.features.list_slots, arrays)))
    assert np.array_equal(net(ids.numpy(), dense.numpy(), arrays), by_name)


def test_graph_has_named_inputs_and_dynamic_axes(model: Model, net: OnnxNetwork) -> None:
    inputs = {i.name: i for i in net.session.get_inputs()}
    fs = model.features
    assert list(inputs) == ["ids", "dense", *fs.list_slots]
    assert net.list_slots == tuple(fs.list_slots)
    assert inputs["ids"].type == "tensor(int64)" and inputs["dense"].type == "tensor(float)"
    assert inputs["ids"].shape[1] == len(fs.id_slots) and inputs["dense"].shape[1] == len(fs.dense_names)
    batch_axes = {i.shape[0] for i in inputs.values()}
    assert len(batch_axes) == 1 and isinstance(batch_axes.pop(), str)  # one shared symbolic batch axis
    for slot in fs.list_slots:
        assert isinstance(inputs[slot].shape[1], str)  # symbolic list length
    (out,) = net.session.get_outputs()
    assert out.name == "logits" and len(out.shape) == 1


def test_sidecar_records_inputs_and_weights(exported: Path, model: Model) -> None:
    side = json.loads((exported / "onnx.json").read_text())
    assert side["weights_sha256"] == model.meta["files"]["model.safetensors"]["sha256"]
    fs = model.features
    assert side["inputs"] == {"ids": list(fs.id_slots), "dense": list(fs.dense_names), "lists": list(fs.list_slots)}
    assert side["export_max_abs_logit_diff"] <= 1e-4
    assert sidecar_path(exported / "model.onnx") == exported / "onnx.json"
    assert sidecar_path(exported / "net.onnx") == exported / "net.onnx.json"
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_corrupt_onnx_is_refused(exported: Path, tmp_path: Path) -> None:
    shutil.copy(exported / "model.onnx", tmp_path / "model.onnx")
    shutil.copy(exported / "onnx.json", tmp_path / "onnx.json")
    OnnxNetwork(tmp_path)  # a folder is accepted; without model.json beside, only the ONNX checksum is checked
    with open(tmp_path / "model.onnx", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        OnnxNetwork(tmp_path / "model.onnx")
    (tmp_path / "onnx.json").unlink()
    with pytest.raises(ArtifactError, match="onnx.json: missing"):
        OnnxNetwork(tmp_path / "model.onnx")


def test_stale_export_is_refused(exported: Path, tmp_path: Path) -> None:
    """An ONNX file next to weights other than the ones it was exported from is never served."""
    other = derive(exported, tmp_path / "other", negate)
    shutil.copy(exported / "model.onnx", other / "model.onnx")
    shutil.copy(exported / "onnx.json", other / "onnx.json")
    with pytest.raises(ArtifactError, match="exported from weights"):
        OnnxNetwork(other / "model.onnx")


def test_export_errors(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        export_onnx(tmp_path / "missing")
    broken = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtifactError, match="checksum"):
        export_onnx(broken)
    assert not (broken / "model.onnx").exists()
    (broken / "model.json").write_text("{ truncated")
    assert main(["export", str(broken), "--onnx"]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["export", str(tiny_model)]) == 2  # no format chosen
    assert not (tiny_model / "model.onnx").exists()


def test_missing_list_input_is_named(model: Model, net: OnnxNetwork) -> None:
    ids, dense, lists = example_tensors(model.features, 4, 3)
    with pytest.raises(ValueError, match=repr(model.features.list_slots[0])):
        net(ids.numpy(), dense.numpy(), {})


def test_validation_checks_the_onnx_export(exported: Path, tiny_config: Path, tmp_path: Path) -> None:
    """The dry run scores the holdout through model.onnx too; a stale export fails it."""
    from widedeep.serve.validate import validate

    holdout = tiny_config.parent / "eval.parquet"
    report = validate(exported, None, holdout)
    assert report.passed, report.to_text()
    assert [c.name for c in report.checks][:2] == ["load", "onnx_load"] and "onnx_parity" in [c.name for c in report.checks]
    other = derive(exported, tmp_path / "other", negate)
    shutil.copy(exported / "model.onnx", other / "model.onnx")
    shutil.copy(exported / "onnx.json", other / "onnx.json")
    stale = validate(other, None, holdout)
    assert [c.name for c in stale.checks if not c.passed] == ["onnx_load"]
    assert "exported from weights" in stale.to_text()
