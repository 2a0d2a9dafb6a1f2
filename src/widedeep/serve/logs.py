"""The server's two logs, impressions and outcome events, as rolling Parquet files written off the request path.

A request only enqueues (`put_nowait` on a bounded queue); a background thread turns what is queued into Arrow batches
and writes a part file ``part-<UTC time>-<pid>-<seq>.parquet`` when its oldest row is `Rolling.seconds` old, when it holds
`Rolling.rows` rows or `Rolling.mb` MB, and when the server stops. Each file is published by `widedeep.atomic` (a
temporary name, then a rename), so a reader sees a whole file or none: a server killed outright loses the rows it had
not yet written, never a file. When the queue is full, rows are dropped and counted, and the request goes on as if
nothing happened. Rows of models with different features go to different files (one schema per file).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.atomic import publish_file, remove_stale
from widedeep.config import FeatureSpec
from widedeep.features.hashing import hash_string
from widedeep.serve.log_schema import EVENT_SCHEMA, IMPRESSION_FIELDS, TIME, impression_schema
from widedeep.serve.settings import LOG_QUEUE, LOG_ROLL_MB, LOG_ROLL_ROWS, LOG_ROLL_S, LOG_SAMPLE

log = logging.getLogger("widedeep.serve")

DRAIN_S = 0.25  # the writer takes what is queued this often (on a clock: a request never wakes it)


@dataclass(frozen=True)
class Rolling:
    """When a log writes its part file, and how many entries may wait: `widedeep serve`'s --log-roll-* and --log-queue."""

    seconds: float = LOG_ROLL_S  # after the oldest buffered row arrived
    rows: int = LOG_ROLL_ROWS
    mb: float = LOG_ROLL_MB  # Arrow bytes buffered
    queue: int = LOG_QUEUE  # entries (one ranking answer, or one POST of events) waiting for the writer

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"--log-roll-seconds must be > 0, got {self.seconds}")
        if not self.mb > 0:
            raise ValueError(f"--log-roll-mb must be > 0, got {self.mb}")
        for name in ("rows", "queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"--log-{'roll-rows' if name == 'rows' else name} must be >= 1, got {getattr(self, name)}")


class RollingLog:
    """One log folder. `put` enqueues an entry (never blocks); the writer thread turns entries into record batches with
    `build` and writes them in part files. `written`, `dropped` (rows) and `files` count what happened."""

    def __init__(self, folder: Path | str, build: Callable[[list[Any]], list[pa.RecordBatch]], rolling: Rolling = Rolling()):
        self.folder, self.rolling = Path(folder), rolling
        self.name = self.folder.name
        self._build = build
        self._queue: queue.Queue[tuple[Any, int]] = queue.Queue(rolling.queue)
        self._counts = threading.Lock()
        self.written = self.dropped = self.files = 0
        self._pending: dict[pa.Schema, list[pa.RecordBatch]] = {}
        self._pending_rows = self._pending_bytes = 0
        self._oldest: float | None = None  # monotonic time the oldest buffered row was taken off the queue
        self._seq = itertools.count(1)
        self._work = threading.Lock()  # held by the writer while it builds and writes; `paused` holds it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ValueError(f"{self.folder}: the log folder is not writable")

    # -- the request side ------------------------------------------------------------------------------------------------

    def put(self, entry: Any, rows: int) -> bool:
        """Queue `entry` (`rows` rows once built); False, and the rows counted as dropped, if the queue is full."""
        try:
            self._queue.put_nowait((entry, rows))
        except queue.Full:
            self._count(dropped=rows)
            return False
        return True

    # -- the writer ------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Remove what a killed writer left half-written, and start the writer thread."""
        if self._thread is not None:
            return
        remove_stale(self.folder)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"widedeep-log-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Write everything queued and buffered, then end the writer thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the %s log writer did not finish within %g s; its buffered rows are lost", self.name, timeout)
        self._thread = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer: entries stay queued (those past the queue's size are dropped) and no file is written until
        the block ends; e.g. while the folder is copied."""
        with self._work:
            yield

    def _run(self) -> None:
        # The writer wakes on a clock, not on each `put`: woken by a request, it would take the GIL just when that
        # request's answer is being sent, and hold it for up to the interpreter's switch interval (5 ms).
        while True:
            stopping = self._stop.wait(self._wait())
            items = self._take()
            with self._work:
                if items:
                    self._add(items)
                if self._pending_rows and (stopping or self._due()):
                    self._write()
            if stopping and self._queue.empty():
                return

    def _wait(self) -> float:
        if self._oldest is None:
            return DRAIN_S
        return min(DRAIN_S, max(0.0, self._oldest + self.rolling.seconds - time.monotonic()))

    def _take(self) -> list[tuple[Any, int]]:
        """Everything queued now."""
        items = []
        for _ in range(self._queue.qsize()):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _add(self, items: list[tuple[Any, int]]) -> None:
        try:
            batches = self._build([entry for entry, _ in items])
        except Exception:  # noqa: BLE001 -- a bad entry must not end the writer; its rows are counted as dropped
            log.exception("%s log: could not build the rows of %d entries; dropped", self.name, len(items))
            self._count(dropped=sum(rows for _, rows in items))
            return
        for b in batches:
            self._pending.setdefault(b.schema, []).append(b)
            self._pending_rows += b.num_rows
            self._pending_bytes += b.nbytes
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _due(self) -> bool:
        r = self.rolling
        old = self._oldest is not None and time.monotonic() - self._oldest >= r.seconds
        return old or self._pending_rows >= r.rows or self._pending_bytes >= r.mb * (1 << 20)

    def _write(self) -> None:
        pending, self._pending = self._pending, {}
        self._pending_rows = self._pending_bytes = 0
        self._oldest = None
        for schema, batches in pending.items():
            table = pa.Table.from_batches(batches, schema)
            path = self.folder / part_name(next(self._seq))
            try:
                with publish_file(path) as tmp:
                    pq.write_table(table, tmp)
            except Exception:  # noqa: BLE001 -- a full disk loses these rows, not the server
                log.exception("%s log: could not write %s; %d rows dropped", self.name, path.name, table.num_rows)
                self._count(dropped=table.num_rows)
                continue
            self._count(written=table.num_rows, files=1)

    def _count(self, written: int = 0, dropped: int = 0, files: int = 0) -> None:
        with self._counts:
            self.written += written
            self.dropped += dropped
            self.files += files


def part_name(seq: int, now: float | None = None) -> str:
    """``part-<UTC time to the microsecond>-<pid>-<seq>.parquet``: names sort by the time they were written, and the
    worker processes of one server (`--workers`), which share the log folder, never write the same name."""
    now = time.time() if now is None else now
    seconds, micros = divmod(round(now * 1e6), 1_000_000)
    return f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}.{micros:06d}Z-{os.getpid()}-{seq:06d}.parquet"


# -- impressions ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One ranking answer, as the request path hands it over: the impression rows are built from it by the writer."""

    request_id: str
    time_us: int  # when it was answered, UTC microseconds since the epoch
    model_version: str
    arm: str
    index: list[int]  # the shown candidates' positions in the request's list, best first
    score: list[float]
    context: dict[str, Any]
    shown: list[dict[str, Any]]  # the shown candidates, best first
    first: dict[str, Any]  # the request's first candidate: a field it has is read from every candidate, others from the context
    features: tuple[FeatureSpec, ...]  # the serving model's


def impression_batches(answers: list[Answer]) -> list[pa.RecordBatch]:
    """The impression rows of `answers`: one record batch per distinct feature list (a hot reload may change it)."""
    groups: dict[int, list[Answer]] = {}
    for a in answers:
        groups.setdefault(id(a.features), []).append(a)
    return [_impressions(group) for group in groups.values()]


def _impressions(answers: list[Answer]) -> pa.RecordBatch:
    schema = impression_schema(answers[0].features)
    counts = np.fromiter((len(a.index) for a in answers), np.int64, len(answers))
    n = int(counts.sum())
    owner = np.repeat(np.arange(len(answers)), counts)  # (n,) the answer each row comes from
    starts = np.cumsum(counts) - counts

    def per_answer(values: list, kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind).take(pa.array(owner))

    cols = {
        "request_id": per_answer([a.request_id for a in answers], pa.string()),
        "time": pa.array(np.fromiter((a.time_us for a in answers), np.int64, len(answers))[owner], TIME),
        "model_version": per_answer([a.model_version for a in answers], pa.string()),
        "arm": per_answer([a.arm for a in answers], pa.string()),
        "position": pa.array((np.arange(n) - starts[owner]).astype(np.int32)),
        "index": pa.array(np.fromiter(itertools.chain.from_iterable(a.index for a in answers), np.int64, n).astype(np.int32)),
        "score": pa.array(np.fromiter(itertools.chain.from_iterable(a.score for a in answers), np.float32, n)),
    }
    for field in list(schema)[len(IMPRESSION_FIELDS) :]:
        name, values = field.name, []
        for a in answers:
            if name in a.first:
                values += [c.get(name) for c in a.shown]
            else:
                values += [a.context.get(name)] * len(a.index)
        cols[name] = _feature_column(values, field.type)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _feature_column(values: list, kind: pa.DataType) -> pa.Array:
    """Feature values as received (after the request's checks: strings, integers, numbers, lists, null) cast to the
    logged type: integer tokens to their decimal strings, as the transform reads them."""
    try:
        return pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    if pa.types.is_list(kind):
        values = [None if v is None else [_token(x) for x in v] for v in values]
    elif pa.types.is_string(kind):
        values = [_token(v) for v in values]
    else:
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, kind)


