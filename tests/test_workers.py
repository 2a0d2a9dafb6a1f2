"""`widedeep serve --workers 2`: two forked processes on one port, both answering with identical scores; a worker that
dies is replaced; SIGTERM stops them all."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from widedeep.serve.bench import ServerProcess
from widedeep.serve.workers import STARTUP_S, memory

BODY = json.dumps({
    "context": {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5},
    "candidates": [{"impression_app": f"app{i % 30}", "price": float(i % 7)} for i in range(40)],
    "k": 40,
})  # fmt: skip


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def ask(port: int) -> tuple[int, list]:
    """On one new connection: which worker holds it (its pid, from /healthz), and that worker's answer to BODY."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        pid = json.loads(conn.getresponse().read())["pid"]
        conn.request("POST", "/v1/recommend", BODY, {"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        return pid, json.loads(r.read())["items"]
    finally:
        conn.close()


def answers_by_worker(port: int, want: int, tries: int = 400) -> dict[int, list]:
    """Ask on new connections until `want` workers have answered."""
    seen: dict[int, list] = {}
    for _ in range(tries):
        pid, items = ask(port)
        seen.setdefault(pid, items)
        if len(seen) == want:
            break
    return seen


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_two_workers_answer_alike_and_are_supervised(tiny_model: Path):
    srv = ServerProcess(tiny_model, 16, 1, "torch", extra=["--workers", "2"])
    try:
        started = time.monotonic()
        parent = srv.proc.pid
        workers = children(parent)
        assert len(workers) == 2
        seen = answers_by_worker(srv.port, 2)
        assert set(seen) == workers  # both workers answered ...
        first, second = seen.values()
        assert first == second  # ... the same items with the same scores, to the last bit
        for pid in workers:  # the loaded model is shared: a worker's own memory is well below its resident size
            m = memory(pid)
            assert m["uss"] < m["rss"]

        # A worker that dies after its start-up is replaced by a new fork; the server keeps answering.
        time.sleep(max(0.0, STARTUP_S + 0.5 - (time.monotonic() - started)))
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (len(children(parent)) < 2 or victim in children(parent)) and time.monotonic() < deadline:
            time.sleep(0.1)
        now = children(parent)
        assert len(now) == 2 and victim not in now
        seen = answers_by_worker(srv.port, 2)
        assert set(seen) == now and all(items == first for items in seen.values())

        # SIGTERM to the parent stops every worker and the parent exits 0.
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
        assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in now)
    finally:
        srv.close()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
