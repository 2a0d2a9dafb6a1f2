"""Cross-request batching: the candidates of ranking requests that wait together are scored in one pass of the network.

As TF Serving's batcher and Triton's dynamic batcher, with a bounded queue. Each request is parsed and transformed in its
own thread and then queued. Up to `passes` passes run at once: a thread that finds a slot free scores at once what is
waiting (first come first, up to `max_candidates` rows; a larger request goes alone), its own request among them, and
hands each request its own logits; the others wait in the queue, and a finishing pass wakes the thread of the first of
them, which takes every request that has queued meanwhile (unless a thread already running takes the slot first). A
waiting thread is woken only with its answer or to score the next pass. A lone request is scored at once on its own
thread, exactly as without batching. `max_delay_us` is how long a pass waits for more requests before it starts (the
default 0 never waits). Past `max_queue` waiting requests a request is refused with 503 (try again).

One pass at a time by default: a server process is bound by the interpreter lock (parsing, the feature transform and
the HTTP layer hold it; one process keeps about one of two cores busy), so a second pass beside the first only contends
for it and leaves fewer requests to share a pass (measured 0.86-0.92x the throughput of one pass, 200 candidates, 4
clients, 2 cores). More cores are used by `widedeep serve --workers`.

Each request keeps its own context: the context half of the first MLP layer (W_u u + b, network.ContextHalf) is computed
per request and broadcast to that request's rows only. Requests whose contexts name different columns (a different
ContextHalf) go in separate passes. A pass that fails is retried request by request, so one request's error stays its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from widedeep.batch import pad_ragged
from widedeep.serve.errors import RequestError
from widedeep.serve.network import ContextHalf, TorchNetwork
from widedeep.serve.settings import BATCH_QUEUE, BATCHING, MAX_BATCH_CANDIDATES, MAX_QUEUE_DELAY_US

if TYPE_CHECKING:
    from widedeep.features.encoded import Encoded
    from widedeep.serve.scorer import Scorer


@dataclass(frozen=True)
class Batching:
    """How `widedeep serve` batches across requests (--batching, --max-batch-candidates, --max-queue-delay-us, --batch-queue)."""

    enabled: bool = BATCHING == "on"
    max_candidates: int = MAX_BATCH_CANDIDATES  # rows in one pass (a request with more is scored alone)
    max_delay_us: int = MAX_QUEUE_DELAY_US  # wait this long for more requests before a pass; 0: never wait
    max_queue: int = BATCH_QUEUE  # requests waiting to be scored; more get 503
    passes: int = 1  # passes running at once (one: see the module)

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_queue", "passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_delay_us < 0:
            raise ValueError(f"max_delay_us must be >= 0, got {self.max_delay_us}")


@dataclass(eq=False)
class _Waiting:
    """One request's encoded rows in the queue, and its answer once scored."""

    ids: np.ndarray  # (n, S) int64
    dense: np.ndarray  # (n, C) float32
    lists: list[np.ndarray]  # (n, L_j) int64, 0-padded
    context_columns: frozenset[str] | None  # the input columns its context holds (None: every row on its own)
    wake: threading.Condition  # its thread waits here: for its answer, or for a free pass slot at the queue's head
    logits: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def rows(self) -> int:
        return len(self.ids)