def _token(v: Any) -> str | None:
    return v if v is None or isinstance(v, str) else str(v)


# -- events --------------------------------------------------------------------------------------------------------------

Event = tuple[str, int, str, int | None]  # request_id, index, type, time (UTC microseconds) or None


def event_batches(posts: list[list[Event]]) -> list[pa.RecordBatch]:
    """The event rows of several POSTs."""
    rows = [e for post in posts for e in post]
    if not rows:
        return []
    request_id, index, kind, at = zip(*rows)
    arrays = [pa.array(request_id, pa.string()), pa.array(index, pa.int32()), pa.array(kind, pa.string()), pa.array(at, TIME)]
    return [pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)]


# -- the pair a server keeps ---------------------------------------------------------------------------------------------


class ServerLogs:
    """`root`/impressions and `root`/events of one server; impressions of a `sample` share of the ranking requests
    (whole requests, chosen by a stable hash of the request id, so a replayed id is logged or not alike)."""

    def __init__(self, root: Path | str, sample: float = LOG_SAMPLE, rolling: Rolling = Rolling()):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"--log-sample must be between 0 and 1, got {sample}")
        self.root, self.sample = Path(root), sample
        # Keep a request when the hash of "sample/<id>" is below sample * 2**64 (salted: retraining's holdout split
        # hashes the bare request id, and a sampled log must not be all holdout or all training).
        self._below = None if sample >= 1.0 else int(sample * 2.0**64)
        self.impressions = RollingLog(self.root / "impressions", impression_batches, rolling)
        self.events = RollingLog(self.root / "events", event_batches, rolling)

    def __iter__(self) -> Iterator[RollingLog]:
        return iter((self.impressions, self.events))

    def check(self, features: tuple[FeatureSpec, ...]) -> None:
        """Raise (ValueError) if a model's features cannot be logged (a column named like an impression-log column)."""
        impression_schema(features)

    def answer(self, request_id: str, model_version: str, arm: str, index: list[int], score: list[float],
               context: dict[str, Any], candidates: Sequence[dict[str, Any]], features: tuple[FeatureSpec, ...]) -> None:  # fmt: skip
        """Queue the impressions of one ranking answer (if its request is sampled); never blocks, never raises."""
        if self._below is not None and hash_string("sample/" + request_id) >= self._below:
            return
        shown = [candidates[i] for i in index]
        now = time.time_ns() // 1000
        a = Answer(request_id, now, model_version, arm, index, score, context, shown, candidates[0], features)
        self.impressions.put(a, len(index))

    def post_events(self, events: list[Event]) -> bool:
        """Queue one POST's events; False if the queue is full (they are counted as dropped)."""
        return self.events.put(events, len(events))

    def start(self) -> None:
        for lg in self:
            lg.start()

    def stop(self) -> None:
        for lg in self:
            lg.stop()
