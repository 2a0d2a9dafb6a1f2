"""What a client may cost the server, over real HTTP and raw sockets: slow or stalled headers and bodies, oversized bodies,
long strings, too many connections, a request stuck in the scorer, clients that go away."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5}
CANDIDATES = [{"impression_app": f"app{i}", "price": 1.0} for i in range(5)]
LIMITS = Limits(max_body_bytes=2 << 20, header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=0.5, max_connections=40)


class GatedScorer(Scorer):
    """A real Scorer whose ranking requests with country "gate" wait in the scorer until the test opens the gate."""

    entered = threading.Event()
    gate = threading.Event()

    def recommend(self, context, candidates, k=10):
        if isinstance(context, dict) and context.get("country") == "gate":
            GatedScorer.entered.set()
            if not GatedScorer.gate.wait(30):
                raise RuntimeError("the test never opened the gate")
        return super().recommend(context, candidates, k)


@pytest.fixture(scope="module")
def srv(tiny_model: Path):
    live = LiveScorer(tiny_model, lambda p: GatedScorer.load(p, sub_batch=16, threads=2))
    with BackgroundServer(create_app(live, LIMITS)) as server:
        yield server


def raw(srv: BackgroundServer, data: bytes = b"", timeout: float = 10) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    if data:
        s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (raises socket.timeout if it does not)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def head(body: bytes, length: int | None = None, extra: str = "") -> bytes:
    n = len(body) if length is None else length
    return (f"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n{extra}\r\n").encode()


def count(srv: BackgroundServer, route: str, status: int) -> int:
    text = httpx.get(f"{srv.url}/metrics").text
    m = re.search(rf'widedeep_requests_total{{route="{route}",status="{status}"}} (\d+)', text)
    return int(m.group(1)) if m else 0


def test_a_stalled_body_gets_408_and_the_connection_is_closed(srv):
    body = json.dumps({"context": CONTEXT, "candidates": CANDIDATES}).encode()
    s = raw(srv, head(body) + body[:10])
    t0 = time.monotonic()
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within 0.5 s" in answer
    assert time.monotonic() - t0 < LIMITS.body_timeout + 3


@pytest.mark.parametrize("sent", [b"", b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\n", b"GET /hea"])
def test_stalled_headers_get_408_and_the_connection_is_closed(srv, sent: bytes):
    s = raw(srv, sent)
    t0 = time.monotonic()
    assert read_all(s).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < LIMITS.header_timeout + 3


def test_many_slow_connections_are_all_closed_in_time(srv):
    socks = [raw(srv, b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\n") for _ in range(30)]
    t0 = time.monotonic()
    for s in socks:
        read_all(s)  # closed by the server (else socket.timeout)
    assert time.monotonic() - t0 < LIMITS.header_timeout + 5
    assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_an_idle_keep_alive_connection_is_closed(srv):
    s = raw(srv, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", timeout=LIMITS.keep_alive_timeout + 2)
    assert read_all(s).startswith(b"HTTP/1.1 200")  # then nothing more: closed after keep_alive_timeout


def test_connections_past_the_limit_are_refused_with_503(tiny_model: Path):
    live = LiveScorer(tiny_model, lambda p: Scorer.load(p, sub_batch=16, threads=1))
    limits = Limits(max_connections=5, header_timeout=1.0)
    with BackgroundServer(create_app(live, limits)) as server:
        held = [raw(server) for _ in range(5)]
        time.sleep(0.2)
        extra = raw(server)
        assert read_all(extra).startswith(b"HTTP/1.1 503")
        for s in held:
            assert read_all(s).startswith(b"HTTP/1.1 408")  # the idle ones time out, which frees their places
        assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize("size", [3 << 20, 20 << 20])
def test_an_oversized_body_sent_whole_gets_413_with_urllib(srv, size: int):
    body = b'{"candidates": "' + b"x" * size + b'"}'
    request = urllib.request.Request(f"{srv.url}/v1/recommend", data=body, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 413 and "exceeds the limit" in json.loads(e.value.read())["error"]["message"]


@pytest.mark.parametrize("close", [True, False])
def test_an_oversized_body_sent_whole_gets_413_on_a_raw_socket(srv, close: bool):
    body = b"[" + b"1," * (3 << 20) + b"1]"
    s = raw(srv, timeout=30)
    s.sendall(head(body, extra="Connection: close\r\n" if close else "") + body)
    s.shutdown(socket.SHUT_WR)
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in answer


def test_an_oversized_body_announced_with_expect_100_continue_is_refused_before_it_is_sent(srv):
    s = raw(srv, head(b"", length=10 << 20, extra="Expect: 100-continue\r\n"))
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer


def test_a_megabyte_string_is_refused_at_once_naming_the_field(srv):
    cands = [*CANDIDATES, {"impression_app": "x" * 1_000_000, "price": 1.0}]
    r = httpx.post(f"{srv.url}/v1/recommend", json={"context": CONTEXT, "candidates": cands}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["field"] == "candidates[5].impression_app"
    assert "exceeds the limit of 4096 bytes" in r.json()["error"]["message"]


def test_a_request_stuck_in_the_scorer_holds_up_no_other_request(srv):
    GatedScorer.entered.clear()
    GatedScorer.gate.clear()
    result: dict = {}

    def stuck() -> None:
        doc = {"context": {**CONTEXT, "country": "gate"}, "candidates": CANDIDATES}
        result["r"] = httpx.post(f"{srv.url}/v1/recommend", json=doc, timeout=60)

    t = threading.Thread(target=stuck)
    t.start()
    try:
        assert GatedScorer.entered.wait(30)
        with httpx.Client(base_url=srv.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/recommend", json={"context": CONTEXT, "candidates": CANDIDATES}).status_code == 200
            assert client.post("/v1/score", json={"instances": [{**CONTEXT, **CANDIDATES[0]}]}).status_code == 200
        assert "r" not in result  # still waiting in the scorer all along
    finally:
        GatedScorer.gate.set()
        t.join(30)
    assert result["r"].status_code == 200


def test_clients_that_go_away_are_counted_as_499_and_logged_at_info(srv, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="widedeep.serve")
    before = (count(srv, "/v1/recommend", 499), count(srv, "/v1/recommend", 500))
    body = json.dumps({"context": {**CONTEXT, "country": "gate"}, "candidates": CANDIDATES}).encode()

    s = raw(srv, head(body) + body[:20])  # gone while sending the body
    time.sleep(0.1)
    s.close()

    GatedScorer.entered.clear()
    GatedScorer.gate.clear()
    s = raw(srv, head(body) + body)  # gone while its request is being scored
    assert GatedScorer.entered.wait(30)
    s.close()
    time.sleep(0.2)
    GatedScorer.gate.set()

    deadline = time.monotonic() + 10
    while count(srv, "/v1/recommend", 499) < before[0] + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(srv, "/v1/recommend", 499) == before[0] + 2
    assert count(srv, "/v1/recommend", 500) == before[1]
    ours = [r for r in caplog.records if r.name == "widedeep.serve"]
    assert sum("disconnected" in r.getMessage() for r in ours if r.levelno == logging.INFO) == 2
    assert not [r for r in ours if r.levelno >= logging.WARNING]


def test_the_serve_command_applies_its_limit_flags(tiny_model: Path, tmp_path: Path):
    import subprocess
    import sys

    from widedeep.serve.bench import free_port

    port = free_port()
    flags = ["--max-string-bytes", "16", "--header-timeout", "0.5", "--body-timeout", "0.5", "--max-connections", "3"]
    cmd = [sys.executable, "-m", "widedeep", "serve", str(tiny_model), "--backend", "torch", "--port", str(port), *flags]
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"{url}/v1/recommend", json={"context": CONTEXT, "candidates": [{"impression_app": "a" * 17, "price": 1}]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "candidates[0].impression_app"
        assert httpx.get(f"{url}/v1/model").json()["limits"]["max_connections"] == 3
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert read_all(s).startswith(b"HTTP/1.1 408")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
