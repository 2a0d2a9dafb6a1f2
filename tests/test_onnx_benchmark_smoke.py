"""The ONNX network benchmark still runs (its --smoke size), and its parity figure holds."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "onnx_network.py"


def test_onnx_network_benchmark_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--smoke"])
    runpy.run_path(str(BENCH), run_name="__main__")
    result = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in result["batches"]] == [1, 50, 100, 200]
    for r in result["batches"]:
        assert r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0
        assert r["max_abs_dp"] <= 1e-5
