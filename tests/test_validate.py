"""The dry run and the comparison gate: real model directories, a real holdout, every failure mode the gate must catch."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from derived_models import constant, derive, nan_weight, ranked_pair, shift_bias
from widedeep.cli import main
from widedeep.serve.validate import ValidationReport, validate


@pytest.fixture(scope="module")
def holdout(tiny_config: Path) -> Path:
    return tiny_config.parent / "eval.parquet"


@pytest.fixture(scope="module")
def variants(tiny_model: Path, holdout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """better / worse (a model and its negation, by holdout AUC), and models with NaN or constant scores."""
    root = tmp_path_factory.mktemp("variants")
    better, worse = ranked_pair(tiny_model, root, holdout)
    return {
        "better": better,
        "worse": worse,
        "shifted": derive(tiny_model, root / "shifted", shift_bias),
        "nan": derive(tiny_model, root / "nan", nan_weight),
        "constant": derive(tiny_model, root / "constant", constant),
    }


def failed(report: ValidationReport) -> list[str]:
    return [c.name for c in report.checks if not c.passed]


def test_good_model_passes_against_itself(tiny_model: Path, holdout: Path) -> None:
    report = validate(tiny_model, tiny_model, pq.read_table(holdout))
    assert report.passed, report.to_text()
    names = [c.name for c in report.checks]
    assert names == [
        "load", "load_current", "score", "finite", "range", "not_constant", "auc_defined", "current_finite", "auc_vs_current",
        "logloss_vs_current",
    ]
    assert report.metrics["new"] == report.metrics["current"]
    assert report.metrics["new"]["examples"] == 500
    assert "PASSED" in report.to_text()


def test_dry_run_only_without_current(tiny_model: Path, holdout: Path) -> None:
    report = validate(tiny_model, None, holdout)
    assert report.passed, report.to_text()
    assert "current" not in report.metrics
    assert not any(c.name.endswith("_vs_current") for c in report.checks)


def test_worse_auc_fails_and_tolerance_is_applied(variants: dict[str, Path], holdout: Path) -> None:
    table = pq.read_table(holdout)
    report = validate(variants["worse"], variants["better"], table)
    assert not report.passed
    assert "auc_vs_current" in failed(report)
    assert report.metrics["new"]["auc"] == pytest.approx(1 - report.metrics["current"]["auc"], abs=1e-6)
    text = report.to_text()
    assert "FAILED" in text and "auc_vs_current" in text
    # The same drop passes when the tolerances allow it: the numbers, not the model, decide.
    lenient = validate(variants["worse"], variants["better"], table, auc_tolerance=1.0, logloss_tolerance=100.0)
    assert lenient.passed, lenient.to_text()


def test_worse_logloss_alone_fails(tiny_model: Path, variants: dict[str, Path], holdout: Path) -> None:
    table = pq.read_table(holdout)
    report = validate(variants["shifted"], tiny_model, table)
    assert failed(report) == ["logloss_vs_current"], report.to_text()
    assert report.metrics["new"]["auc"] == pytest.approx(report.metrics["current"]["auc"], abs=1e-9)
    assert report.metrics["new"]["logloss"] > report.metrics["current"]["logloss"] + 0.1
    assert validate(variants["shifted"], tiny_model, table, logloss_tolerance=100.0).passed
    assert validate(tiny_model, variants["shifted"], table).passed  # the better-calibrated model passes against it


def test_nan_weights_fail_the_load_check(variants: dict[str, Path], holdout: Path) -> None:
    report = validate(variants["nan"], None, holdout)  # a diverged model never gets as far as scoring
    assert failed(report) == ["load"]
    assert "NaN" in report.checks[0].detail


def test_constant_scores_fail(variants: dict[str, Path], holdout: Path) -> None:
    report = validate(variants["constant"], None, holdout)
    assert "not_constant" in failed(report)
    assert "same score" in report.to_text()


def test_unloadable_model_fails_the_load_check(tiny_model: Path, tmp_path: Path, holdout: Path) -> None:
    import shutil

    broken = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    report = validate(broken, tiny_model, holdout)
    assert failed(report) == ["load"]
    assert "checksum" in report.checks[0].detail


def test_single_class_holdout_fails(tiny_model: Path, holdout: Path) -> None:
    table = pq.read_table(holdout)
    ones = table.filter(pc.equal(table["installed"], 1))
    report = validate(tiny_model, tiny_model, ones)
    assert failed(report) == ["auc_defined"]


def test_holdout_without_label_fails_clearly(tiny_model: Path, holdout: Path) -> None:
    report = validate(tiny_model, None, pq.read_table(holdout).drop(["installed"]))
    assert failed(report) == ["score"]
    assert "'installed'" in report.checks[-1].detail


def test_bad_tolerance_raises(tiny_model: Path, holdout: Path) -> None:
    with pytest.raises(ValueError, match="auc_tolerance"):
        validate(tiny_model, None, holdout, auc_tolerance=-0.1)


def test_report_json_round_trips(variants: dict[str, Path], holdout: Path) -> None:
    d = json.loads(validate(variants["worse"], variants["better"], holdout).to_json())
    assert d["passed"] is False
    assert {c["name"] for c in d["checks"] if not c["passed"]} >= {"auc_vs_current"}
    assert d["tolerances"] == {"auc": 0.002, "logloss": 0.01}


def test_cli_exit_codes(tiny_model: Path, variants: dict[str, Path], holdout: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(tiny_model), "--against", str(tiny_model), "--data", str(holdout)]) == 0
    assert "PASSED" in capsys.readouterr().out
    worse, better = str(variants["worse"]), str(variants["better"])
    assert main(["validate", worse, "--against", better, "--data", str(holdout), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    assert main(["validate", worse, "--against", better, "--data", str(holdout), "--auc-tolerance", "1",
                 "--logloss-tolerance", "100"]) == 0
    capsys.readouterr()
    assert main(["validate", str(variants["nan"]), "--data", str(holdout)]) == 1
    assert main(["validate", str(tiny_model), "--data", str(holdout), "--auc-tolerance", "-1"]) == 2


def test_holdout_files_with_extra_or_missing_columns(tiny_model: Path, holdout: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    table = pq.read_table(holdout)
    pq.write_table(table.append_column("unused", pa.array(["x"] * table.num_rows)), tmp_path / "extra.parquet")
    with_extra = validate(tiny_model, tiny_model, tmp_path / "extra.parquet")
    assert with_extra.passed, with_extra.to_text()
    assert with_extra.metrics["new"] == validate(tiny_model, None, table).metrics["new"]
    pq.write_table(table.drop(["price"]), tmp_path / "missing.parquet")
    report = validate(tiny_model, None, tmp_path / "missing.parquet")
    assert failed(report) == ["score"]
    assert "price" in report.checks[-1].detail
