#!/usr/bin/env bash
# Train the paper's model (32-d embeddings, 1024-512-256 ReLU, FTRL wide + AdaGrad deep, bf16 autocast) on CUDA for a few
# thousand steps of app-store data, then print training examples/s and eval AUC. For a machine with an NVIDIA GPU.
#   bash benchmarks/gpu_check.sh [TRAIN_ROWS] [OUT_DIR]      (default 3,000,000 rows = ~2,900 steps of 1,024)
# Needs a CUDA build of torch. Set NPROC=2 (or more) on a multi-GPU machine to also run it data-parallel under torchrun.
set -euo pipefail
ROWS=${1:-3000000}
OUT=${2:-runs/gpu_check}
PY=${PYTHON:-python}
NPROC=${NPROC:-1}

"$PY" - <<EOF
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: CUDA is not available (torch " + torch.__version__ + ")")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
EOF

mkdir -p "$OUT"
"$PY" - "$ROWS" "$OUT" <<'EOF'
import sys
from pathlib import Path
from widedeep.datasets.app_store import write_app_store

rows, out = int(sys.argv[1]), Path(sys.argv[2])
if not (out / "eval.parquet").exists():
    write_app_store(out / "data", rows, 200_000, seed=0, rows_per_file=1_000_000)
(out / "config.toml").write_text('''
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
embedding_dim = 32
hidden = [1024, 512, 256]
[train]
batch_size = 1024
epochs = 1
out = "run"
bf16 = "on"
device = "cuda"
wide_optimizer = { name = "ftrl", alpha = 0.05, beta = 1.0, l1 = 0.1 }
deep_optimizer = { name = "adagrad", lr = 0.05 }
''')
EOF

"$PY" -m widedeep prepare "$OUT/config.toml"
run() {  # $1 = processes
  rm -rf "$OUT/run/model" "$OUT/run/checkpoints"
  local t0 t1
  t0=$(date +%s.%N)
  "$PY" -m widedeep train "$OUT/config.toml" --device cuda --nproc "$1"
  t1=$(date +%s.%N)
  "$PY" - "$OUT" "$ROWS" "$t0" "$t1" "$1" <<'EOF'
import json, sys
from widedeep.artifact import Model
out, rows, t0, t1, nproc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
m = Model.load(f"{out}/run/model").evaluate(f"{out}/data/eval.parquet")
print(f"gpu_check nproc={nproc}: {rows / (t1 - t0):,.0f} train ex/s (wall, incl. start-up and eval) | eval AUC {m['auc']:.4f} | logloss {m['logloss']:.4f}")
EOF
}
run 1
if [ "$NPROC" -gt 1 ]; then run "$NPROC"; fi