class Batcher:
    """Scores the encoded requests of concurrent threads in shared passes of `scorer`'s network (see the module)."""

    def __init__(self, scorer: Scorer, batching: Batching = Batching()):
        self.scorer, self.batching = scorer, batching
        self.network = scorer.network
        self._list_slots = tuple(scorer.features.list_slots)
        self._lock = threading.Lock()
        self._filling = threading.Condition(self._lock)  # a pass waiting max_delay_us for more requests
        self._queue: deque[_Waiting] = deque()  # requests no pass has taken yet, first come first
        self.max_passes = batching.passes
        self._running = 0  # passes being scored now
        self._pool = ThreadPoolExecutor(scorer.threads - 1, thread_name_prefix="widedeep-batch") if scorer.threads > 1 else None
        self.passes = self.requests = 0  # so far; requests / passes is the mean number of requests in a pass

    def logits(self, enc: Encoded, context_columns: frozenset[str] | None) -> np.ndarray:
        """Logits (N,) of one request's encoded rows, scored in a pass shared with the requests waiting beside it.

        A thread that finds a pass slot free scores a pass at once; else its request waits in the queue until a pass
        takes it (its thread is woken with its answer) or it is the queue's head when a pass ends (its thread is woken
        to take the freed slot, unless a thread already running takes it first: no slot waits for a thread that the
        kernel has not scheduled yet)."""
        item = _Waiting(
            np.ascontiguousarray(enc.ids, dtype=np.int64),
            np.ascontiguousarray(enc.dense, dtype=np.float32),
            [pad_ragged(*enc.lists[name]) for name in self._list_slots],
            context_columns,
            threading.Condition(self._lock),
        )
        with self._lock:
            if len(self._queue) >= self.batching.max_queue:
                raise RequestError("", f"the scoring queue is full ({self.batching.max_queue} requests); try again", 503)
            self._queue.append(item)
            if self._running >= self.max_passes and self.batching.max_delay_us:
                self._filling.notify_all()  # a pass waiting to fill sees the new rows
            while not item.done:
                if self._running >= self.max_passes:
                    item.wake.wait()
                    continue
                self._running += 1
                batch: list[_Waiting] = []
                try:
                    batch = self._take()
                    self._lock.release()
                    try:
                        self._score(batch)
                    finally:
                        self._lock.acquire()
                        for waiting in batch:
                            waiting.done = True
                            waiting.wake.notify()
                        self.passes += bool(batch)
                        self.requests += len(batch)
                finally:
                    self._running -= 1
                    if self._queue:
                        self._queue[0].wake.notify()  # the next pass's first request
                if not batch and not item.done:
                    item.wake.wait()  # a pass beside this one took this request: its thread wakes this one
        if item.error is not None:
            raise item.error
        if item.logits is None:
            raise RuntimeError(f"batched pass ended without scores for a request of {item.rows} rows (pass {self.passes})")
        return item.logits

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- one pass ----------------------------------------------------------------------------------------------------

    def _take(self) -> list[_Waiting]:
        """The requests of the next pass, first come first, up to max_candidates rows; with max_delay_us, first wait
        that long for the queue to fill. Empty if the queue is (a pass beside this one took what waited). Called
        holding the lock."""
        limit = self.batching.max_candidates
        if self.batching.max_delay_us:
            deadline = time.monotonic() + self.batching.max_delay_us / 1e6
            while sum(w.rows for w in self._queue) < limit and (left := deadline - time.monotonic()) > 0:
                self._filling.wait(left)
        if not self._queue:
            return []
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= limit:
            rows += self._queue[0].rows
            batch.append(self._queue.popleft())
        return batch

    def _score(self, batch: list[_Waiting]) -> None:
        """Set each request's logits (or error): one pass per context half, request by request if a pass fails."""
        groups: dict[int, tuple[ContextHalf | None, list[_Waiting]]] = {}
        for item in batch:
            try:
                half = self._half(item)
            except Exception as e:  # noqa: BLE001 -- the request's own error
                item.error = e
                continue
            groups.setdefault(id(half), (half, []))[1].append(item)
        for half, items in groups.values():
            try:
                out = self._pass(half, items)
            except Exception as e:  # noqa: BLE001 -- retried alone below, so only a failing request fails
                if len(items) == 1:
                    items[0].error = e
                    continue
                for item in items:
                    try:
                        item.logits = self._pass(half, [item])
                    except Exception as e1:  # noqa: BLE001
                        item.error = e1
                continue
            bounds = np.cumsum([0] + [item.rows for item in items])
            for item, a, b in zip(items, bounds[:-1], bounds[1:]):
                item.logits = out[a:b]

    def _half(self, item: _Waiting) -> ContextHalf | None:
        """The split first layer for this request, as Scorer._logits chooses it (None: each row scored on its own)."""
        cols = item.context_columns
        if not (self.scorer.context_half and cols and item.rows > 1 and isinstance(self.network, TorchNetwork)):
            return None
        return self.network.context_half(cols)

    def _pass(self, half: ContextHalf | None, items: Sequence[_Waiting]) -> np.ndarray:
        """Logits of the rows of `items` in request order, the context term of each request broadcast to its own rows."""
        ids, dense, lists = _concat(items, len(self._list_slots))
        n = len(ids)
        net = self.network
        ctx: torch.Tensor | None = None  # W_u u + b: (1, H) for one request, (n, H) for several; None: the pass finds it
        if half is not None and len(items) > 1:
            rows = np.array([it.rows for it in items])
            terms = net.context_term(half, ids, dense, lists, np.cumsum(rows) - rows)  # (R, H): one per request, at once
            ctx = terms.repeat_interleave(torch.from_numpy(rows), dim=0)  # (n, H)
        parts = min(self.scorer.threads, math.ceil(n / self.scorer.sub_batch))
        size = math.ceil(n / parts)
        if half is not None and ctx is None and parts > 1:
            ctx = net.context_term(half, ids, dense, lists)  # one request over several parts: its term once

        def run(a: int, b: int) -> np.ndarray:
            sub = [x[a:b] for x in lists]
            if half is None:
                return net(ids[a:b], dense[a:b], sub)
            rows = ctx if ctx is None or len(ctx) == 1 else ctx[a:b]
            return net.with_context(half, rows, ids[a:b], dense[a:b], sub)

        if parts == 1 or self._pool is None:
            return run(0, n) if parts == 1 else np.concatenate([run(a, min(a + size, n)) for a in range(0, n, size)])
        futures = [self._pool.submit(run, a, min(a + size, n)) for a in range(size, n, size)]
        return np.concatenate([run(0, size)] + [f.result() for f in futures])


def batched(scorer: Scorer, batching: Batching = Batching()) -> Scorer:
    """`scorer`, its ranking and scoring passes shared between concurrent requests as `batching` says (unchanged if off)."""
    if batching.enabled:
        scorer.batcher = Batcher(scorer, batching)
    return scorer


def _concat(items: Sequence[_Waiting], n_lists: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The rows of several requests stacked; list slots right-padded with id 0 to the widest request's width (id 0 is
    the padding every pooling ignores, so the padding changes no score)."""
    if len(items) == 1:
        return items[0].ids, items[0].dense, items[0].lists
    ids = np.concatenate([it.ids for it in items])
    dense = np.concatenate([it.dense for it in items])
    lists = []
    for j in range(n_lists):
        blocks = [it.lists[j] for it in items]
        width = max(b.shape[1] for b in blocks)
        out = np.zeros((len(ids), width), dtype=np.int64)
        at = 0
        for b in blocks:
            out[at : at + len(b), : b.shape[1]] = b
            at += len(b)
        lists.append(out)
    return ids, dense, lists
