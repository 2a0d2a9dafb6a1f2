"""Impression and event logs: every returned item logged with the features as received, sampling by request id, outcome
events with precise 4xx errors, rolling part files, the drop counter, and a real `widedeep serve` killed with -9 (no
corrupt or half-visible file) or stopped with SIGTERM (every row written)."""

from __future__ import annotations

import re
import signal
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widedeep.serve.logs import Rolling, RollingLog, ServerLogs, event_batches
from widedeep.serve.log_schema import EVENT_SCHEMA, impression_schema
from widedeep.serve.bench import ServerProcess
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.limits import Limits
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "user_id": 42, "age": 31.5}
PART = re.compile(r"^part-\d{8}T\d{6}\.\d{6}Z-\d+-\d{6}\.parquet$")


def cands(n: int) -> list[dict]:
    return [{"impression_app": f"app{i % 30}", "price": i % 3 if i % 2 else float(i % 7)} for i in range(n)]


@contextmanager
def serving(model: Path, log_dir: Path | None, sample: float = 1.0, rolling: Rolling = Rolling(seconds=3600)):
    """An in-process server on loopback, logging to `log_dir`; leaving the block stops it (and flushes the logs)."""
    live = LiveScorer(model, lambda p: Scorer.load(p, sub_batch=16, threads=1))
    logs = ServerLogs(log_dir, sample, rolling) if log_dir is not None else None
    with BackgroundServer(create_app(live, Limits(max_candidates=50), logs)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c, live, logs


def parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def read_log(folder: Path) -> pa.Table:
    files = parts(folder)
    assert files and all(PART.match(p.name) for p in files), [p.name for p in folder.iterdir()]
    return pa.concat_tables([pq.read_table(p) for p in files])


def dropped(client: httpx.Client, log: str) -> int:
    m = re.search(rf'widedeep_log_dropped_total{{log="{log}"}} (\d+)', client.get("/metrics").text)
    assert m, "no drop counter on /metrics"
    return int(m.group(1))


def test_every_returned_item_is_one_row_with_the_features_as_received(tiny_model: Path, tmp_path: Path):
    a = {"context": CONTEXT, "candidates": cands(12), "k": 4, "request_id": "client-a"}
    b = {"context": {"country": None, "installed_apps": None, "user_id": "u7", "age": None}, "candidates": cands(5), "k": 10}
    c_cands = [{**cand, "country": "de" if i % 2 else "fr"} for i, cand in enumerate(cands(6))]  # read from the candidates
    c = {"context": CONTEXT, "candidates": c_cands, "k": 3}
    t0 = datetime.now(timezone.utc)
    with serving(tiny_model, tmp_path) as (client, live, _):
        answers = {}
        for doc in (a, b, c):
            r = client.post("/v1/recommend", json=doc)
            assert r.status_code == 200, r.text
            answers[r.json()["request_id"]] = (doc, r.json())
        features = live.scorer.features.features
    t1 = datetime.now(timezone.utc)
    assert "client-a" in answers
    table = read_log(tmp_path / "impressions")
    assert table.schema == impression_schema(features)
    assert table.num_rows == 4 + 5 + 3
    for rid, (doc, answer) in answers.items():
        rows = table.filter(pa.compute.equal(table["request_id"], rid)).sort_by("position").to_pylist()
        assert [r["position"] for r in rows] == list(range(len(answer["items"])))
        assert [r["index"] for r in rows] == [it["index"] for it in answer["items"]]
        assert [r["score"] for r in rows] == [float(np.float32(it["score"])) for it in answer["items"]]
        for r in rows:
            assert r["arm"] == "default" and r["model_version"] == live.scorer.version and t0 <= r["time"] <= t1
            cand, ctx = doc["candidates"][r["index"]], doc["context"]
            assert r["impression_app"] == cand["impression_app"] and r["price"] == float(cand["price"])
            assert r["country"] == cand.get("country", ctx["country"])
            assert r["installed_apps"] == ctx["installed_apps"] and r["age"] == ctx["age"]
            assert r["user_id"] == str(ctx["user_id"])  # an integer id is logged as the token the model hashes


def test_request_ids_are_echoed_made_or_refused(tiny_model: Path):
    with serving(tiny_model, None) as (client, _, _):
        made = {client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(2)}).json()["request_id"] for _ in range(3)}
        assert len(made) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made)
        r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(2), "request_id": "x" * 128})
        assert r.status_code == 200 and r.json()["request_id"] == "x" * 128 and r.json()["arm"] == "default"
        for bad in ("", "x" * 129, 5, None, ["a"]):
            r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(2), "request_id": bad})
            assert r.status_code == 422 and r.json()["error"]["field"] == "request_id", (bad, r.text)
        r = client.post("/v1/events", json={"events": [{"request_id": "a", "index": 0, "type": "install"}]})
        assert r.status_code == 404 and "--log-dir" in r.json()["error"]["message"]


