"""Real `torchrun` data-parallel training (2 CPU processes, gloo) on a small app-store log, against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from widedeep.artifact import Model
from widedeep.config import load
from widedeep.datasets.app_store import write_app_store
from widedeep.train.loop import train

from test_distributed_sync import free_port

CONFIG = """
[data]
train = "data/train"
eval = "data/eval.parquet"
label = "installed"
prepared = "prepared-{prepared}"

[features.country]
type = "categorical"
[features.device]
type = "categorical"
[features.installed_apps]
type = "categorical"
multi_valued = true
[features.impression_app]
type = "categorical"
[features.app_category]
type = "categorical"
[features.age]
type = "continuous"
quantiles = 10
[features.app_price]
type = "continuous"
quantiles = 10

[crosses.installed_x_impression]
columns = ["installed_apps", "impression_app"]
buckets = 20000

[model]
type = "wide_deep"
wide = ["installed_x_impression", "impression_app"]
deep = ["country", "device", "installed_apps", "impression_app", "app_category", "age", "app_price"]
embedding_dim = 8
hidden = [32, 16]

[train]
batch_size = 256
epochs = {epochs}
out = "{out}"
device = "cpu"
bf16 = "off"
wide_optimizer = {{ name = "ftrl", alpha = 0.1, beta = 1.0, l1 = 0.01 }}
deep_optimizer = {{ name = "adagrad", lr = 0.05 }}
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write(root: Path, name: str, out: str, epochs: int, prepared: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(CONFIG.format(out=out, epochs=epochs, prepared=prepared or out))
    return path


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One-process run (2 epochs); 2-process run of 1 epoch, then resumed to 2 epochs through `--nproc 2 --resume`;
    one epoch warm-started from the one-process model, in one process and in two."""
    root = tmp_path_factory.mktemp("ddp")
    write_app_store(root / "data", 4_500, 1_500, seed=0, rows_per_file=1_500)  # 3 train files: rank 0 gets 2, rank 1 gets 1
    train(load(_write(root, "one", "one", 2)), progress=False)
    two = _write(root, "two", "two", 1)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}"]
    _run([*torchrun, "-m", "widedeep", "train", str(two)])
    (root / "two-epoch1.json").write_text((root / "two" / "model" / "model.json").read_text())
    _run([sys.executable, "-m", "widedeep", "train", str(_write(root, "two_more", "two", 2)), "--resume", "--nproc", "2"])
    warm = _write(root, "warm", "warm", 1, prepared="two")
    train(load(_write(root, "warm_one", "warm_one", 1, prepared="two")), warm_start=root / "one" / "model", progress=False)
    _run([*torchrun[:-1], f"--master-port={free_port()}", "-m", "widedeep", "train", str(warm), "--warm-start", str(root / "one" / "model")])
    return root


def _meta(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.json").read_text())


def test_two_processes_match_one_process_auc(runs: Path) -> None:
    one, two = _meta(runs / "one" / "model")["metrics"], _meta(runs / "two" / "model")["metrics"]
    assert two["steps"] == one["steps"]  # the global batch is split, not multiplied
    assert one["eval"]["auc"] > 0.6
    assert abs(two["eval"]["auc"] - one["eval"]["auc"]) < 0.005, (one["eval"], two["eval"])
    assert two["eval"]["examples"] == one["eval"]["examples"] == 1_500  # metrics over the whole eval set, not rank 0's half


def test_artifact_of_the_distributed_run_loads_and_scores(runs: Path) -> None:
    model = Model.load(runs / "two" / "model")
    m = model.evaluate(runs / "data" / "eval.parquet")
    want = _meta(runs / "two" / "model")["metrics"]["eval"]
    assert m["examples"] == 1_500
    assert abs(m["auc"] - want["auc"]) < 1e-6  # the whole-eval-set metric the run recorded is the artifact's metric


def test_resume_continued_the_first_epoch_and_only_rank_0_logged(runs: Path) -> None:
    first = json.loads((runs / "two-epoch1.json").read_text())["metrics"]
    final = _meta(runs / "two" / "model")["metrics"]
    assert final["steps"] == 2 * first["steps"]
    evals = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["split"] == "eval"]
    assert [e["step"] for e in evals] == [first["steps"], final["steps"]]  # one line per evaluation: rank 1 wrote nothing
    manifest = json.loads((runs / "prepared-two" / "manifest.json").read_text())
    assert manifest["ranks"] == 2  # training under torchrun prepared the data with both ranks


def test_warm_start_under_torchrun_matches_one_process(runs: Path) -> None:
    warm_two = _meta(runs / "warm" / "model")["metrics"]["eval"]["auc"]
    warm_one = _meta(runs / "warm_one" / "model")["metrics"]["eval"]["auc"]
    assert abs(warm_two - warm_one) < 0.005, (warm_two, warm_one)
    Model.load(runs / "warm" / "model")
