"""compare: the three model types on the same prepared data, and the Table-1 style report."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from widedeep.train.compare import PAPER, markdown_table, winner


def test_table_puts_our_figures_beside_the_paper() -> None:
    rows = {
        "wide": {"auc": 0.7, "logloss": 0.5, "train_seconds": 1.25},
        "deep": {"auc": 0.71, "logloss": 0.49, "train_seconds": 2.0},
        "wide_deep": {"auc": float("nan"), "logloss": 0.48, "train_seconds": 3.0},
    }
    lines = markdown_table(rows).splitlines()
    assert lines[0].startswith("| model | eval AUC | eval logloss | train time (s)")
    assert lines[2] == "| wide only | 0.7000 | 0.5000 | 1.2 | 0.726 | 0% |"
    assert lines[3] == "| deep only | 0.7100 | 0.4900 | 2.0 | 0.722 | +2.9% |"
    assert lines[4] == "| wide & deep | n/a | 0.4800 | 3.0 | 0.728 | +3.9% |"
    assert winner(rows) == "deep"
    assert winner({"wide": {"auc": float("nan")}}) is None
    assert PAPER["wide_deep"]["offline_auc"] == 0.728


def test_compare_trains_three_models_on_one_prepare(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from widedeep.config import load
    from widedeep.train.compare import compare

    cfg = load(tiny_config)
    cfg = replace(cfg, train=replace(cfg.train, out=str(tmp_path / "cmp"), epochs=1))
    result = compare(cfg, device="cpu")
    out = tmp_path / "cmp"
    assert set(result["models"]) == {"wide", "deep", "wide_deep"}
    for kind, row in result["models"].items():
        assert 0.0 <= row["auc"] <= 1.0 and row["logloss"] > 0 and row["train_seconds"] > 0
        meta = json.loads((Path(row["model_dir"]) / "model.json").read_text())
        assert meta["config"]["model"]["type"] == kind
        assert Path(row["model_dir"]).is_relative_to(out / kind)
    # One prepare: every sub-run points at the same shards and no sub-run prepared its own.
    assert (out / "prepared").is_dir()
    assert not any((out / kind / "prepared").exists() for kind in ("wide", "deep", "wide_deep"))
    saved = json.loads((out / "compare.json").read_text())
    assert saved["winner"] == result["winner"] and saved["paper"]["deep"]["online_gain"] == "+2.9%"
    md = (out / "compare.md").read_text()
    assert "| wide & deep |" in md and "0.728" in md
    if importlib.util.find_spec("matplotlib") is not None:  # the plots extra: the three ROC curves on one figure
        assert saved["roc"] == "roc.png" and (out / "roc.png").read_bytes()[:4] == b"\x89PNG" and "](roc.png)" in md
    assert "| wide only |" in capsys.readouterr().out


def test_compare_needs_both_feature_lists(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import TINY_CONFIG

    from widedeep.cli import main

    text = TINY_CONFIG.replace('type = "wide_deep"', 'type = "wide"')
    text = text.replace('deep = ["installed_apps", "impression_app", "country", "user_id", "age", "price"]\n', "")
    cfg = tmp_path / "wide_only.toml"
    cfg.write_text(text.replace('train = "train.parquet"', f'train = "{tiny_config.parent / "train.parquet"}"'))
    assert main(["compare", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "widedeep compare: error:" in err and "deep" in err and str(cfg) in err
    assert not (tmp_path / "run").exists()  # refused before preparing or training anything

