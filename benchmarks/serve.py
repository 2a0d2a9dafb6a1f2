"""Ranking latency of the paper-configuration model: the paper's Table 2 (sub-batch x threads) in process and over HTTP.

Builds an untrained artifact with the paper's deep shape on the Criteo-like schema (26 categorical features x 32-d
embeddings, 13 continuous, MLP 1024-512-256, wide part over the categorical ids and two crosses; weights do not matter for
latency), then runs `widedeep bench-serve` on it. A request is one user context (C1..C13, I1..I6) and 200 candidates
(C14..C26, I7..I13). Target on 2 cores: p50 <= 5 ms, p99 <= 10 ms over HTTP at 200 candidates.

Then the serving overheads, each a ratio of figures measured in turns in this run (so that a change of load falls on
both sides alike), against its target:

- in process: Scorer.recommend's p50 against 1.25 x (the bare network forward at the served precision + the transform);
- over HTTP: the client's p50 minus the in-process p50, candidates as objects and as columns (<= 1.0 ms). The two are
  timed call by call in turns, so that each finds the caches as the other leaves them: on a shared machine a model's
  data left alone for 2 ms is evicted, and a request then takes up to twice as long as in a back-to-back loop, which the
  table shows beside. The client is a plain keep-alive socket (widedeep.serve.bench.Client), whose own cost is not the
  server's;
- cross-request batching on against off, 4 concurrent clients: requests/s (>= 1.5x) and p99 (no worse);
- --workers 2 against 1: requests/s (>= 1.6x); the memory an extra worker costs (USS, its own pages; PSS, its share
  of the shared ones).

The servers of the last three run on the first 2 usable cores (the benchmark's clients are not pinned).

    python benchmarks/serve.py                     # the table and the ratios (a few minutes), in the precision auto picks
    python benchmarks/serve.py --precision int8    # the same with int8 MLP weights (fp32, bf16 likewise)
    python benchmarks/serve.py --smoke             # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import torch
from _machine import print_machine

from widedeep.artifact import save_model
from widedeep.datasets.criteo_like import criteo_like, criteo_like_config
from widedeep.features.transform import FeatureSet
from widedeep.model.wide_deep import WideDeep
from widedeep.batch import pad_ragged
from widedeep.serve.bench import Client, Latency, ServerProcess, bench_serve, http_throughput, synthetic_request
from widedeep.serve.scorer import Scorer, default_split
from widedeep.serve.settings import PRECISION, PRECISIONS
from widedeep.serve.workers import memory

CONTEXT = [f"C{j}" for j in range(1, 14)] + [f"I{j}" for j in range(1, 7)]
RECONNECT = 20  # requests per connection in the throughput runs: 4 long-lived connections would split over 2 workers by luck


def paper_model(out: Path, rows: int, hidden: tuple[int, ...] = (1024, 512, 256), seed: int = 0) -> Path:
    """An untrained paper-configuration model directory fitted on `rows` synthetic Criteo-like rows."""
    cfg = criteo_like_config("unused.parquet", out=str(out.parent), embed_buckets=False)  # the paper's deep input
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embedding_dim=32, hidden=hidden))
    table = pa.concat_tables(criteo_like(rows, seed=seed))
    fs = FeatureSet.from_config(cfg).fit(table)
    torch.manual_seed(seed)
    module = WideDeep.build(cfg.model, fs)
    with torch.no_grad():
        module.wide.table.weight[1:].normal_(0, 0.01)  # FTRL starts the wide weights at 0; give them values
    return save_model(out, module, fs, cfg, {"note": "untrained, for latency benchmarks"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="where to build the model (default: a temporary folder)")
    p.add_argument("--rows", type=int, default=50_000, help="rows the vocabularies and quantiles are fitted on")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--backend", default=None, help="hybrid (default where onnxruntime is installed), torch or onnxruntime")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISION, help="the MLP's precision (default: %(default)s, the server's)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-serve-") as tmp:
        root = (args.out or Path(tmp)).resolve()
        if args.smoke:
            model = paper_model(root / "model", rows=300, hidden=(16,))
            result = bench_serve(model, candidates=20, splits=((20, 1), (10, 2)), http_splits=((10, 2),), requests=6,
                                 warmup=1, clients=2, seconds=0.3, context_columns=CONTEXT, backend=args.backend,
                                 precision=args.precision, log=_err)  # fmt: skip
        else:
            model = paper_model(root / "model", rows=args.rows)
            result = bench_serve(model, requests=args.requests, context_columns=CONTEXT, backend=args.backend, precision=args.precision,
                                 log=_err)
        print(result.markdown())
        if not args.smoke:
            best = min(result.http.values(), key=lambda lat: lat.p50)
            print(f"\nTarget (2 cores): HTTP p50 <= 5 ms and p99 <= 10 ms; best split here: p50 {best.p50:.1f} ms, p99 {best.p99:.1f} ms.")
        sizes = Sizes.smoke() if args.smoke else Sizes(requests=args.requests)
        print()
        print(overheads(model, result.backend, result.precision, sizes))
    return 0


# -- the serving overheads, as ratios ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    candidates: int = 200
    requests: int = 300  # timed calls of each kind, over all rounds
    rounds: int = 5  # turns of the in-turn timings
    warmup: int = 30
    clients: int = 4  # concurrent clients of the throughput runs
    seconds: float = 4.0  # one throughput run
    runs: int = 3  # throughput runs of each server, in turns

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(candidates=20, requests=6, rounds=2, warmup=1, clients=4, seconds=0.3, runs=1)


def overheads(model: Path, backend: str, precision: str, sizes: Sizes) -> str:
    """The serving overheads' table (see the module docstring) for `model` served with `backend` in `precision`."""
    load_before = os.getloadavg()[0]
    sub_batch, threads = default_split(backend)
    scorer = Scorer.load(model, backend=backend, sub_batch=sub_batch, threads=threads, precision=precision)
    context, records = synthetic_request(scorer, sizes.candidates, CONTEXT)
    columns = {c: [r[c] for r in records] for c in records[0]}
    bodies = {"objects": orjson.dumps({"context": context, "candidates": records, "k": 10}),
              "columns": orjson.dumps({"context": context, "candidates": columns, "k": 10})}  # fmt: skip
    rows = []

    # In process: the scorer against its floor, the bare network and the transform.
    per_round = max(1, sizes.requests // sizes.rounds)
    enc = scorer.features.transform_request(context, records)
    ids, dense = enc.ids.astype(np.int64), enc.dense.astype(np.float32)
    lists = [pad_ragged(*enc.lists[s]) for s in scorer.features.list_slots]
    merged = sizes.clients  # the most requests a batched pass of the throughput runs can hold
    stacked = np.concatenate([ids] * merged), np.concatenate([dense] * merged), [np.concatenate([x] * merged) for x in lists]
    lat = in_turns({
        "forward": lambda: scorer.network(ids, dense, lists),  # the bare network: no split, no context half
        "forward, requests stacked": lambda: scorer.network(*stacked),  # one pass for `merged` requests
        "transform": lambda: scorer.features.transform_request(context, records),
        "objects": lambda: scorer.recommend(context, records, 10),
        "columns": lambda: scorer.recommend(context, columns, 10),
    }, sizes.rounds, per_round, sizes.warmup)  # fmt: skip
    floor, shared = lat["forward"], lat["forward, requests stacked"]
    bound = 1.25 * (floor.p50 + lat["transform"].p50)
    cpu = lat["objects"].cpu / (floor.cpu + lat["transform"].cpu)
    rows.append(("in-process p50 / (1.25 x (forward + transform))", f"{lat['objects'].p50 / bound:.2f}",
                 f"{lat['objects'].p50:.2f} ms / (1.25 x ({floor.p50:.2f} + {lat['transform'].p50:.2f}) ms); "
                 f"CPU per call {cpu:.2f}x forward + transform", "<= 1"))  # fmt: skip

    # The servers, started together on the same 2 cores: the default (batching on, one process), batching off, 2 workers.
    cores = sorted(os.sched_getaffinity(0))[:2]
    variants = {"default": [], "batching off": ["--batching", "off"], "2 workers": ["--workers", "2"]}
    servers = {name: ServerProcess(model, sub_batch, threads, backend, wait=False, precision=precision, extra=extra)
               for name, extra in variants.items()}  # fmt: skip
    try:
        for srv in servers.values():
            os.sched_setaffinity(srv.proc.pid, cores)  # before it forks: workers inherit the cores
        for srv in servers.values():
            srv.wait()
        # Over HTTP: what the server adds, each format timed in turns with the same request in process.
        client = Client(servers["default"].url)
        try:
            calls: dict[str, Callable[[], Any]] = {}
            for name, body in bodies.items():
                calls[f"in-process {name}"] = lambda c=(columns if name == "columns" else records): scorer.recommend(context, c, 10)
                calls[f"HTTP {name}"] = lambda b=body: _post(client, b)
            server_cpu = functools.partial(_cpu_seconds, servers["default"].proc.pid)
            clocks = {name: (server_cpu if name.startswith("HTTP") else time.process_time) for name in calls}
            hot = lat  # in process, each call back to back
            lat = in_turns(calls, sizes.rounds, per_round, sizes.warmup, clocks, interleave=True)
        finally:
            client.close()
        for name in bodies:
            http, local = lat[f"HTTP {name}"], lat[f"in-process {name}"]
            rows.append((f"HTTP p50 - in-process p50, candidates as {name}", f"{http.p50 - local.p50:.2f} ms",
                         f"{http.p50:.2f} - {local.p50:.2f} ms, call by call in turns ({len(bodies[name]) / 1024:.0f} KiB body; "
                         f"in process back to back {hot[name].p50:.2f} ms); CPU per request: server {http.cpu:.2f} ms, "
                         f"in process {local.cpu:.2f} ms", "<= 1.0 ms"))  # fmt: skip
        # What batching can gain at most: a shared pass saves each request the network time it costs over its share of
        # the bigger pass, and nothing else (parsing, the transform, the HTTP layer are per request).
        server, saved = lat["HTTP objects"].cpu, floor.cpu - shared.cpu / merged
        # (/proc counts CPU in clock ticks: a --smoke run's few requests can read as 0)
        gain, share = (f"{server / (server - saved):.2f}x", f"{floor.cpu / server:.0%}") if server > max(saved, 0) else ("n/a", "n/a")
        ceiling = (f"batching's ceiling: server CPU per request / (that - what a {merged}-request pass saves it)", gain,
                   f"server {server:.2f} ms CPU per request, the network pass {floor.cpu:.2f} ms of it ({share}); "
                   f"{shared.cpu / merged:.2f} ms per request in a {merged * sizes.candidates}-row pass", "-")  # fmt: skip
        scorer.close()
        # Throughput of concurrent clients, the servers in turns.
        urls = {name: srv.url for name, srv in servers.items()}
        runs = throughput_in_turns(urls, bodies["objects"], sizes)
        small = {"context": context, "candidates": records[: max(1, sizes.candidates // 10)], "k": 10}
        small_runs = throughput_in_turns({k: urls[k] for k in ("default", "batching off")}, orjson.dumps(small), sizes)
        memories = {name: memory((_children(srv.proc.pid) or [srv.proc.pid])[-1]) for name, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.close()
    (rps_on, on), (rps_off, off), (rps_2, two) = runs["default"], runs["batching off"], runs["2 workers"]
    rows.append(ceiling)
    rows.append((f"batching on / off, {sizes.clients} clients, requests/s", f"{rps_on / rps_off:.2f}x",
                 f"{rps_on:.0f} vs {rps_off:.0f}/s; p99 {on.p99:.1f} vs {off.p99:.1f} ms, p50 {on.p50:.1f} vs {off.p50:.1f} ms",
                 ">= 1.5x, p99 no worse"))  # fmt: skip
    (small_on, s_on), (small_off, s_off) = small_runs["default"], small_runs["batching off"]
    rows.append((f"... with {len(small['candidates'])} candidates per request", f"{small_on / small_off:.2f}x",
                 f"{small_on:.0f} vs {small_off:.0f}/s; p99 {s_on.p99:.1f} vs {s_off.p99:.1f} ms, p50 {s_on.p50:.1f} vs {s_off.p50:.1f} ms",
                 "-"))  # fmt: skip
    rows.append((f"workers 2 / 1 on {len(cores)} cores, {sizes.clients} clients, requests/s", f"{rps_2 / rps_on:.2f}x",
                 f"{rps_2:.0f} vs {rps_on:.0f}/s; p99 {two.p99:.1f} vs {on.p99:.1f} ms", ">= 1.6x"))  # fmt: skip
    one, worker = memories["default"], memories["2 workers"]
    rows.append(("memory of an extra worker (USS / PSS)", f"{worker['uss'] / 2**20:.0f} / {worker['pss'] / 2**20:.0f} MB",
                 f"one process alone: RSS {one['rss'] / 2**20:.0f} MB; a worker: RSS {worker['rss'] / 2**20:.0f} MB", "-"))  # fmt: skip

    load_after = os.getloadavg()[0]
    lines = [
        f"Serving overheads at {sizes.candidates} candidates ({backend} backend, {precision} precision, {sub_batch} x {threads}), "
        f"each ratio measured in turns in this run; load average {load_before:.1f} before / {load_after:.1f} after on "
        f"{len(os.sched_getaffinity(0))} CPUs (above the CPU count the cores were shared: rerun on a quiet machine).",
        "",
        "| figure | measured | from | target |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    return "\n".join(lines)


def in_turns(calls: dict[str, Callable[[], Any]], rounds: int, per_round: int, warmup: int,
             clocks: dict[str, Callable[[], float]] | None = None, interleave: bool = False) -> dict[str, Latency]:  # fmt: skip
    """The latency of each call, timed `per_round` times in each of `rounds` turns (with `interleave`, the calls take
    turns call by call: each follows the others' calls alike); with the CPU seconds per call that its clock in `clocks`
    counts (default: this process's CPU time)."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    cpu = dict.fromkeys(calls, 0.0)
    clock = {name: (clocks or {}).get(name, time.process_time) for name in calls}
    turns = [[name] * per_round for name in calls] if not interleave else [list(calls)] * per_round
    for _ in range(rounds):
        for turn in turns:
            for name in turn:
                c0 = clock[name]()
                t0 = time.perf_counter()
                calls[name]()
                seconds[name].append(time.perf_counter() - t0)
                cpu[name] += clock[name]() - c0
    return {name: Latency.of(s, cpu[name]) for name, s in seconds.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc; resolution one clock tick)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_in_turns(urls: dict[str, str], body: bytes, sizes: Sizes) -> dict[str, tuple[float, Latency]]:
    """Throughput runs of `sizes.clients` concurrent clients, each connecting anew every RECONNECT requests, against each
    server in turns (after one warm-up run each: every worker builds its context half on its first requests); the median
    requests/s and latency over the runs."""
    runs: dict[str, list[tuple[float, Latency]]] = {name: [] for name in urls}
    for url in urls.values():
        http_throughput(url, body, sizes.clients, min(1.0, sizes.seconds), RECONNECT)
    for _ in range(sizes.runs):
        for name, url in urls.items():
            runs[name].append(http_throughput(url, body, sizes.clients, sizes.seconds, RECONNECT))
    out = {}
    for name, done in runs.items():
        lats = [lat for _, lat in done]
        median = Latency(*(statistics.median(getattr(x, f) for x in lats) for f in ("p50", "p90", "p99")), sum(x.n for x in lats))
        out[name] = (statistics.median(r for r, _ in done), median)
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _post(client: Client, body: bytes) -> None:
    status, text = client.post(body)
    if status != 200:
        raise RuntimeError(f"POST /v1/recommend answered {status}: {text[:300]!r}")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
