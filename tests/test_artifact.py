"""The model directory: save -> load -> identical predictions, and clear errors for tampered, truncated or missing files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from widedeep.artifact import ArtifactError, Model, save_model
from widedeep.metrics import binary_metrics


@pytest.fixture()
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the session model that a test may damage."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.fixture(scope="module")
def eval_table(tiny_config: Path):
    return pq.read_table(tiny_config.parent / "eval.parquet")


def test_directory_holds_the_documented_files(tiny_model: Path) -> None:
    meta = json.loads((tiny_model / "model.json").read_text())
    assert {"features.json", "model.safetensors", "model.json"} <= {p.name for p in tiny_model.iterdir()}
    assert meta["format_version"] == 1
    assert meta["config"]["model"]["type"] == "wide_deep"
    assert meta["architecture"]["type"] == "wide_deep"
    assert set(meta["versions"]) == {"widedeep", "torch", "numpy", "pyarrow", "python"}
    assert len(meta["files"]["model.safetensors"]["sha256"]) == 64
    assert "features.json" in meta["files"]
    assert not any(p.suffix in (".pkl", ".pt", ".pth", ".bin") for p in tiny_model.rglob("*"))


def test_save_load_round_trip_gives_identical_predictions(tiny_model: Path, tmp_path: Path, eval_table) -> None:
    first = Model.load(tiny_model)
    p1 = first.predict(eval_table)
    assert p1.shape == (eval_table.num_rows,) and np.isfinite(p1).all() and ((p1 > 0) & (p1 < 1)).all()
    assert not first.module.training
    out = save_model(tmp_path / "again", first.module, first.features, first.config, first.meta["metrics"])
    second = Model.load(out)
    np.testing.assert_array_equal(second.predict(eval_table), p1)
    assert second.version == first.version  # same weights, same sha256
    assert len(first.version) == 12


def test_predict_accepts_pandas_and_records_and_batches(tiny_model: Path, eval_table, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model.load(tiny_model)
    head = eval_table.slice(0, 50)
    expected = model.predict(head)
    np.testing.assert_allclose(model.predict(head.to_pandas()), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(head.to_pylist()), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(1 / (1 + np.exp(-model.predict_logits(head))), expected, rtol=1e-5)
    monkeypatch.setattr("widedeep.artifact.PREDICT_BATCH", 7)  # many small batches give the same scores
    np.testing.assert_allclose(model.predict(head), expected, rtol=1e-6, atol=1e-7)


def test_saving_over_an_existing_directory_replaces_it(tiny_model: Path, tmp_path: Path) -> None:
    model = Model.load(tiny_model)
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_model(target, model.module, model.features, model.config, {"eval": {"auc": float("nan")}})
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old folders left behind
    assert json.loads((target / "model.json").read_text())["metrics"] == {"eval": {"auc": None}}
    Model.load(target)


def test_flipped_byte_in_weights_is_refused(model_copy: Path) -> None:
    w = model_copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: checksum mismatch"):
        Model.load(model_copy)


def test_truncated_weights_are_refused(model_copy: Path) -> None:
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"model\.safetensors: truncated or modified"):
        Model.load(model_copy)


def test_truncated_weights_with_matching_checksum_still_fail_clearly(model_copy: Path) -> None:
    """Even if model.json were rewritten to match, a truncated safetensors file is reported, not half-loaded."""
    from widedeep.atomic import sha256_file

    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    meta = json.loads((model_copy / "model.json").read_text())
    meta["files"]["model.safetensors"] = {"sha256": sha256_file(w), "bytes": w.stat().st_size}
    (model_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: corrupt or truncated"):
        Model.load(model_copy)


def test_non_finite_weights_with_matching_checksum_are_refused(model_copy: Path) -> None:
    """A diverged model written with valid checksums is refused at load (serving would answer null scores)."""
    from safetensors.torch import load_file, save_file

    from widedeep.atomic import sha256_file

    w = model_copy / "model.safetensors"
    state = load_file(str(w))
    state["deep.mlp.layers.0.weight"][0, 0] = float("nan")
    save_file(state, str(w), metadata={"format_version": "1"})
    meta = json.loads((model_copy / "model.json").read_text())
    meta["files"]["model.safetensors"] = {"sha256": sha256_file(w), "bytes": w.stat().st_size}
    (model_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: tensor 'deep\.mlp\.layers\.0\.weight' holds NaN"):
        Model.load(model_copy)


def test_edited_feature_set_is_refused(model_copy: Path) -> None:
    f = model_copy / "features.json"
    f.write_text(f.read_text() + " ")
    with pytest.raises(ArtifactError, match=r"features\.json"):
        Model.load(model_copy)


@pytest.mark.parametrize("name", ["features.json", "model.safetensors", "model.json"])
def test_missing_file_is_named(model_copy: Path, name: str) -> None:
    (model_copy / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        Model.load(model_copy)


def test_truncated_or_foreign_model_json_is_refused(model_copy: Path, tmp_path: Path) -> None:
    meta_path = model_copy / "model.json"
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated JSON"):
        Model.load(model_copy)
    meta = json.loads(text)
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version 99"):
        Model.load(model_copy)
    with pytest.raises(ArtifactError, match="not found"):
        Model.load(tmp_path / "nowhere")


def test_predict_file_writes_predictions_and_label(tiny_model: Path, tiny_config: Path, tmp_path: Path, eval_table) -> None:
    model = Model.load(tiny_model)
    out = model.predict_file(tiny_config.parent / "eval.parquet", tmp_path / "sub" / "preds.parquet")
    got = pq.read_table(out)
    assert got.column_names == ["prediction", "installed"]
    np.testing.assert_allclose(got.column("prediction").to_numpy(), model.predict(eval_table), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got.column("installed").to_numpy(), eval_table.column("installed").to_numpy())
    assert [p.name for p in out.parent.iterdir()] == ["preds.parquet"]  # the temp file was renamed, not left behind


def test_evaluate_matches_binary_metrics(tiny_model: Path, tiny_config: Path, eval_table) -> None:
    model = Model.load(tiny_model)
    from_file = model.evaluate(tiny_config.parent / "eval.parquet")
    expected = binary_metrics(eval_table.column("installed").to_numpy(), model.predict(eval_table))
    assert from_file.keys() >= {"auc", "logloss", "calibration"}
    for key in ("auc", "logloss", "calibration"):
        assert from_file[key] == pytest.approx(expected[key], rel=1e-6)
    assert from_file["examples"] == eval_table.num_rows
    # The training loop scored the same eval file from its shards: the artifact must agree with it.
    recorded = model.meta["metrics"]["eval"]
    for key in ("auc", "logloss", "calibration"):
        assert from_file[key] == pytest.approx(recorded[key], rel=1e-5)
    assert model.evaluate(eval_table)["auc"] == pytest.approx(expected["auc"], rel=1e-6)
    with pytest.raises(ValueError, match="label column 'installed' not found"):
        model.evaluate(eval_table.drop(["installed"]))


def test_loading_never_imports_training_code(tiny_model: Path) -> None:
    code = (
        "import sys; from widedeep.artifact import Model; m = Model.load(sys.argv[1]); "
        "bad = sorted(k for k in sys.modules if k.startswith('widedeep.train')); "
        "assert not bad, bad; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_symbolic_link_in_a_model_directory_is_refused(model_copy: Path) -> None:
    (model_copy / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match=r"passwd: a symbolic link"):
        Model.load(model_copy)


def test_listed_file_that_is_a_symbolic_link_is_refused(model_copy: Path, tmp_path: Path) -> None:
    """Even with the right bytes behind it: a model directory is read as regular files only."""
    elsewhere = tmp_path / "weights.safetensors"
    shutil.move(model_copy / "model.safetensors", elsewhere)
    (model_copy / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match=r"model\.safetensors: a symbolic link"):
        Model.load(model_copy)


@pytest.mark.parametrize("name", ["notes.txt", ".hidden", "model.onnx.bak"])
def test_file_not_listed_in_model_json_is_refused(model_copy: Path, name: str) -> None:
    (model_copy / name).write_text("x")
    with pytest.raises(ArtifactError, match=rf"{re.escape(name)}: not listed in model\.json"):
        Model.load(model_copy)


def test_folder_in_a_model_directory_is_refused(model_copy: Path) -> None:
    (model_copy / "extra").mkdir()
    with pytest.raises(ArtifactError, match=r"extra: not listed in model\.json"):
        Model.load(model_copy)


def test_onnx_export_files_may_sit_beside_the_listed_files(model_copy: Path) -> None:
    from widedeep.artifact import EXPORT_FILES
    from widedeep.serve.onnx import ONNX_FILE, SIDECAR_FILE

    assert {ONNX_FILE, SIDECAR_FILE} <= set(EXPORT_FILES)
    for name in EXPORT_FILES:  # what `widedeep export --onnx` adds; onnx.json carries their checksums
        (model_copy / name).write_bytes(b"x")
    Model.load(model_copy)
