"""The model-step benchmark still runs (its --smoke size) and prints its figures as JSON."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "model_step.py"


def test_model_step_benchmark_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--smoke", "--threads", "1"])
    try:
        runpy.run_path(str(BENCH), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["deep_input_dim"] == 26 * 32 + 13 * 2
    assert result["train_step_examples_per_s"] > 0 and result["bare_mlp_examples_per_s"] > 0
    assert 0.0 < result["wide_sparsity"] < 1.0