def test_sampling_keeps_whole_requests_chosen_by_request_id(tiny_model: Path, tmp_path: Path):
    logged = []
    for run in ("first", "restarted"):
        with serving(tiny_model, tmp_path / run, sample=0.5) as (client, _, _):
            for i in range(40):
                doc = {"context": CONTEXT, "candidates": cands(6), "k": 3, "request_id": f"r{i}"}
                assert client.post("/v1/recommend", json=doc).status_code == 200
        table = read_log(tmp_path / run / "impressions")
        ids = table["request_id"].to_pylist()
        assert all(ids.count(rid) == 3 for rid in set(ids))  # whole requests
        logged.append(set(ids))
    assert 5 <= len(logged[0]) <= 35 and logged[0] == logged[1]


def test_events_are_logged_with_their_times(tiny_model: Path, tmp_path: Path):
    events = [
        {"request_id": "r1", "index": 3, "type": "install", "time": "2026-12-01T10:00:00Z"},
        {"request_id": "r1", "index": 0, "type": "click", "time": "2026-12-01T12:30:00.250+02:00"},
        {"request_id": "never-served", "index": 7, "type": "install"},
    ]
    t0 = datetime.now(timezone.utc)
    with serving(tiny_model, tmp_path) as (client, _, _):
        r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 200 and r.json() == {"accepted": 3}
    t1 = datetime.now(timezone.utc)
    table = read_log(tmp_path / "events")
    assert table.schema == EVENT_SCHEMA
    rows = table.to_pylist()
    assert [(e["request_id"], e["index"], e["type"]) for e in rows] == [(e["request_id"], e["index"], e["type"]) for e in events]
    assert rows[0]["time"] == datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    assert rows[1]["time"] == datetime(2026, 12, 1, 10, 30, 0, 250000, tzinfo=timezone.utc)
    assert t0 <= rows[2]["time"] <= t1  # stamped on arrival


GOOD = {"request_id": "r1", "index": 3, "type": "install"}


@pytest.fixture(scope="module")
def logging_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("logs")
    with serving(tiny_model, root) as (client, _, logs):
        yield client
    assert logs.events.written == 0 and not parts(root / "events")  # no bad event was logged


@pytest.mark.parametrize(
    "doc,field",
    [
        ({}, "events"),
        ({"events": []}, "events"),
        ({"events": "install"}, "events"),
        ({"events": [GOOD] * 51}, "events"),
        ({"events": [GOOD, "r1"]}, "events[1]"),
        ({"events": [GOOD, GOOD, {"request_id": "r1", "index": 3}]}, "events[2].type"),
        ({"events": [{**GOOD, "index": -1}]}, "events[0].index"),
        ({"events": [{**GOOD, "index": True}]}, "events[0].index"),
        ({"events": [{**GOOD, "index": "3"}]}, "events[0].index"),
        ({"events": [{**GOOD, "index": 1.5}]}, "events[0].index"),
        ({"events": [{**GOOD, "request_id": ""}]}, "events[0].request_id"),
        ({"events": [{**GOOD, "request_id": "x" * 129}]}, "events[0].request_id"),
        ({"events": [{**GOOD, "type": 5}]}, "events[0].type"),
        ({"events": [{**GOOD, "time": "yesterday"}]}, "events[0].time"),
        ({"events": [{**GOOD, "time": "2026-12-01T10:00:00"}]}, "events[0].time"),
        ({"events": [{**GOOD, "time": 1764583200}]}, "events[0].time"),
        ({"events": [{**GOOD, "idx": 3}]}, "events[0].idx"),
    ],
)
def test_a_bad_event_gets_a_422_naming_the_field(logging_server: httpx.Client, doc: dict, field: str):
    r = logging_server.post("/v1/events", json=doc)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["message"]


