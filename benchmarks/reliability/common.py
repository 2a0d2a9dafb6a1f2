"""What every area of the reliability suite shares: the data and config, `widedeep` processes, a loopback HTTP client,
a /healthz prober, and the result tables."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STALL_LIMIT_S = 1.0  # the longest gap between two /healthz answers that is not a stall
# widedeep.atomic names every temporary file and folder `.<name>.tmp-<host>-<pid>-<random>` (`.old-` for a replaced
# folder in the middle of a swap). Matched loosely here, so a leftover is found even if the suffix changes.
TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-")

CONTEXT_COLUMNS = ("country", "device", "installed_apps", "age")  # the user: sent once per /v1/recommend
CANDIDATE_COLUMNS = ("impression_app", "app_category", "app_price")  # the app: one per candidate

CONFIG = """\
[data]
train = "{train}"
eval = "{eval}"
label = "installed"

[features.country]
type = "categorical"
[features.device]
type = "categorical"
[features.installed_apps]
type = "categorical"
multi_valued = true
min_count = 2
[features.impression_app]
type = "categorical"
min_count = 2
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
buckets = 4096

[model]
type = "wide_deep"
wide = ["installed_x_impression", "impression_app", "app_category", "country"]
deep = ["country", "device", "installed_apps", "impression_app", "app_category", "age", "app_price"]
embedding_dim = 8
hidden = [32, 16]

[train]
batch_size = 128
epochs = {epochs}
out = "run"
seed = 0
checkpoint_every = 5
bf16 = "off"
device = "cpu"
{extra}"""


def config_text(train: str, eval: str, epochs: int = 2, extra: str = "") -> str:
    """The suite's tiny app-store config (written beside its run folder `run/`)."""
    return CONFIG.format(train=train, eval=eval, epochs=epochs, extra=extra)


