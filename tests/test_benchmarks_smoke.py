"""Every benchmark runs at its --smoke size exactly as the docs show it: `python benchmarks/NAME.py --smoke` with the
repository root as the working directory and no other argument. So a script cannot rot, nor break for paths relative
to the folder it is started from; each test also checks the figures the script prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_run import ROOT, run_benchmark


def run(script: str, *flags: str, timeout: int = 300) -> str:
    """Run `python benchmarks/<script> --smoke [flags]` from the repository root; its stdout after the machine line."""
    return run_benchmark(f"benchmarks/{script}", "--smoke", *flags, timeout=timeout)


def first_json(text: str) -> dict:
    """The first JSON object printed (a script may print a summary after it)."""
    return json.JSONDecoder().raw_decode(text, text.index("{"))[0]


def test_every_benchmark_has_a_smoke_test() -> None:
    """Each benchmarks/NAME.py has test_NAME_smoke here, or a test file of its own that names it."""
    scripts = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    others = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name)
    assert [s for s in scripts if f"test_{s}_smoke" not in globals() and f"{s}.py" not in others] == []
    assert not list((ROOT / "benchmarks").glob("*.sh")), "a shell benchmark has no --smoke test: write it in Python"


def test_adult_smoke() -> None:
    out = run("adult.py")
    assert re.search(
        r"adult \(smoke, 1 runs, seeds 0\): wall min [\d.]+ s, median [\d.]+ s \| "
        r"import torch [\d.]+ s \([\d.]+x\) \| test AUC 0\.\d{4} \| load [\d.]+ -> [\d.]+$",
        out.strip(),
    ), out


def test_app_store_smoke() -> None:
    out = run("app_store.py")
    assert "50,000 rows" in out and "rows/s" in out and "Parquet-write floor" in out, out


def test_demo_smoke() -> None:
    out = run("demo.py")
    assert re.search(r"demo \(smoke, 2000 rows, 2 threads\): [\d.]+ s wall, [\d.]+ x the 180 s bound \| eval AUC wide ", out), out
    assert "winner: " in out


def test_gpu_check_smoke() -> None:
    out = run("gpu_check.py")
    assert re.search(r"gpu_check nproc=1: [\d,]+ train ex/s .* \| eval AUC 0\.\d{4} \| logloss [\d.]+", out), out


def test_model_step_smoke() -> None:
    result = first_json(run("model_step.py"))
    assert result["deep_input_dim"] == 26 * 32 + 13 * 2
    assert result["train_step_examples_per_s"] > 0 and result["bare_mlp_examples_per_s"] > 0
    assert 0.0 < result["wide_sparsity"] < 1.0


def test_onnx_network_smoke() -> None:
    result = first_json(run("onnx_network.py"))
    assert [r["batch"] for r in result["batches"]] == [1, 50, 100, 200]
    for r in result["batches"]:
        assert r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0
        assert r["max_abs_dp"] <= 1e-5


def test_out_of_core_smoke() -> None:
    out = run("out_of_core.py", timeout=600)
    lines = [line for line in out.splitlines() if "rows |" in line]
    assert len(lines) == 2 and all("peak RSS" in line for line in lines), out
    assert "prepare: peak RSS max" in out and "train: peak RSS max" in out
    assert (ROOT / "runs" / "out_of_core_smoke" / "results.json").is_file()


def test_prepare_smoke() -> None:
    out = run("prepare.py")
    for name in ("(a) app-store", "(b) criteo-like"):
        assert re.search(rf"{re.escape(name)}: 20,000 train \+ 2,000 eval rows in [\d.]+ s .* peak RSS \d+ MB", out), out


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_serve_smoke(precision: str) -> None:
    out = run("serve.py", "--precision", precision)
    assert f"(hybrid backend, {precision} precision)" in out
    assert "| sub-batch x threads | paper (client-side) | in-process | in-process CPU | over HTTP (client-side) |" in out
    assert "| 10 x 2 | - |" in out and "requests/s" in out
    for row in ("| in-process p50 / (1.25 x (forward + transform)) |", "| HTTP p50 - in-process p50, candidates as columns |",
                "| batching on / off, 4 clients, requests/s |", "| workers 2 / 1 on ", "| memory of an extra worker (USS / PSS) |"):
        assert row in out, out


def test_serve_compare_smoke() -> None:
    out = run("serve_compare.py")
    rows = [line for line in out.splitlines() if line.startswith(("| hybrid:200:1 |", "| torch:100:2 |", "| hybrid:200:1:int8 |"))]
    assert len(rows) == 3 and all(line.count(" ms |") == 3 for line in rows), out


def test_serve_compare_refuses_a_malformed_config() -> None:
    cmd = [sys.executable, "benchmarks/serve_compare.py", "--smoke", "--configs", "hybrid:20"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "BACKEND:SUB_BATCH:THREADS" in r.stderr


def test_serve_transform_smoke() -> None:
    out = run("serve_transform.py")
    assert re.search(r"small-batch path [\d.]+ ms, Arrow path [\d.]+ ms", out), out


def test_train_smoke() -> None:
    text = run("train.py", timeout=600)
    result = first_json(text)
    p, b = result["paper_config"], result["bf16_vs_fp32"]
    assert p["examples_per_s"] > 0 and p["mlp_bound_examples_per_s"] > 0 and p["mlp_input_grad_bound_examples_per_s"] > 0
    assert 50 < p["peak_rss_mb"] < 4096  # the training process's own peak (torch alone is over 50 MB)
    assert p["steps"] == 12  # one epoch of 3000 rows at batch 256
    assert 0.0 <= p["eval_auc"] <= 1.0 and 0.0 <= b["bf16_eval_auc"] <= 1.0 and 0.0 <= b["fp32_eval_auc"] <= 1.0
    a = result["adult"]
    assert a["batch_size"] == 256 and 0.5 < a["test_auc"] <= 1.0 and a["wall_s"] > 0
