"""What a `widedeep` process loads and how it ends: no torch._dynamo or scikit-learn in a training process (the metrics
worker computes scikit-learn's figures in a child process), output flushed before the fast exit, and the worker's figures
equal to scikit-learn's in this process, with a fallback when the worker dies."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from widedeep import metrics

ENV = {**os.environ, "PYTHONPATH": str(Path(metrics.__file__).resolve().parents[1])}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def imported(stderr: str) -> set[str]:
    """Modules listed by -X importtime."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_cli_import_loads_no_heavy_library(tmp_path: Path) -> None:
    r = run(["-X", "importtime", "-c", "import widedeep.cli"], tmp_path)
    assert r.returncode == 0, r.stderr
    mods = imported(r.stderr)
    assert "widedeep.cli" in mods
    assert not mods & {"torch", "sklearn", "scipy", "pandas", "pyarrow", "tqdm", "safetensors"}


def test_train_command_loads_no_dynamo_or_sklearn_and_flushes_before_exit(tiny_config: Path, tmp_path: Path) -> None:
    for name in ("train.parquet", "eval.parquet", "config.toml"):
        shutil.copy(tiny_config.parent / name, tmp_path / name)
    r = run(["-X", "importtime", "-m", "widedeep", "train", "config.toml", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    mods = imported(r.stderr)
    assert "torch" in mods and "widedeep.train.loop" in mods
    assert "torch._dynamo" not in mods  # torch's compiler stack: ~1.5 s of start-up for eager training
    assert not any(m == "sklearn" or m.startswith("sklearn.") for m in mods)  # the metrics worker imported it
    last = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.startswith("widedeep train: ")][-1]
    assert "eval AUC" in last  # the last line made it out before os._exit

    from widedeep.artifact import Model

    reported = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["metrics"]["eval"]
    assert f"eval AUC {reported['auc']:.4f}" in last
    here = Model.load(tmp_path / "run" / "model").evaluate(str(tmp_path / "eval.parquet"))  # scikit-learn in this process
    assert here["auc"] == pytest.approx(reported["auc"], abs=1e-9)  # float32 scores, batched differently
    assert here["logloss"] == pytest.approx(reported["logloss"], abs=1e-6)


def test_fast_exit_keeps_the_error_message_and_code(tmp_path: Path) -> None:
    r = run(["-m", "widedeep", "train", "missing.toml"], tmp_path)
    assert r.returncode == 2
    assert "widedeep train: error:" in r.stderr and "missing.toml" in r.stderr


@pytest.fixture
def worker():
    """A metrics worker installed as the module's worker for one test (whether or not scikit-learn is imported here)."""
    w = metrics.spawn_worker()
    assert w is not None
    old, metrics._worker = metrics._worker, w
    yield w
    metrics.stop_worker()
    metrics._worker = old


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(np.float64)
    p = np.clip(0.2 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    p[:10] = [0.0, 1.0, 1e-9, 1 - 1e-9, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]  # clipping and ties
    return y, p


def test_worker_figures_equal_sklearn_here(worker) -> None:
    y, p = labelled(5_000, seed=0)
    via_worker = metrics.binary_metrics(y, p)
    assert metrics._worker is worker and worker.poll() is None  # it answered and still runs
    auc, logloss = metrics.sklearn_figures(y, p)
    assert via_worker["auc"] == auc and via_worker["logloss"] == logloss  # bit-identical: same calls, same float64 data
    assert via_worker["examples"] == 5_000 and via_worker["mean_label"] == y.mean()

    one_class = metrics.binary_metrics(np.zeros(20), np.full(20, 0.1))
    assert math.isnan(one_class["auc"]) and one_class["logloss"] == pytest.approx(-math.log(0.9))


def test_a_dead_worker_falls_back_to_sklearn_here(worker) -> None:
    worker.kill()
    worker.wait()
    y, p = labelled(1_000, seed=1)
    m = metrics.binary_metrics(y, p)
    assert (m["auc"], m["logloss"]) == metrics.sklearn_figures(y, p)
    assert metrics._worker is None  # dropped: later calls compute here


def test_errors_in_the_worker_surface_as_sklearn_errors_here(worker) -> None:
    with pytest.raises(ValueError):  # a label outside {0, 1}: scikit-learn's own error, raised in this process
        metrics.binary_metrics(np.array([0.0, 1.0, 2.0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        metrics.binary_metrics(np.array([0.0, 1.0, 1.0]), np.array([0.1, 0.2]))


def test_a_forked_child_does_not_share_the_parents_worker(worker) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it would talk to the parent's worker, then leave at once
        os.write(write, b"none" if metrics._worker is None else b"kept")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 4) == b"none"
    assert metrics._worker is worker  # the parent keeps it
    os.close(read)
    os.close(write)


def test_no_worker_with_one_cpu_or_with_sklearn_already_here(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_worker", None)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", sys.modules.get("sklearn.metrics", object()))
    assert metrics.start_worker() is False and metrics._worker is None  # scikit-learn is here: nothing to overlap
    monkeypatch.delitem(sys.modules, "sklearn.metrics")
    monkeypatch.setattr(metrics, "_cpus", lambda: 1)
    assert metrics.start_worker() is False and metrics._worker is None  # one CPU: the child would only take turns
