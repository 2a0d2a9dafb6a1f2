"""The paper's model trained on a GPU: training examples/s and eval AUC on app-store data, for a machine with CUDA.

32-d embeddings, MLP 1024-512-256, FTRL wide + AdaGrad deep, batch 1024, bf16 autocast where the GPU supports it.
Generates the data and a config in `--out` (reused when present), runs `widedeep prepare`, then `widedeep train` as a
fresh process, timed from start to exit (start-up and the final evaluation included), and `--nproc N` processes under
torchrun when asked (one per GPU). Needs a CUDA build of torch.

    python benchmarks/gpu_check.py                   # 3M training rows = ~2,900 steps of 1,024, in runs/gpu_check
    python benchmarks/gpu_check.py --nproc 2         # also data-parallel over 2 GPUs
    python benchmarks/gpu_check.py --smoke           # 5,000 rows, a tiny model, on the CPU without CUDA (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _machine import print_machine

CONFIG = """
[data]
train = "data/train"
eval = "data/eval.parquet"
label = "installed"
[features.country]
type = "categorical"
[features.language]
type = "categorical"
[features.device]
type = "categorical"
[features.user_id]
type = "hashed"
buckets = 100000
[features.installed_apps]
type = "categorical"
multi_valued = true
[features.impression_app]
type = "categorical"
[features.app_category]
type = "categorical"
[features.app_developer]
type = "categorical"
[features.age]
type = "continuous"
[features.app_price]
type = "continuous"
[features.app_rating]
type = "continuous"
[crosses.installed_x_impression]
columns = ["installed_apps", "impression_app"]
buckets = 1000000
[model]
type = "wide_deep"
wide = ["installed_x_impression", "impression_app"]
deep = ["country", "language", "device", "user_id", "installed_apps", "impression_app", "app_category", "app_developer", "age", "app_price", "app_rating"]
embedding_dim = {dim}
hidden = {hidden}
[train]
batch_size = {batch}
epochs = 1
out = "run"
bf16 = "{bf16}"
device = "{device}"
wide_optimizer = {{ name = "ftrl", alpha = 0.05, beta = 1.0, l1 = 0.1 }}
deep_optimizer = {{ name = "adagrad", lr = 0.05 }}
"""


def device_and_bf16(smoke: bool) -> tuple[str, str]:
    """("cuda", "on"/"off") on a CUDA machine; ("cpu", "off") for --smoke without one; otherwise exit with the reason."""
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        print(f"device: {torch.cuda.get_device_name(0)} | {torch.cuda.device_count()} GPUs | bf16: {bf16}", flush=True)
        return "cuda", "on" if bf16 else "off"
    if smoke:
        print("device: cpu (no CUDA; --smoke checks the plumbing only)", flush=True)
        return "cpu", "off"
    raise SystemExit(f"gpu_check: CUDA is not available (torch {torch.__version__}); install a CUDA build of torch")


def write_run(out: Path, rows: int, eval_rows: int, smoke: bool, device: str, bf16: str) -> Path:
    """Write the data (once per row count) and the config; returns the config path."""
    from widedeep.datasets.app_store import write_app_store

    stamp = out / "data" / "rows.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != {"train": rows, "eval": eval_rows}:
        write_app_store(out / "data", rows, eval_rows, seed=0, rows_per_file=min(rows, 1_000_000))
        stamp.write_text(json.dumps({"train": rows, "eval": eval_rows}))
    dim, hidden, batch = (8, [32, 16], 256) if smoke else (32, [1024, 512, 256], 1024)
    config = out / "config.toml"
    config.write_text(CONFIG.format(dim=dim, hidden=hidden, batch=batch, bf16=bf16, device=device))
    return config


def train(config: Path, rows: int, device: str, nproc: int) -> None:
    """Train in a fresh process (`--nproc` processes under torchrun when > 1); print wall examples/s and eval metrics."""
    from widedeep.artifact import Model

    run = config.parent / "run"
    shutil.rmtree(run / "model", ignore_errors=True)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    cmd = [sys.executable, "-m", "widedeep", "train", str(config), "--device", device]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    m = Model.load(run / "model").evaluate(config.parent / "data" / "eval.parquet")
    print(
        f"gpu_check nproc={nproc}: {rows / wall:,.0f} train ex/s (wall, start-up and eval included) | "
        f"eval AUC {m['auc']:.4f} | logloss {m['logloss']:.4f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3_000_000, help="training rows (default 3M)")
    ap.add_argument("--eval-rows", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=None, help="default: runs/gpu_check (runs/gpu_check_smoke with --smoke)")
    ap.add_argument("--nproc", type=int, default=1, help="also train with this many processes (one per GPU) when > 1")
    ap.add_argument("--smoke", action="store_true", help="5,000 rows, a tiny model; runs on the CPU without CUDA")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.eval_rows = 5_000, 1_000
    print_machine()
    device, bf16 = device_and_bf16(args.smoke)
    # Absolute: the config and model paths are handed to other processes.
    out = (args.out or Path("runs/gpu_check_smoke" if args.smoke else "runs/gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = write_run(out, args.rows, args.eval_rows, args.smoke, device, bf16)
    subprocess.run([sys.executable, "-m", "widedeep", "prepare", str(config)], check=True)
    train(config, args.rows, device, 1)
    if args.nproc > 1:
        train(config, args.rows, device, args.nproc)


if __name__ == "__main__":
    main()
