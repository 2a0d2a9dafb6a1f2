"""`widedeep bench-serve`: the paper's Table 2 (latency by sub-batch size x threads) on your model and machine.

For one ranking request of N candidates it measures, at each split, the latency in process (Scorer.recommend) and over HTTP
(a `widedeep serve` subprocess, timed by the client, as the paper's figures are), then the HTTP throughput with several
concurrent clients. The bare network forward on N rows is timed in the same run as the floor the rest is compared with.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import orjson

from widedeep.serve import synthetic
from widedeep.serve.scorer import Scorer, configure_torch_threads, default_backend
from widedeep.serve.settings import PRECISION

PAPER_MS = {(200, 1): 31.0, (100, 2): 17.0, (50, 4): 14.0}  # Cheng et al. 2016, Table 2 (client-side, incl. serving)
SPLITS = ((200, 1), (100, 2), (50, 4))


@dataclass(frozen=True)
class Latency:
    p50: float  # milliseconds
    p90: float
    p99: float
    n: int
    cpu: float | None = None  # mean CPU milliseconds of this process per call (all threads), where measured

    @classmethod
    def of(cls, seconds: Sequence[float], cpu_seconds: float | None = None) -> "Latency":
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        cpu = None if cpu_seconds is None else cpu_seconds * 1e3 / max(len(ms), 1)
        return cls(float(p50), float(p90), float(p99), len(ms), cpu)

    def cell(self) -> str:
        return f"{self.p50:.1f} / {self.p90:.1f} / {self.p99:.1f} ms"


@dataclass
class BenchResult:
    model: str
    candidates: int
    forward: Latency  # bare network forward on `candidates` rows, one thread: the floor
    transform: Latency  # FeatureSet.transform_request on the same request
    in_process: dict[tuple[int, int], Latency] = field(default_factory=dict)
    http: dict[tuple[int, int], Latency] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    request_bytes: int = 0
    cores: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the run
    backend: str = "torch"
    precision: str = "fp32"  # the MLP's precision; under auto, the report behind the choice is `precision_summary`
    precision_summary: str = ""

    def markdown(self) -> str:
        """The Markdown table printed by bench-serve, next to the paper's figures."""
        lines = [
            f"Model `{self.model}` ({self.backend} backend, {self.precision} precision), {self.candidates} candidates per request ({self.request_bytes / 1024:.0f} KiB of JSON), "
            f"{self.cores} CPU cores, load average {self.load[0]:.1f} before / {self.load[1]:.1f} after "
            f"(above {self.cores} the cores were shared and every latency is inflated). Latency p50 / p90 / p99; "
            "CPU = this process's CPU time per in-process request, all threads.",
            "",
            "| sub-batch x threads | paper (client-side) | in-process | in-process CPU | over HTTP (client-side) |",
            "|---|---|---|---|---|",
        ]
        for split in self.in_process:
            paper = f"{PAPER_MS[split]:.0f} ms" if split in PAPER_MS else "-"
            http = self.http[split].cell() if split in self.http else "-"
            lat = self.in_process[split]
            lines.append(f"| {split[0]} x {split[1]} | {paper} | {lat.cell()} | {lat.cpu:.1f} ms | {http} |")
        lines.append("")
        if self.precision_summary:
            lines.append(f"Load-time measurement (noisy on a busy machine): {self.precision_summary}.")
        lines.append(
            f"Bare network forward on {self.candidates} rows ({self.backend}, no context half, {self.precision}): {self.forward.p50:.1f} ms p50, "
            f"{self.forward.cpu:.1f} ms CPU; feature transform of the request: {self.transform.p50:.1f} ms p50, "
            f"{self.transform.cpu:.1f} ms CPU."
        )
        if self.http:
            best = min(self.http, key=lambda s: self.http[s].p50)
            lines.append(f"Best HTTP p50 ({best[0]} x {best[1]}): {self.http[best].p50 / self.forward.p50:.2f}x the bare forward.")
        if self.throughput:
            t = self.throughput
            lines.append(
                f"HTTP throughput at {t['split'][0]} x {t['split'][1]} with {t['clients']} concurrent clients: "
                f"{t['rps']:.0f} requests/s = {t['rps'] * self.candidates:,.0f} candidates scored/s (p50 {t['p50']:.1f} ms)."
            )
        return "\n".join(lines)


# -- synthetic requests --------------------------------------------------------------------------------------------------