def make_data(folder: Path, train_rows: int, eval_rows: int) -> tuple[Path, Path]:
    """App-store impressions (`widedeep.datasets.app_store`): train files and an eval file; reused when already there."""
    import json

    from widedeep.datasets.app_store import write_app_store

    stamp = folder / "rows.json"
    want = {"train": train_rows, "eval": eval_rows}
    if not stamp.is_file() or json.loads(stamp.read_text()) != want:
        shutil.rmtree(folder, ignore_errors=True)
        write_app_store(folder, train_rows, eval_rows, seed=0, rows_per_file=max(train_rows // 2, 1))
        stamp.write_text(json.dumps(want))
    return folder / "train", folder / "eval.parquet"


def temp_leftovers(folder: Path) -> list[str]:
    """Paths (relative to `folder`) of temporary names that a publish left behind anywhere below `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in (*dirs, *files) if TEMP_NAME.match(n)]
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------------------
# `widedeep` processes


def widedeep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "widedeep", *args]


def child_env() -> dict[str, str]:
    """One intra-op thread (the machine is shared, and CPU training is then bit-reproducible) and no precision override."""
    env = {k: v for k, v in os.environ.items() if k != "WIDEDEEP_BF16"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group (so that a kill reaches every process it started), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `widedeep ARGS` to completion (killed past `timeout`); stdout and stderr captured apart."""
    p = subprocess.Popen(
        widedeep_cmd(*args), cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate()
        err += f"\n(killed after {timeout:.0f} s)"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# ----------------------------------------------------------------------------------------------------------------------
# HTTP on the loopback interface


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str | None] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection (`Connection: close`), the body sent in full before anything is read; returns
    (status, body). Raises OSError when the server resets or closes the connection without an answer."""
    head = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    if body is not None:
        head["Content-Length"] = str(len(body))
    head.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items() if v is not None)]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return read_response(s)


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """Read an HTTP/1.1 answer until the server closes the connection; (status, body)."""
    data = bytearray()
    while chunk := s.recv(1 << 16):
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise ConnectionError(f"no HTTP answer ({len(data)} bytes: {bytes(data[:60])!r})")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(status[1]), body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return bytes(out)


class Prober:
    """Calls GET /healthz every `every` seconds on its own thread; records the longest gap between two answers."""

    def __init__(self, port: int, every: float = 0.05):
        self.port, self.every = port, every
        self.longest, self.calls, self.failures = 0.0, 0, 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self.calls += 1
            try:
                status, _ = raw_request(self.port, "GET", "/healthz", timeout=10)
                ok = status == 200
                if not ok:
                    self.errors.append(f"/healthz answered {status}")
            except OSError as e:
                ok = False
                self.errors.append(f"/healthz: {type(e).__name__}: {e}")
            now = time.monotonic()
            if ok:
                self.longest, last = max(self.longest, now - last), now
            else:
                self.failures += 1
            self._stop.wait(max(0.0, self.every - (time.monotonic() - now)))
        self.longest = max(self.longest, time.monotonic() - last)


@contextmanager
def serving(source: Path, log: Path, *args: str, attempts: int = 3) -> Iterator[int]:
    """`widedeep serve SOURCE` on 127.0.0.1 at a free port, up and answering /healthz; yields the port, stops it after."""
    for attempt in range(attempts):
        port = free_port()
        p = start(widedeep_cmd("serve", str(source), "--port", str(port), *args), log.parent, log)
        deadline, up = time.monotonic() + 180, False
        while not up and p.poll() is None and time.monotonic() < deadline:
            try:
                up = raw_request(port, "GET", "/healthz", timeout=5)[0] == 200
            except OSError:
                time.sleep(0.1)
        if not up:
            kill_group(p)
            p.wait()
            if attempt + 1 < attempts and "address already in use" in log.read_text(errors="replace").lower():
                continue  # another process took the port between our probe and the bind
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"widedeep serve {source} did not come up on port {port} (log {log}):\n{tail}")
        break
    try:
        yield port
    finally:
        kill_group(p, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_group(p)
            p.wait()


def server_5xx(port: int) -> int:
    """5xx answers the server itself counted (its /metrics), including those no client was left to read."""
    _, text = raw_request(port, "GET", "/metrics", timeout=10)
    found = re.findall(rb'widedeep_requests_total\{route="[^"]*",status="5\d\d"\} (\d+)', text)
    return sum(int(n) for n in found)


# ----------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One kind of check in an area: how many were tried and how many missed which target (None: not measured here)."""

    check: str
    tried: int = 0
    failed: int = 0
    lost: int | None = None
    corrupt: int | None = None
    killed: int | None = None
    http_5xx: int | None = None
    stall_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def missed(self) -> bool:
        stalled = self.stall_s is not None and self.stall_s > STALL_LIMIT_S
        return bool(self.failed or self.lost or self.corrupt or self.http_5xx or stalled)

    def note(self, text: str) -> None:
        self.notes.append(text)


COLUMNS = (("tried", "tried"), ("killed", "killed"), ("failed", "failed"), ("corrupt", "corrupt"), ("lost", "lost"),
           ("http_5xx", "5xx"), ("stall_s", "longest stall"))  # fmt: skip


@dataclass
class Area:
    title: str
    rows: list[Row]
    seconds: float = 0.0

    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.missed()]

    def render(self, max_notes: int = 6) -> str:
        cols = [(attr, name) for attr, name in COLUMNS if any(getattr(r, attr) is not None for r in self.rows)]
        cells = [[r.check, *(_cell(getattr(r, attr)) for attr, _ in cols)] for r in self.rows]
        header = ["check", *(name for _, name in cols)]
        width = [max(len(x) for x in col) for col in zip(header, *cells)]

        def line(xs: list[str]) -> str:  # the check left-aligned, the figures right-aligned
            return "| " + " | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(xs, width))) + " |"

        rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(width)) + "|"
        verdict = "all targets met" if not self.missed() else f"MISSED: {', '.join(r.check for r in self.missed())}"
        out = [f"{self.title} ({self.seconds:.1f} s): {verdict}", line(header), rule, *map(line, cells)]
        for r in self.rows:
            out += [f"  - {r.check}: {n}" for n in r.notes[:max_notes]]
            if len(r.notes) > max_notes:
                out.append(f"  - {r.check}: ... and {len(r.notes) - max_notes} more")
        return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f} s"
    return str(value)
