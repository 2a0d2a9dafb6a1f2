"""Network latency on encoded tensors: onnxruntime (the `--backend onnxruntime` path) against torch, on the same weights.

The paper's network: 26 categorical features with 32-d embeddings, 13 continuous features (value + null indicator, and a
bucket id for the wide part), one multi-valued feature pooled by mean (up to 20 ids per row), MLP 1024-512-256. Random
weights everywhere (the parity must hold for any weights). Batch sizes are the paper's serving table (200, 100, 50) and a
single request row. Both runtimes use one thread, as each of the Scorer's parallel sub-batches does. Prints JSON: median
milliseconds per call for each runtime, the onnxruntime/torch time ratio, and the max |dp| between them.

    python benchmarks/onnx_network.py            # paper configuration
    python benchmarks/onnx_network.py --smoke    # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from widedeep.config import ModelConfig
from widedeep.model import WideDeep
from widedeep.serve.bench import time_calls
from widedeep.serve.onnx import OnnxNetwork, example_tensors, export_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402
from model_step import SyntheticLayout  # noqa: E402  (the same synthetic paper layout as the training-step benchmark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=10_000, help="vocabulary size of each categorical feature")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few calls: checks that the script runs")
    args = ap.parse_args()
    hidden = (16, 8) if args.smoke else (1024, 512, 256)
    if args.smoke:
        args.vocab, args.reps = 100, 3
    print_machine()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        fs = SyntheticLayout(n_cat=26, n_cont=13, vocab=args.vocab, list_slots=("apps",))
        cats = tuple(f"c{i}" for i in range(26))
        cfg = ModelConfig(wide=fs.id_slots + ("apps",), deep=cats + tuple(f"i{i}" for i in range(13)) + ("apps",), hidden=hidden)
        model = WideDeep.build(cfg, fs).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape) * 0.05)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_network(model, fs, Path(tmp) / "model.onnx")
            export_s = time.perf_counter() - t0
            net = OnnxNetwork(path, intra_op_num_threads=1)
            rows = []
            for batch in (1, 50, 100, 200):
                ids, dense, lists = example_tensors(fs, batch, max_len=20, seed=batch)
                arrays = (ids.numpy(), dense.numpy(), [t.numpy() for t in lists])

                def run_torch() -> np.ndarray:
                    with torch.inference_mode():
                        return model.forward_tensors(ids, dense, *lists).numpy()

                def run_onnx() -> np.ndarray:
                    return net(*arrays)

                dp = np.abs(1 / (1 + np.exp(-run_onnx().astype(np.float64))) - 1 / (1 + np.exp(-run_torch().astype(np.float64))))
                t_torch = time_calls(run_torch, args.reps, max(2, args.reps // 10)).p50
                t_onnx = time_calls(run_onnx, args.reps, max(2, args.reps // 10)).p50
                rows.append(
                    {
                        "batch": batch,
                        "torch_ms": round(t_torch, 3),
                        "onnxruntime_ms": round(t_onnx, 3),
                        "onnxruntime_vs_torch": round(t_onnx / t_torch, 3),
                        "max_abs_dp": float(dp.max()),
                    }
                )
    finally:
        torch.set_num_threads(threads)
    result = {"hidden": list(hidden), "vocab": args.vocab, "threads": 1, "export_s": round(export_s, 2), "batches": rows}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
