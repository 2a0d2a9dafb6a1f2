"""Serving configurations head to head: HTTP latency of each, in alternating rounds, so that the drift of a shared machine
hits them all alike. Each round starts a `widedeep serve` process per configuration in turn and times sequential
200-candidate requests from one keep-alive client; the medians over rounds are printed as a Markdown table.

    python benchmarks/serve_compare.py                                      # hybrid 200x1, torch 100x2, hybrid int8 200x1
    python benchmarks/serve_compare.py --configs hybrid:200:1 torch:200:1:bf16   # BACKEND:SUB_BATCH:THREADS[:PRECISION]

PRECISION is fp32 (when left out), bf16, int8 or auto (the server's default: chosen by measurement at load).
    python benchmarks/serve_compare.py --smoke                              # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402
from serve import CONTEXT, paper_model  # noqa: E402

from widedeep.serve.bench import Latency, ServerProcess, synthetic_request, time_http  # noqa: E402
from widedeep.serve.scorer import Scorer  # noqa: E402
from widedeep.serve.settings import PRECISIONS  # noqa: E402

DEFAULT = ("hybrid:200:1", "torch:100:2", "hybrid:200:1:int8")


def parse(spec: str) -> tuple[str, int, int, str]:
    parts = spec.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in PRECISIONS):
        raise SystemExit(f"--configs: {spec!r} is not BACKEND:SUB_BATCH:THREADS[:PRECISION] (PRECISION: {', '.join(PRECISIONS)})")
    return parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else "fp32"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(DEFAULT), help="BACKEND:SUB_BATCH:THREADS[:PRECISION] each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=200, help="timed requests per configuration and round")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes: checks the script runs")
    args = p.parse_args(argv)
    configs = [parse(c) for c in args.configs]
    print_machine()
    candidates, rounds, requests, warmup = (20, 1, 5, 1) if args.smoke else (200, args.rounds, args.requests, 20)

    with tempfile.TemporaryDirectory(prefix="widedeep-serve-compare-") as tmp:
        model = paper_model(Path(tmp) / "model", rows=300 if args.smoke else 50_000, hidden=(16,) if args.smoke else (1024, 512, 256))
        context, cands = synthetic_request(Scorer.load(model, backend="torch"), candidates, CONTEXT)
        body = orjson.dumps({"context": context, "candidates": cands, "k": 10})
        runs: dict[str, list[Latency]] = {spec: [] for spec in args.configs}
        for r in range(rounds):
            for spec, (backend, sub_batch, threads, precision) in zip(args.configs, configs):
                server = ServerProcess(model, sub_batch, threads, backend, precision=precision)
                try:
                    lat = time_http(server.url, body, requests, warmup)
                finally:
                    server.close()
                runs[spec].append(lat)
                print(f"round {r + 1} {spec}: {lat.cell()} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    print(f"{candidates} candidates per request ({len(body) / 1024:.0f} KiB of JSON), {rounds} rounds of {requests} requests; "
          "medians over the rounds of each round's HTTP latency (client-side).\n")  # fmt: skip
    print("| backend:sub-batch:threads | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    for spec, lats in runs.items():
        p50, p90, p99 = (statistics.median(getattr(lat, q) for lat in lats) for q in ("p50", "p90", "p99"))
        print(f"| {spec} | {p50:.1f} ms | {p90:.1f} ms | {p99:.1f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
