"""Cross-request batching: concurrent requests scored in shared passes get the answers they get alone, each with its own
context; one request's failure stays its own; the queue is bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from widedeep.features.encoded import Encoded
from widedeep.serve.batcher import Batcher, Batching, batched
from widedeep.serve.errors import RequestError
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer

APPS = [f"app{i}" for i in range(30)]


def request(seed: int, n: int, per_candidate: str | None = None) -> tuple[dict, list[dict]]:
    """A ranking request with its own context (country, installed list, user, age) and `n` candidates; `per_candidate`
    moves a context field into the candidates (a different context half)."""
    rng = np.random.default_rng(seed)
    context = {
        "country": ["us", "de", "fr", "jp"][seed % 4],
        "installed_apps": [APPS[i] for i in rng.integers(0, 30, 1 + seed % 5)],  # list widths differ between requests
        "user_id": int(rng.integers(0, 500)),
        "age": float(rng.uniform(18, 70)),
    }
    cands = [{"impression_app": APPS[i], "price": float(p)} for i, p in zip(rng.integers(0, 30, n), rng.uniform(0, 9, n).round(2))]
    if per_candidate is not None:
        value = context.pop(per_candidate)
        cands = [{**c, per_candidate: value} for c in cands]
    return context, cands


def all_scores(scorer: Scorer, context: dict, cands: list[dict]) -> np.ndarray:
    """Every candidate's probability, in candidate order, through recommend (the ranking path)."""
    ranked = scorer.recommend(context, cands, k=len(cands))
    out = np.empty(len(cands), np.float32)
    out[ranked.index] = ranked.score
    return out


def together(fn, args: list) -> list:
    """Run fn(*a) for each a in concurrent threads started at once; results (or the exception raised) in order."""
    out: list = [None] * len(args)
    gate = threading.Barrier(len(args))

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(*args[i])
        except Exception as e:  # noqa: BLE001 -- returned for the test to check
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


REQUESTS = [request(1, 40), request(2, 7), request(3, 1), request(4, 25, per_candidate="age"), request(5, 60), request(6, 13)]


@pytest.mark.parametrize("backend,threads", [("torch", 1), ("torch", 2), ("hybrid", 1)])
def test_batched_answers_equal_unbatched_ones(tiny_model: Path, backend: str, threads: int):
    pytest.importorskip("onnxruntime") if backend == "hybrid" else None
    alone = Scorer.load(tiny_model, backend=backend, sub_batch=16, threads=threads)
    want = [all_scores(alone, c, x) for c, x in REQUESTS]
    rows = sum(len(x) for _, x in REQUESTS)
    # A long delay and a limit of every row: the six requests wait for each other and share passes.
    scorer = batched(Scorer.load(tiny_model, backend=backend, sub_batch=16, threads=threads), Batching(True, max_candidates=rows, max_delay_us=2_000_000))
    got = together(lambda c, x: all_scores(scorer, c, x), REQUESTS)
    for w, g in zip(want, got):
        assert not isinstance(g, Exception), g
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
    b = scorer.batcher
    assert b.requests == len(REQUESTS) and b.passes < len(REQUESTS)  # they were scored together
    # /v1/score's rows (no shared context) batch too
    rows_ = [[{**c, **x[0]}] + [{**c, **y} for y in x[1:3]] for c, x in REQUESTS[:3]]
    got = together(lambda r: scorer.score(r), [(r,) for r in rows_])
    for r, g in zip(rows_, got):
        np.testing.assert_allclose(g, alone.score(r), atol=1e-6, rtol=0)


def test_pass_limit_and_no_wait_by_default(tiny_model: Path):
    scorer = batched(Scorer.load(tiny_model, sub_batch=16), Batching(True, max_candidates=50, max_delay_us=2_000_000))
    sizes = [30, 30, 30, 70]  # at most 50 rows per pass, a 70-row request alone: 4 passes
    got = together(lambda c, x: all_scores(scorer, c, x), [request(10 + i, n) for i, n in enumerate(sizes)])
    assert all(not isinstance(g, Exception) for g in got)
    assert scorer.batcher.passes == 4
    lone = batched(Scorer.load(tiny_model, sub_batch=16), Batching(True))  # the default: never wait for more
    t0 = time.perf_counter()
    all_scores(lone, *request(20, 10))
    assert time.perf_counter() - t0 < 1.0 and lone.batcher.passes == 1


