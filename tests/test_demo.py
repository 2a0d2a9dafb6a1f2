"""`widedeep demo` end to end at a tiny size (that it works, not that wide & deep wins at this size)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from widedeep.artifact import Model
from widedeep.cli import main
from widedeep.demo import dumps_toml, shipped_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_is_the_example() -> None:
    """The package carries a copy of examples/appstore.toml so the demo runs from an installed wheel; they must not drift."""
    assert tomllib.loads(shipped_config()) == tomllib.loads((ROOT / "examples" / "appstore.toml").read_text())


def test_toml_writer_round_trips() -> None:
    doc = tomllib.loads(shipped_config())
    doc["train"] = {**doc.get("train", {}), "wide_optimizer": {"name": "ftrl", "alpha": 0.05, "l1": 1e-05}, "out": 'a "b"'}
    assert tomllib.loads(dumps_toml(doc)) == doc


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rows", "3000", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    model_dir = out / "wide_deep" / "model"
    assert "| wide & deep |" in printed and "0.728" in printed
    assert f"widedeep evaluate {model_dir}" in printed and f"widedeep serve {model_dir}" in printed
    result = json.loads((out / "compare.json").read_text())
    assert set(result["models"]) == {"wide", "deep", "wide_deep"}
    # The written config is the shipped one pointed at the generated data, and it loads on its own.
    from widedeep.config import load

    cfg = load(out / "data" / "appstore.toml")
    shipped = tomllib.loads(shipped_config())
    assert cfg.model.deep == tuple(shipped["model"]["deep"]) and cfg.model.wide == tuple(shipped["model"]["wide"])
    assert cfg.out_dir == out
    model = Model.load(model_dir)
    metrics = model.evaluate(out / "data" / "eval.parquet")
    assert metrics["examples"] == 600
    assert metrics["auc"] == pytest.approx(result["models"]["wide_deep"]["auc"], rel=1e-5)


def test_demo_rejects_too_few_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--rows", "10"]) == 2
    assert not (tmp_path / "d").exists()
    assert "--rows must be >= 100, got 10" in capsys.readouterr().err
