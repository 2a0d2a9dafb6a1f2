"""`widedeep evaluate` and `widedeep predict` end to end, through the CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from widedeep.artifact import Model
from widedeep.cli import main


def test_evaluate_prints_metrics_json(tiny_model: Path, tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny_config.parent / "eval.parquet"
    assert main(["evaluate", str(tiny_model), str(data)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed.keys() >= {"auc", "logloss", "calibration", "examples"}
    assert printed["examples"] == 500
    assert printed["auc"] == pytest.approx(Model.load(tiny_model).evaluate(data)["auc"])


def test_predict_writes_parquet(tiny_model: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny_config.parent / "eval.parquet"
    out = tmp_path / "preds.parquet"
    assert main(["predict", str(tiny_model), str(data), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    preds = pq.read_table(out).column("prediction").to_numpy()
    np.testing.assert_allclose(preds, Model.load(tiny_model).predict(pq.read_table(data)), rtol=1e-6, atol=1e-7)


def test_tampered_model_exits_with_a_clear_error(
    tiny_model: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8])
    assert main(["evaluate", str(broken), str(tiny_config.parent / "eval.parquet")]) == 2
    err = capsys.readouterr().err
    assert "widedeep evaluate: error:" in err and "model.safetensors" in err and "Traceback" not in err


def test_evaluate_without_label_names_the_column(
    tiny_model: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    unlabeled = tmp_path / "unlabeled.parquet"
    pq.write_table(pq.read_table(tiny_config.parent / "eval.parquet").drop(["installed"]), unlabeled)
    assert main(["evaluate", str(tiny_model), str(unlabeled)]) == 2
    assert "'installed'" in capsys.readouterr().err
    # Predictions need no label: the output then holds only the prediction column.
    out = tmp_path / "p.parquet"
    assert main(["predict", str(tiny_model), str(unlabeled), "--out", str(out)]) == 0
    assert pq.read_table(out).column_names == ["prediction"]

