"""Feature transform of one ranking request: the small-batch path (token memo) against the Arrow path, same run.

The paper-configuration model's features (26 categorical, 13 continuous, two crosses) on a 200-candidate request; both
paths give identical encodings (checked here, and in tests/test_features_small.py). Prints milliseconds per request.

    python benchmarks/serve_transform.py            # a few seconds
    python benchmarks/serve_transform.py --smoke    # checks the script runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402
from serve import CONTEXT, paper_model  # noqa: E402

from widedeep.features import transform as transform_mod  # noqa: E402
from widedeep.serve.bench import synthetic_request, time_calls  # noqa: E402
from widedeep.serve.scorer import Scorer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="a tiny model and request: checks the script runs")
    args = p.parse_args(argv)
    rows, n, requests = (300, 20, 5) if args.smoke else (20_000, args.candidates, args.requests)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-transform-") as tmp:
        model = paper_model(Path(tmp) / "model", rows=rows, hidden=(16,))
        fs = Scorer.load(model).features
        ctx, cands = synthetic_request(Scorer.load(model), n, CONTEXT)
        small = time_calls(lambda: fs.transform_request(ctx, cands), requests, max(2, requests // 10)).p50
        saved, transform_mod.SMALL_BATCH = transform_mod.SMALL_BATCH, -1
        try:
            arrow = time_calls(lambda: fs.transform_request(ctx, cands), requests, max(2, requests // 10)).p50
            reference = fs.transform_request(ctx, cands)
        finally:
            transform_mod.SMALL_BATCH = saved
        got = fs.transform_request(ctx, cands)
        if not (np.array_equal(got.ids, reference.ids) and np.array_equal(got.dense, reference.dense)):
            raise SystemExit("small-batch and Arrow paths disagree")
    print(f"transform of a {n}-candidate request: small-batch path {small:.2f} ms, Arrow path {arrow:.2f} ms "
          f"({arrow / small:.1f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
