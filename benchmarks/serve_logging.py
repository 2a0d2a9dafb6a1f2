"""Latency that impression logging adds to a ranking request: 200 candidates, k = 10, over HTTP on loopback.

Two ranking servers run in this process on one loaded model (the paper-configuration model of benchmarks/serve.py), one
with an impression log and one without; a client times requests to them in alternating rounds, so a change in the
machine's load falls on both alike and no difference between two processes is taken for the cost of logging. After each
round the client waits for the log writer's next drain, so the writer's work falls in the logging rounds that caused it.
Prints p50 / p90 / p99 of each, the p50 overhead as a share of the request (target: <= 5%), and what the log holds once
the server stopped (rows, files, drops).

    python benchmarks/serve_logging.py            # about a minute
    python benchmarks/serve_logging.py --smoke    # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import gc
import http.client
import re
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from _machine import print_machine
from serve import CONTEXT, paper_model

from widedeep.serve.logs import DRAIN_S, Rolling, ServerLogs
from widedeep.serve.bench import Latency, synthetic_request
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer, configure_torch_threads, default_backend, default_split

TARGET = 0.05  # p50 overhead as a share of the request without logging
K = 10


class Client:
    """One keep-alive connection posting the same ranking request (the stdlib client: the cheapest per request)."""

    def __init__(self, port: int, body: bytes):
        self.conn, self.body = http.client.HTTPConnection("127.0.0.1", port, timeout=60), body

    def timed(self) -> float:
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/recommend", self.body, {"content-type": "application/json"})
        r = self.conn.getresponse()
        text = r.read()
        if r.status != 200:
            raise RuntimeError(f"POST /v1/recommend answered {r.status}: {text[:300]!r}")
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows the vocabularies and quantiles are fitted on")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--rounds", type=int, default=20, help="rounds per setting, alternating logging off and on")
    p.add_argument("--per-round", type=int, default=25, help="timed requests per round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--backend", default=None, help="hybrid (default where onnxruntime is installed), torch or onnxruntime")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.candidates, args.rounds, args.per_round, args.warmup = 300, 20, 2, 5, 2
    print_machine()
    backend = args.backend or default_backend()
    sub_batch, threads = default_split(backend)
    configure_torch_threads(1)
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-logging-") as tmp:
        root = Path(tmp)
        model = paper_model(root / "model", rows=args.rows, hidden=(16,) if args.smoke else (1024, 512, 256))
        scorer = Scorer.load(model, backend=backend, sub_batch=sub_batch, threads=threads)
        context, candidates = synthetic_request(scorer, args.candidates, CONTEXT)
        body = orjson.dumps({"context": context, "candidates": candidates, "k": K})
        logs = ServerLogs(root / "logs", rolling=Rolling(seconds=5))
        apps = {"off": create_app(LiveScorer(model, lambda _: scorer)), "on": create_app(LiveScorer(model, lambda _: scorer), logs=logs)}
        gc.collect()
        gc.freeze()  # as `widedeep serve` does
        with BackgroundServer(apps["off"]) as off, BackgroundServer(apps["on"]) as on:
            clients = {"off": Client(off.port, body), "on": Client(on.port, body)}
            for c in clients.values():
                for _ in range(args.warmup):
                    c.timed()
            seconds: dict[str, list[float]] = {"off": [], "on": []}
            for r in range(args.rounds):
                for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    time.sleep(DRAIN_S + 0.05)  # the writer has taken what the last round queued
                    seconds[name] += [clients[name].timed() for _ in range(args.per_round)]
            metrics = _get(on.port, "/metrics")
        files = sorted((root / "logs" / "impressions").glob("part-*.parquet"))  # the server stopped: all written
        logged = sum(pq.read_metadata(f).num_rows for f in files)
    lat = {name: Latency.of(s) for name, s in seconds.items()}
    sent = (args.warmup + args.rounds * args.per_round) * min(K, args.candidates)
    dropped = int(re.search(r'widedeep_log_dropped_total\{log="impressions"\} (\d+)', metrics).group(1))
    overhead = (lat["on"].p50 - lat["off"].p50) / lat["off"].p50

    print(f"serve_logging{' (smoke)' if args.smoke else ''}: {backend} backend, {args.candidates} candidates, k = {K}, "
          f"{args.rounds} rounds x {args.per_round} requests per setting, alternating; two servers in one process, client-timed over loopback HTTP")  # fmt: skip
    print("\n| logging | p50 | p90 | p99 | requests |\n|---|---|---|---|---|")
    for name, label in (("off", "off"), ("on", "on (--log-dir)")):
        x = lat[name]
        print(f"| {label} | {x.p50:.2f} ms | {x.p90:.2f} ms | {x.p99:.2f} ms | {x.n} |")
    verdict = "met" if overhead <= TARGET else "MISSED (a busy machine inflates this; rerun when idle)"
    print(f"\np50 overhead of logging: {lat['on'].p50 - lat['off'].p50:+.3f} ms = {overhead:+.1%} of the request "
          f"(target <= {TARGET:.0%}: {verdict})")  # fmt: skip
    print(f"logged: {logged} of {sent} impression rows in {len(files)} files, {dropped} dropped")
    return 0


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
