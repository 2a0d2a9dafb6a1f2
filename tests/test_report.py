"""widedeep report: the calibration table and ECE shared with evaluate, valid PNGs, report.md/report.json, compare's roc.png."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from widedeep.metrics import binary_metrics, calibration_bins, expected_calibration_error

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_PLOTS = ["roc.png", "pr.png", "calibration.png", "scores.png", "learning.png"]


def assert_png(path: Path) -> None:
    """A real, non-trivial PNG that matplotlib reads back."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, (path, image.shape)
    assert image[..., :3].std() > 0.05, path  # not a blank canvas


def brute_force_ece(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """The textbook definition, one bin at a time."""
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = (probs >= lo) & ((probs < hi) if i < bins - 1 else (probs <= hi))
        if inside.any():
            total += inside.sum() / len(probs) * abs(probs[inside].mean() - labels[inside].mean())
    return total


def test_calibration_bins_by_hand() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0])
    probs = np.array([0.0, 0.3, 0.35, 0.3, 1.0, 0.95])  # 0.3 opens bin 3; 1.0 belongs to the last bin
    t = calibration_bins(labels, probs, bins=10)
    assert t["edges"] == pytest.approx([i / 10 for i in range(11)]) and t["edges"][3] == 0.3
    assert t["counts"] == [1, 0, 0, 3, 0, 0, 0, 0, 0, 2]
    assert t["mean_prediction"][0] == 0.0 and t["positive_rate"][0] == 0.0
    assert t["mean_prediction"][3] == pytest.approx(0.95 / 3) and t["positive_rate"][3] == pytest.approx(2 / 3)
    assert t["mean_prediction"][9] == pytest.approx(0.975) and t["positive_rate"][9] == 0.5
    assert math.isnan(t["mean_prediction"][1]) and math.isnan(t["positive_rate"][1])
    expected = 3 / 6 * abs(0.95 / 3 - 2 / 3) + 2 / 6 * abs(0.975 - 0.5)
    assert expected_calibration_error(t) == pytest.approx(expected)
    assert binary_metrics(labels, probs)["ece"] == pytest.approx(expected)
    two = calibration_bins(labels, probs, bins=2)
    assert two["counts"] == [4, 2] and two["edges"] == [0.0, 0.5, 1.0]


def test_ece_agrees_with_the_definition_and_sees_miscalibration() -> None:
    rng = np.random.default_rng(0)
    probs = rng.beta(2, 5, 20_000)
    labels = (rng.random(probs.size) < probs).astype(np.uint8)  # calibrated by construction
    for bins in (1, 7, 10, 25):
        ece = expected_calibration_error(calibration_bins(labels, probs, bins))
        assert ece == pytest.approx(brute_force_ece(labels, probs, bins), abs=1e-12)
    m = binary_metrics(labels, probs)
    assert {"auc", "logloss", "calibration", "mean_prediction", "mean_label", "examples", "ece"} <= m.keys()
    assert m["ece"] < 0.02
    assert binary_metrics(labels, np.clip(probs + 0.1, 0, 1))["ece"] > 0.08  # over-predicting by 0.1


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_calibration_bins_refuses_a_bad_bin_count(bins) -> None:
    with pytest.raises(ValueError, match="calibration bins must be a positive integer"):
        calibration_bins(np.array([0, 1]), np.array([0.2, 0.8]), bins=bins)


def test_calibration_bins_refuses_non_probabilities() -> None:
    with pytest.raises(ValueError, match=r"not probabilities in \[0, 1\], e.g. 1.5 at row 1"):
        calibration_bins(np.array([0, 1, 1]), np.array([0.2, 1.5, 0.1]))
    with pytest.raises(ValueError, match="differ in length"):
        calibration_bins(np.array([0, 1]), np.array([0.2]))