def test_a_full_queue_drops_and_counts_rows_and_never_fails_a_request(tiny_model: Path, tmp_path: Path):
    n, k = 8, 3
    with serving(tiny_model, tmp_path, rolling=Rolling(seconds=3600, queue=1)) as (client, _, logs):
        with logs.impressions.paused():  # the writer takes at most one answer; the queue holds one more
            for i in range(n):
                r = client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(5), "k": k})
                assert r.status_code == 200, r.text
            lost = dropped(client, "impressions")
        assert lost >= (n - 2) * k and lost % k == 0
    table = read_log(tmp_path / "impressions")
    assert table.num_rows + lost == n * k and logs.impressions.dropped == lost


def test_part_files_roll_by_time_while_serving(tiny_model: Path, tmp_path: Path):
    folder = tmp_path / "impressions"
    with serving(tiny_model, tmp_path, rolling=Rolling(seconds=0.2)) as (client, _, _):
        for expect in (1, 2):
            assert client.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(4), "k": 2}).status_code == 200
            deadline = time.monotonic() + 10
            while len(parts(folder)) < expect and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(parts(folder)) == expect  # written by the clock, not by the shutdown
        # The writer counts a file just after renaming it into place: give the count the same deadline.
        counted = 'widedeep_log_files_total{log="impressions"} 2'
        while counted not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counted in client.get("/metrics").text
    assert read_log(folder).num_rows == 4


def test_rolling_log_counts_drops_and_rolls_by_rows(tmp_path: Path):
    log = RollingLog(tmp_path / "events", event_batches, Rolling(seconds=3600, rows=2, queue=2))
    post = [("r", 1, "install", None)]
    assert [log.put(post * 2, 2) for _ in range(5)] == [True, True, False, False, False]  # not started: nothing drains
    assert log.dropped == 6
    log.start()
    deadline = time.monotonic() + 10
    while log.files < 1 and time.monotonic() < deadline:  # 2 rows reach the roll size: written before any stop
        time.sleep(0.02)
    assert log.files >= 1
    log.stop()
    assert log.written == 4 and read_log(tmp_path / "events").num_rows == 4


# -- a real `widedeep serve` process -------------------------------------------------------------------------------------


def recommend(srv: ServerProcess, n: int, prefix: str) -> None:
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for i in range(n):
            r = c.post("/v1/recommend", json={"context": CONTEXT, "candidates": cands(5), "k": 2, "request_id": f"{prefix}{i}"})
            assert r.status_code == 200, r.text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_kill_9_leaves_only_whole_files_and_sigterm_writes_every_row(tiny_model: Path, tmp_path: Path):
    folder = tmp_path / "impressions"
    extra = ["--log-dir", str(tmp_path), "--log-roll-seconds", "0.3"]
    srv = ServerProcess(tiny_model, 16, 1, extra=extra)
    try:
        recommend(srv, 5, "a")
        deadline = time.monotonic() + 20
        while not parts(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert parts(folder), "no part file was rolled"
        recommend(srv, 20, "b")
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=20)
    finally:
        srv.close()
    killed = read_log(folder)  # every visible file reads whole
    assert killed.schema.field("request_id").type == pa.string() and 10 <= killed.num_rows <= 50

    srv = ServerProcess(tiny_model, 16, 1, extra=["--log-dir", str(tmp_path), "--log-roll-seconds", "3600"])
    try:
        recommend(srv, 15, "c")
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
        srv.close()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # the killed writer's leftovers are gone
    table = read_log(folder)
    ids = table["request_id"].to_pylist()
    assert sum(rid.startswith("c") for rid in ids) == 15 * 2  # SIGTERM: every row written
    assert table.num_rows == killed.num_rows + 30