def test_a_failing_request_does_not_fail_the_others(tiny_model: Path):
    scorer = Scorer.load(tiny_model, sub_batch=16)
    batcher = Batcher(scorer, Batching(True, max_candidates=1000, max_delay_us=2_000_000))
    encoded = [scorer.features.transform_request(c, x) for c, x in REQUESTS[:3]]
    context = frozenset(REQUESTS[0][0]) - {"impression_app", "price"}
    want = [scorer.encoded_logits(e, context) for e in encoded]
    bad = Encoded(encoded[0].ids.copy(), encoded[0].dense, encoded[0].lists)
    bad.ids[:] = 10**9  # ids past every table: the network's lookups fail on this request's rows
    got = together(batcher.logits, [(encoded[0], context), (bad, context), (encoded[1], context), (encoded[2], context)])
    assert isinstance(got[1], (IndexError, RuntimeError)), got[1]
    assert batcher.passes == 1  # one shared pass, failed, then retried request by request
    for w, g in zip(want, [got[0], got[2], got[3]]):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)


def test_the_queue_is_bounded(tiny_model: Path):
    scorer = Scorer.load(tiny_model, sub_batch=16)
    batcher = Batcher(scorer, Batching(True, max_queue=1, max_delay_us=500_000, max_candidates=1000))
    enc = scorer.features.transform_request(*REQUESTS[0])
    first = threading.Thread(target=batcher.logits, args=(enc, None))
    first.start()  # waits half a second for company, its request in the queue
    time.sleep(0.1)
    with pytest.raises(RequestError, match="queue is full") as e:
        batcher.logits(enc, None)
    assert e.value.status == 503
    first.join()


def test_over_http_each_request_gets_its_own_answer(tiny_model: Path):
    alone = Scorer.load(tiny_model, sub_batch=16)
    live = LiveScorer(tiny_model, lambda p: batched(Scorer.load(p, sub_batch=16), Batching(True, max_delay_us=300_000)))
    bodies = [{"context": c, "candidates": x, "k": len(x)} for c, x in REQUESTS]
    bodies.insert(2, {"context": REQUESTS[0][0], "candidates": [{"impression_app": "app1", "price": "cheap"}]})
    with BackgroundServer(create_app(live)) as srv:

        def post(body: dict) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                return c.post("/v1/recommend", json=body)

        answers = together(post, [(b,) for b in bodies])
    assert answers[2].status_code == 422 and answers[2].json()["error"]["field"] == "candidates[0].price"
    for (c, x), r in zip(REQUESTS, answers[:2] + answers[3:]):
        assert r.status_code == 200, r.text
        got = np.empty(len(x), np.float32)
        items = r.json()["items"]
        got[[it["index"] for it in items]] = [it["score"] for it in items]
        np.testing.assert_allclose(got, all_scores(alone, c, x), atol=1e-6, rtol=0)
    assert live.scorer.batcher.passes < len(REQUESTS)


class Slow:
    """A network that takes `seconds` per pass and records how many passes ran at once (the batcher's timing, not its
    arithmetic, is under test here)."""

    def __init__(self, network, seconds: float):
        self.network, self.seconds = network, seconds
        self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, ids, dense, lists):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return self.network(ids, dense, lists)


def test_requests_on_free_slots_are_scored_at_once_and_the_rest_share_the_next_pass(tiny_model: Path):
    scorer = Scorer.load(tiny_model, sub_batch=64)
    encoded = [scorer.features.transform_request(c, x) for c, x in REQUESTS[:5]]
    want = [scorer.encoded_logits(e) for e in encoded]
    # Two slots, two requests: each scored at once in its own pass, the two passes side by side.
    two = Batcher(scorer, Batching(True, passes=2))
    two.network = slow = Slow(scorer.network, 0.3)
    got = together(two.logits, [(e, None) for e in encoded[:2]])
    assert slow.most == 2 and two.passes == 2
    # One slot, five requests: one goes first; the four that queue behind it share the pass handed on, in order.
    one = Batcher(scorer, Batching(True, passes=1))
    one.network = slow = Slow(scorer.network, 0.3)
    alone: list = []
    first = threading.Thread(target=lambda: alone.append(one.logits(encoded[0], None)))
    first.start()
    time.sleep(0.1)  # its pass is running
    rest = together(one.logits, [(e, None) for e in encoded[1:]])
    first.join()
    assert slow.most == 1 and (one.passes, one.requests) == (2, 5)
    for w, g in zip(want[:2] + want, got + alone + rest):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