def test_report_plots_the_numbers_evaluate_prints(
    tiny_model: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from widedeep.artifact import Model
    from widedeep.cli import main

    eval_file = tiny_config.parent / "eval.parquet"
    out = tmp_path / "report"
    assert main(["report", str(tiny_model), str(eval_file), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_PLOTS, "report.md", "report.json"])
    for name in REPORT_PLOTS:
        assert_png(out / name)
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # published by rename, no temp folder left

    report = json.loads((out / "report.json").read_text())
    model = Model.load(tiny_model)
    table = pq.read_table(eval_file)
    bins = calibration_bins(table.column("installed").to_numpy(), model.predict(table))
    assert report["calibration_bins"]["counts"] == bins["counts"] and sum(bins["counts"]) == table.num_rows
    assert report["calibration_bins"]["edges"] == bins["edges"]
    for key in ("mean_prediction", "positive_rate"):
        expected = [None if math.isnan(x) else pytest.approx(x, rel=1e-12) for x in bins[key]]
        assert report["calibration_bins"][key] == expected
    evaluated = model.evaluate(eval_file)
    assert report["metrics"]["ece"] == pytest.approx(evaluated["ece"], rel=1e-12)
    assert report["metrics"]["ece"] == pytest.approx(expected_calibration_error(bins), rel=1e-12)
    for key in ("auc", "logloss", "calibration", "examples", "mean_label"):
        assert report["metrics"][key] == pytest.approx(evaluated[key], rel=1e-12)
    assert main(["evaluate", str(tiny_model), str(eval_file)]) == 0
    assert json.loads(capsys.readouterr().out)["ece"] == pytest.approx(report["metrics"]["ece"], rel=1e-12)
    assert report["learning_curves"] == str(tiny_model.parent / "metrics.jsonl") and report["notes"] == []

    md = (out / "report.md").read_text()
    for name in REPORT_PLOTS:
        assert f"]({name})" in md
    assert f"| AUC | {evaluated['auc']:.4f} |" in md
    assert f"| expected calibration error (10 bins) | {evaluated['ece']:.4f} |" in md
    assert f"| examples | {table.num_rows} |" in md and f"| positive rate | {evaluated['mean_label']:.4f} |" in md
    assert md.count("| [") == 10 and "| [0.90, 1.00] |" in md


def test_report_without_metrics_log_or_second_class(tiny_model: Path, tiny_config: Path, tmp_path: Path) -> None:
    from widedeep.report.writer import write_report

    model_dir = Path(shutil.copytree(tiny_model, tmp_path / "moved" / "model"))  # no metrics.jsonl beside it
    table = pq.read_table(tiny_config.parent / "eval.parquet")
    negatives = table.filter(pc.equal(table.column("installed"), 0))
    out = tmp_path / "report"
    report = write_report(model_dir, negatives, out, bins=4)
    assert report["plots"] == ["calibration.png", "scores.png"]
    assert sorted(p.name for p in out.iterdir()) == ["calibration.png", "report.json", "report.md", "scores.png"]
    assert_png(out / "calibration.png")
    md = (out / "report.md").read_text()
    assert "one label value only (0)" in md and "No learning curves" in md and "| AUC | n/a |" in md
    assert "expected calibration error (4 bins)" in md and md.count("| [") == 4
    assert report["metrics"]["ece"] == pytest.approx(expected_calibration_error(report["calibration_bins"]))
    assert json.loads((out / "report.json").read_text())["metrics"]["auc"] is None

    (out / "stale.txt").write_text("x")  # a report folder is replaced whole
    write_report(model_dir, negatives, out, bins=4)
    assert not (out / "stale.txt").exists()
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a report folder"):
        write_report(model_dir, negatives, keep)
    assert (keep / "mine.txt").read_text() == "x"


def test_report_names_the_plots_extra_without_matplotlib(tiny_model: Path, tiny_config: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib now raises ImportError
        "from widedeep.cli import main\n"
        f"sys.exit(main(['report', {str(tiny_model)!r}, {str(tiny_config.parent / 'eval.parquet')!r}, "
        f"'--out', {str(tmp_path / 'r')!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "widedeep report: error:" in run.stderr and "widedeep[plots]" in run.stderr
    assert not (tmp_path / "r").exists()


def test_learning_curves_skip_cut_lines(tmp_path: Path) -> None:
    from widedeep.report.writer import learning_curves

    log = tmp_path / "metrics.jsonl"
    assert learning_curves(log) is None
    log.write_text(
        '{"step": 10, "split": "train", "loss": 0.6}\n'
        '{"step": 10, "split": "eval", "auc": 0.7, "logloss": 0.55}\n'
        '{"step": 20, "split": "eval", "auc": null, "logloss": 0.5}\n'
        '{"step": 30, "split": "tr'
    )
    curves = learning_curves(log)
    assert curves["train"] == {"step": [10], "loss": [0.6]}
    assert curves["eval"]["step"] == [10, 20] and curves["eval"]["logloss"] == [0.55, 0.5]
    assert curves["eval"]["auc"][0] == 0.7 and math.isnan(curves["eval"]["auc"][1])
    log.write_text('{"step": 1, "split": "other"}\n')
    assert learning_curves(log) is None


def test_compare_roc_figure_draws_every_model(tiny_model: Path, tiny_config: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from widedeep.config import load
    from widedeep.train.compare import roc_figure

    cfg = load(tiny_config)
    cfg = replace(cfg, train=replace(cfg.train, out=str(tmp_path / "cmp")))
    rows = {"wide_deep": {"model_dir": str(tiny_model)}, "wide": {"model_dir": str(tiny_model)}}
    path = roc_figure(rows, cfg)
    assert path == tmp_path / "cmp" / "roc.png"
    assert_png(path)
    assert roc_figure(rows, replace(cfg, data=replace(cfg.data, eval=()))) is None
