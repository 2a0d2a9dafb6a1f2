"""Area 4: a barrage of bad, huge, slow and vanishing clients against `widedeep serve MODEL` on 127.0.0.1, while a prober
calls /healthz every 50 ms.

Each request expects a given set of answers (malformed JSON 400; wrong types, booleans as numbers, NaN 422; strings too
long for a field 413/422; a body that is not JSON-typed 415; an oversized body, sent in full before anything is read,
413), and no answer may be a 5xx. The server runs with `--header-timeout T --body-timeout T`; a slow client (half the
headers, or the headers and a few body bytes, then nothing) must be answered or cut off within T + SLOW_GRACE_S seconds.
A client that disconnects mid-request has no answer to read: the 5xx answers that the server counts in /metrics beyond
those the clients saw are charged to it. A gap of over 1 s between two /healthz answers is a stall.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .common import CANDIDATE_COLUMNS, CONTEXT_COLUMNS, Area, Prober, Row, raw_request, read_response, server_5xx, serving

MAX_BODY = 1 << 20  # `widedeep serve` --max-body-bytes default
SLOW_GRACE_S = 3.0  # past its timeout, how long a slow client may wait for the server to act on it
JSON = "application/json"


@dataclass
class Result:
    row: str
    name: str
    status: int | None  # None: no answer (a disconnect, or the server closed without one)
    problem: str  # "" when the answer was one of those expected


class Requests:
    """Valid requests built from rows of the eval file (context from one row, candidates from others)."""

    def __init__(self, eval_file: Path, rng: random.Random):
        self.rows = pq.read_table(eval_file).slice(0, 500).to_pylist()
        self.rng = rng

    def recommend(self, n: int | None = None) -> dict:
        ctx = self.rng.choice(self.rows)
        cands = [{c: r[c] for c in CANDIDATE_COLUMNS} for r in self.rng.sample(self.rows, n or self.rng.randint(1, 40))]
        return {"context": {c: ctx[c] for c in CONTEXT_COLUMNS}, "candidates": cands, "k": self.rng.randint(1, 10)}

    def score(self) -> dict:
        return {"instances": [{c: r[c] for c in (*CONTEXT_COLUMNS, *CANDIDATE_COLUMNS)} for r in self.rng.sample(self.rows, 5)]}


def _dump(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _mutate(change: Callable[[dict], object]) -> Callable[[Requests], bytes]:
    def make(reqs: Requests) -> bytes:
        doc = reqs.recommend()
        change(doc)
        return _dump(doc)

    return make


def _ctx(key: str, value: object) -> Callable[[dict], object]:
    return lambda d: d["context"].update({key: value})


def _cand(key: str, value: object) -> Callable[[dict], object]:
    return lambda d: d["candidates"][0].update({key: value})


def _every_cand(key: str, value: object, n: int) -> Callable[[dict], object]:
    return lambda d: [c.update({key: value}) for c in d["candidates"][:n]]


def _literal(where: str, key: str, text: str) -> Callable[[Requests], bytes]:
    """A request whose `where` (context / first candidate) field `key` is the raw JSON text `text` (e.g. NaN)."""

    def make(reqs: Requests) -> bytes:
        doc = reqs.recommend()
        (doc["context"] if where == "context" else doc["candidates"][0])[key] = "@@VALUE@@"
        return _dump(doc).replace(b'"@@VALUE@@"', text.encode())

    return make


def _truncated(reqs: Requests) -> bytes:
    body = _dump(reqs.recommend())
    return body[: reqs.rng.randint(1, len(body) - 1)]


S422, S400 = frozenset({422}), frozenset({400})
# (row, case, body maker, expected statuses, path, content type)
Shot = tuple[str, str, Callable[[Requests], bytes], frozenset, str, str | None]


def shots() -> list[Shot]:
    ok = frozenset({200})
    valid = [
        ("a valid /v1/recommend", lambda r: _dump(r.recommend()), ok, "/v1/recommend"),
        ("a valid /v1/score", lambda r: _dump(r.score()), ok, "/v1/score"),
        ("unknown extra fields", _mutate(lambda d: d.update(trace_id="abc", debug={"x": 1})), ok, "/v1/recommend"),
    ]
    malformed = [
        ("cut short", _truncated),
        ("random bytes", lambda r: r.rng.randbytes(r.rng.randint(1, 300))),
        ("invalid UTF-8 in a string", lambda r: b'{"context": {"country": "\xff\xfe"}, "candidates": [{}]}'),
        ("top level a list", lambda r: b"[1, 2]"),
        ("top level null", lambda r: b"null"),
        ("empty body", lambda r: b""),
        ("50,000 nested lists", lambda r: b"[" * 50_000 + b"]" * 50_000),
        ("20,000 nested objects", lambda r: b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
        ("trailing garbage", lambda r: _dump(r.recommend()) + b"}}"),
        ("a NUL byte", lambda r: b"\x00"),
    ]
    wrong = [
        ("context a list", _mutate(lambda d: d.update(context=[1])), S422),
        ("candidates an object", _mutate(lambda d: d.update(candidates={"a": 1})), S422),
        ("candidates null", _mutate(lambda d: d.update(candidates=None)), S422),
        ("a candidate a number", _mutate(lambda d: d["candidates"].__setitem__(0, 7)), S422),
        ("app_price a string", _mutate(_cand("app_price", "cheap")), S422),
        ("app_price an object", _mutate(_cand("app_price", {"v": 1})), S422),
        ("age a list", _mutate(_ctx("age", [30])), S422),
        ("country a list", _mutate(_ctx("country", ["us"])), S422),
        ("installed_apps a list of objects", _mutate(_ctx("installed_apps", [{}])), S422),
        ("k a string", _mutate(lambda d: d.update(k="3")), S422),
        ("k 2.5", _mutate(lambda d: d.update(k=2.5)), S422),
        ("k 0", _mutate(lambda d: d.update(k=0)), S422),
        ("k 10**30", _mutate(lambda d: d.update(k=10**30)), frozenset({200, 400, 422})),
        ("impression_app missing", _mutate(lambda d: d["candidates"][0].pop("impression_app")), S422),
        ("country a number", _mutate(_ctx("country", 7)), frozenset({200, 422})),
    ]
    booleans = [
        ("app_price true", _mutate(_cand("app_price", True))),
        ("age false", _mutate(_ctx("age", False))),
        ("k true", _mutate(lambda d: d.update(k=True))),
        ("country true", _mutate(_ctx("country", True))),
        ("impression_app false", _mutate(_cand("impression_app", False))),
        ("installed_apps [true, false]", _mutate(_ctx("installed_apps", [True, False]))),
    ]
    nans = [
        ("app_price NaN", _literal("candidate", "app_price", "NaN"), S422),
        ("age Infinity", _literal("context", "age", "Infinity"), S422),
        ("app_price -Infinity", _literal("candidate", "app_price", "-Infinity"), S422),
        ("age 1e999", _literal("context", "age", "1e999"), frozenset({400, 422})),
        ('age "NaN" (a string)', _mutate(_ctx("age", "NaN")), S422),
    ]
    too_long = frozenset({413, 422})
    huge = [
        ("country of 600,000 characters", _mutate(_ctx("country", "x" * 600_000)), too_long),
        ("impression_app of 150,000 characters x 5", _mutate(_every_cand("impression_app", "y" * 150_000, 5)), too_long),
        ("device of 250,000 x 'é'", _mutate(_ctx("device", "é" * 250_000)), too_long),
        ("installed_apps of 60,000 strings", _mutate(_ctx("installed_apps", [f"a{i}" for i in range(60_000)])),
         frozenset({200, 413, 422})),
        ("a key of 300,000 characters", _mutate(_ctx("k" * 300_000, 1)), frozenset({200, 413, 422})),
    ]
    valid_body = lambda r: _dump(r.recommend())  # noqa: E731
    types = [
        ("text/plain", valid_body, frozenset({415})),
        ("application/x-www-form-urlencoded", valid_body, frozenset({415})),
        ("multipart/form-data; boundary=x", valid_body, frozenset({415})),
        ("application/xml", valid_body, frozenset({415})),
        ("application/json; charset=utf-8", valid_body, ok),
        (None, valid_body, frozenset({200, 415})),  # no Content-Type at all
    ]
    out: list[Shot] = [("valid requests (control)", n, f, e, p, JSON) for n, f, e, p in valid]
    out += [("malformed JSON", n, f, S400, "/v1/recommend", JSON) for n, f in malformed]
    out += [("wrong types", n, f, e, "/v1/recommend", JSON) for n, f, e in wrong]
    out += [("booleans as numbers", n, f, S422, "/v1/recommend", JSON) for n, f in booleans]
    out += [("NaN and infinities", n, f, e, "/v1/recommend", JSON) for n, f, e in nans]
    out += [("huge strings", n, f, e, "/v1/recommend", JSON) for n, f, e in huge]
    out += [("wrong content types", f"Content-Type {t}", f, e, "/v1/recommend", t) for t, f, e in types]
    return out  # fmt: skip


def fire(shot: Shot, body: bytes, port: int) -> Result:
    row, name, _, expect, path, ctype = shot
    try:
        status, answer = raw_request(port, "POST", path, body, {"Content-Type": ctype} if ctype else {"Content-Type": None})
    except OSError as e:
        return Result(row, name, None, f"no answer ({type(e).__name__}: {e})")
    if status in expect:
        return Result(row, name, status, "")
    return Result(row, name, status, f"answered {status}, expected {sorted(expect)}: {answer[:160]!r}")


def oversized(port: int, size: int, chunked: bool) -> Result:
    """A body of `size` bytes (valid JSON) sent in full, by Content-Length or chunked, before the answer is read: 413."""
    name = f"{size:,} bytes, {'chunked' if chunked else 'Content-Length'}"
    opening, closing = b'{"context": {}, "candidates": [', b"{}]}"
    filler = b'{"impression_app": "' + b"z" * 100 + b'", "app_price": 1.0},'
    n, pad = divmod(size - len(opening) - len(closing), len(filler))
    body = opening + filler * n + b" " * pad + closing  # exactly `size` bytes
    head = f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {JSON}\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {len(body)}\r\n\r\n"
    if chunked:
        step = 1 << 16
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head.encode() + body)
            status, answer = read_response(s)
    except OSError as e:
        return Result("oversized bodies, sent in full", name, None, f"no answer ({type(e).__name__}: {e})")
    problem = "" if status == 413 else f"answered {status}, expected 413: {answer[:120]!r}"
    return Result("oversized bodies, sent in full", name, status, problem)


def slow_client(port: int, kind: str, limit: float) -> Result:
    """Headers (and a few body bytes) then nothing: the server must answer or close within `limit` seconds."""
    head = f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {JSON}\r\n"
    sent = head + "Content-Length: 1000\r\n\r\n" + '{"context": ' if kind == "body" else head
    name = "headers, 12 of 1000 body bytes, then silence" if kind == "body" else "half the headers, then silence"
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(sent.encode())
        try:
            first = s.recv(1 << 16)
        except TimeoutError:
            return Result("slow clients", name, None, f"still open after {limit:.0f} s (neither answered nor closed)")
        except OSError:
            first = b""  # reset: cut off
    took = time.monotonic() - t0
    status = int(first.split()[1]) if first.startswith(b"HTTP/") and len(first.split()) > 1 else None
    if status is not None and status >= 500:
        return Result("slow clients", name, status, f"answered {status} after {took:.1f} s")
    return Result("slow clients", name, status, "")


def disconnect(port: int, kind: str, reqs_body: bytes) -> Result:
    """Send part or all of a request, then go away without reading the answer."""
    head = f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {JSON}\r\n"
    head += f"Content-Length: {len(reqs_body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if kind == "mid-body":
            s.sendall(head.encode() + reqs_body[: len(reqs_body) // 2])
        else:
            s.sendall(head.encode() + reqs_body)
        if kind == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
    return Result("client disconnects", kind, None, "")


def run_area(
    model_dir: Path, eval_file: Path, root: Path, *,
    per_kind: int, raw: int, slow: int, threads: int, slow_timeout: float, seed: int,
) -> Area:  # fmt: skip
    """Start the server and the prober; fire every case (at least `per_kind` shots per row), `raw` oversized bodies and
    `raw` disconnects, `threads` at a time, and `slow` slow clients on threads of their own."""
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:http")
    reqs = Requests(eval_file, rng)
    plan: list[Callable[[int], Result]] = []
    kinds = shots()
    for row in dict.fromkeys(k[0] for k in kinds):  # `per_kind` shots of each row, cycling through its cases
        cases = [k for k in kinds if k[0] == row]
        for i in range(max(per_kind, len(cases))):
            shot = cases[i % len(cases)]
            plan.append(lambda port, shot=shot, body=shot[2](reqs): fire(shot, body, port))
    for i in range(raw):
        size = [MAX_BODY + 1, 2 * MAX_BODY, 4 * MAX_BODY][i % 3]
        plan.append(lambda port, size=size, chunked=bool(i % 2): oversized(port, size, chunked))
        body = _dump(reqs.recommend(200))
        plan.append(lambda port, kind=["mid-body", "before the answer", "reset"][i % 3], body=body: disconnect(port, kind, body))
    rng.shuffle(plan)
    log, limit = root / "serve.log", slow_timeout + SLOW_GRACE_S
    timeouts = ("--header-timeout", str(slow_timeout), "--body-timeout", str(slow_timeout))
    with serving(model_dir, log, *timeouts) as port, Prober(port) as prober:
        slow_results: list[Result] = []
        slow_threads = [
            threading.Thread(target=lambda kind=("body", "headers")[i % 2]: slow_results.append(slow_client(port, kind, limit)))
            for i in range(slow)
        ]
        for t in slow_threads:
            t.start()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda f: f(port), plan))
        for t in slow_threads:
            t.join(timeout=limit + 30)
        time.sleep(0.2)  # let the prober see the server after the barrage
        server_side = server_5xx(port)
    results += slow_results
    order = [*dict.fromkeys(k[0] for k in kinds), "oversized bodies, sent in full", "client disconnects", "slow clients"]
    rows = {name: Row(name, http_5xx=0) for name in order if any(r.row == name for r in results)}
    for r in results:
        row = rows[r.row]
        row.tried += 1
        row.http_5xx += r.status is not None and r.status >= 500
        if r.problem:
            row.failed += 1
            row.note(f"{r.name}: {r.problem}")
    unseen = server_side - sum(r.http_5xx or 0 for r in rows.values())
    if unseen > 0:
        row = rows.setdefault("client disconnects", Row("client disconnects", http_5xx=0))
        row.http_5xx += unseen
        row.note(f"the server counted {unseen} 5xx answer(s) that no client read (its /metrics); see {log}")
    probe = Row("GET /healthz every 50 ms", prober.calls, prober.failures, http_5xx=0, stall_s=prober.longest)
    probe.notes += sorted(set(prober.errors))[:3]
    tracebacks = log.read_text(errors="replace").count("Traceback")
    if tracebacks:
        probe.note(f"the server log holds {tracebacks} traceback(s): {log}")
    title = f"area 4: HTTP fuzz against `widedeep serve` on 127.0.0.1:{port} ({len(results)} clients, {threads} at a time)"
    return Area(title, [*rows.values(), probe], time.monotonic() - t0)