def synthetic_request(
    scorer: Scorer, n: int, context_columns: Sequence[str] | None = None, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A realistic request for the scorer's model (widedeep.serve.synthetic): `context_columns` (default: the first half
    of the model's input columns) in the context, the rest in each of the `n` candidates."""
    return synthetic.synthetic_request(scorer.features, n, context_columns, seed)


# -- timing --------------------------------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], requests: int, warmup: int) -> Latency:
    """Latency of `requests` calls after `warmup` untimed ones, with the process CPU time they took."""
    for _ in range(warmup):
        fn()
    seconds = []
    cpu0 = time.process_time()
    for _ in range(requests):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return Latency.of(seconds, time.process_time() - cpu0)


def time_forward(scorer: Scorer, context: dict, candidates: list[dict], requests: int, warmup: int) -> Latency:
    """The bare network on the encoded request (no transform, no split, no context half)."""
    from widedeep.batch import pad_ragged

    enc = scorer.features.transform_request(context, candidates)
    ids, dense = enc.ids.astype(np.int64), enc.dense.astype(np.float32)
    lists = [pad_ragged(*enc.lists[s]) for s in scorer.features.list_slots]
    return time_calls(lambda: scorer.network(ids, dense, lists), requests, warmup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`widedeep serve MODEL` in a subprocess (so the client never shares the server's interpreter), ready when /healthz is;
    `extra` are more arguments for `widedeep serve` (--log-dir ...)."""

    def __init__(self, model: Path | str, sub_batch: int, threads: int, backend: str = "torch", wait: bool = True,
                 precision: str | None = None, extra: Sequence[str] = ()):  # fmt: skip
        self.args = [str(model), "--sub-batch", str(sub_batch), "--threads", str(threads), "--backend", backend]
        self.args += (["--precision", precision] if precision else []) + list(extra)
        self._start()
        if wait:
            self.wait()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "widedeep", "serve", *self.args, "--port", str(self.port), "--log-level", "warning"]
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server can never block on a full pipe
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def wait(self, timeout: float = 180.0) -> None:
        """Block until the server answers /healthz (raises with its stderr if it died)."""
        import httpx

        deadline, retries = time.monotonic() + timeout, 3
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")[-2000:]
                self._stderr.close()
                if "address already in use" in err.lower() and retries:  # the free port was taken meanwhile
                    retries -= 1
                    self._start()
                    continue
                raise RuntimeError(f"widedeep serve exited with {self.proc.returncode}: {err}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"widedeep serve did not answer on {self.url} within {timeout:.0f}s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Closed(ConnectionError):
    """The server closed the connection before any byte of the answer (an idle keep-alive connection it timed out)."""


class Client:
    """One keep-alive connection posting JSON to `path` over a plain socket, as wrk and ab do: what it adds to a request
    is a copy of the body and a scan of the answer's head (tens of microseconds), so the time it measures is the
    server's. (http.client adds 0.3-0.8 ms of Python per 64 KiB request on 2 cores, httpx several ms.) A connection the
    server closed while idle is opened again; an answer with ``connection: close`` closes it after reading."""

    def __init__(self, url: str, timeout: float = 60.0, path: str = "/v1/recommend"):
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.address, self.timeout = (u.hostname or "127.0.0.1", u.port or 80), timeout
        self.head = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: " % (
            path.encode(), u.netloc.encode())
        self.sock: socket.socket | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST."""
        request = b"%s%d\r\n\r\n%s" % (self.head, len(body), body)
        try:
            return self._exchange(request)
        except (_Closed, BrokenPipeError, ConnectionResetError):  # the server timed the idle connection out: once more
            return self._exchange(request)

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.sendall(request)
            return self._answer(self.sock)
        except BaseException:
            self.close()
            raise

    def _answer(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = bytearray()
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(1 << 16)
            if not chunk:
                if buf:
                    where = f"{self.address[0]}:{self.address[1]}"
                    raise ConnectionError(f"{where} closed the connection in the middle of an answer's head")
                raise _Closed()
            buf += chunk
        lines = bytes(buf[:end]).split(b"\r\n")
        status, length, close = int(lines[0].split()[1]), 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        body = buf[end + 4 :]
        while len(body) < length:
            chunk = sock.recv(max(1 << 16, length - len(body)))
            if not chunk:
                raise ConnectionError(f"{self.address[0]}:{self.address[1]} closed the connection in the middle of an answer")
            body += chunk
        if close:
            self.close()
        return status, bytes(body[:length])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def time_http(url: str, body: bytes, requests: int, warmup: int) -> Latency:
    """Sequential requests over one keep-alive connection, timed by the client."""
    client = Client(url)

    def call() -> None:
        status, text = client.post(body)
        if status != 200:
            raise RuntimeError(f"POST /v1/recommend answered {status}: {text[:300]!r}")

    try:
        return time_calls(call, requests, warmup)
    finally:
        client.close()


def http_throughput(url: str, body: bytes, clients: int, seconds: float, reconnect: int = 0) -> tuple[float, Latency]:
    """Requests/s with `clients` threads each sending back-to-back requests for `seconds`; and their latency. With
    `reconnect`, each client opens a new connection after that many requests (as the clients behind a load balancer
    come and go), so that the connections spread over a server's worker processes by their load."""
    stop, lat, errors = threading.Event(), [[] for _ in range(clients)], []

    def client(i: int) -> None:
        c = Client(url)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                status, _ = c.post(body)
                if status != 200:
                    errors.append(status)
                lat[i].append(time.perf_counter() - t0)
                if reconnect and len(lat[i]) % reconnect == 0:
                    c.close()  # the next request connects again
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed during the throughput run (status {errors[0]})")
    done = [x for per in lat for x in per]
    return len(done) / elapsed, Latency.of(done)


# -- the benchmark -------------------------------------------------------------------------------------------------------


def bench_serve(
    model: Path | str,
    *,
    candidates: int = 200,
    splits: Sequence[tuple[int, int]] = SPLITS,
    requests: int = 300,
    warmup: int = 30,
    clients: int = 4,
    seconds: float = 5.0,
    context_columns: Sequence[str] | None = None,
    backend: str | None = None,
    precision: str = PRECISION,
    http: bool = True,
    http_splits: Sequence[tuple[int, int]] | None = None,
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Run the whole table for one model directory (or registry); returns the figures (`.markdown()` for the table).
    `precision` auto is settled once, on the first scorer; every split and server then runs the precision it chose."""
    configure_torch_threads(1)
    backend = backend or default_backend()
    base = Scorer.load(model, backend=backend, sub_batch=candidates, threads=1, precision=precision)
    report = base.precision_report
    precision = report.chosen
    context, cands = synthetic_request(base, candidates, context_columns)
    body = orjson.dumps({"context": context, "candidates": cands, "k": 10})
    load_before = os.getloadavg()[0]
    forward = time_forward(base, context, cands, requests, warmup)
    transform = time_calls(lambda: base.features.transform_request(context, cands), requests, warmup)
    result = BenchResult(str(model), candidates, forward, transform, request_bytes=len(body), cores=len(os.sched_getaffinity(0)),
                         backend=backend, precision=precision, precision_summary=report.summary() if report.measured else "")  # fmt: skip
    log(f"bare forward: {forward.cell()}; transform: {transform.cell()}")
    for sub_batch, threads in splits:
        s = Scorer.load(model, backend=backend, sub_batch=sub_batch, threads=threads, precision=precision)
        try:
            result.in_process[(sub_batch, threads)] = time_calls(lambda: s.recommend(context, cands, 10), requests, warmup)
        finally:
            s.close()
        log(f"in-process {sub_batch} x {threads}: {result.in_process[(sub_batch, threads)].cell()}")
    if http:
        todo = list(splits if http_splits is None else http_splits)
        # started together, then each timed alone
        servers = [ServerProcess(model, sb, th, backend, wait=False, precision=precision) for sb, th in todo]
        try:
            for (sub_batch, threads), srv in zip(todo, servers):
                srv.wait()
                result.http[(sub_batch, threads)] = time_http(srv.url, body, requests, warmup)
                log(f"HTTP {sub_batch} x {threads}: {result.http[(sub_batch, threads)].cell()}")
            best = min(todo, key=lambda k: result.http[k].p50)
            rps, lat = http_throughput(servers[todo.index(best)].url, body, clients, seconds)
        finally:
            for srv in servers:
                srv.close()
        result.throughput = {"split": best, "clients": clients, "rps": rps, "p50": lat.p50, "p99": lat.p99}
        log(f"throughput: {rps:.0f} requests/s with {clients} clients")
    result.load = (load_before, os.getloadavg()[0])
    return result
