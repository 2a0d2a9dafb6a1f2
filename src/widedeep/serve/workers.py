"""`widedeep serve --workers N`: N server processes forked from one that has loaded the models, on one listening socket.

Pre-fork, as gunicorn's --preload: the parent binds the socket, loads every model (checksums, weights, vocabularies) and
settles its precision once, then forks N workers. Each worker builds its own network over the loaded model (its
onnxruntime sessions: their thread pools would not survive a fork, so the parent holds none when it forks) and runs
uvicorn on the inherited socket; the kernel gives each new connection to a worker that accepts it. The imported libraries,
the model's weights, its feature vocabularies and the projection table (built once per model, network.Projection.shared)
stay shared copy-on-write (gc.freeze keeps the collector from writing to their pages); benchmarks/serve.py measures what
an extra worker costs (USS and PSS from smaps_rollup).

Not uvicorn's own --workers: it spawns fresh interpreters that each import and load everything (nothing shared), with
the app given as an import string. Not a memory-mapped weights file alone: the weights are a small part of a worker's
memory next to the libraries and the tables derived from them, which only a fork shares.

The parent only supervises: SIGTERM or SIGINT goes on to every worker as SIGTERM (each drains its connections and
flushes its logs); a worker that dies is forked again, unless it died within STARTUP_S of its start, which stops the
server (exit 1). Each worker has its own limits (the connection cap is per worker) and /metrics counters, hot reloads on
its own and writes its own log part files.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from widedeep.artifact import Model
    from widedeep.serve.scorer import Scorer

log = logging.getLogger("widedeep.serve")

STARTUP_S = 5.0  # a worker that exits sooner than this after its fork is a startup failure, not a crash to recover from
_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Preloaded:
    """Models loaded once, in the parent, for the workers forked from it; each model's precision settled there once, so
    that every worker scores alike.

    `build(model, precision)` makes a Scorer. `parent_load` is the load function for the parent's trial build of the app
    (a bad model fails there, before the fork); `worker_load` the one for the workers: a path loaded before the fork
    reuses that Model, and a model hot-reloaded later is read from disk in the precision of the first one."""

    def __init__(self, build: Callable[[Model, str], Scorer], precision: str):
        self.build, self.precision = build, precision
        self.models: dict[Path, Model] = {}
        self.precisions: dict[Path, str] = {}

    def parent_load(self, path: Path) -> Scorer:
        from widedeep.artifact import Model
        from widedeep.serve.scorer import resolve_model_dir

        root = resolve_model_dir(path)
        model = self.models.get(root) or Model.load(root)
        scorer = self.build(model, self.precision)
        self.models[root], self.precisions[root] = model, scorer.precision_report.chosen
        return scorer

    def worker_load(self, path: Path) -> Scorer:
        from widedeep.artifact import Model
        from widedeep.serve.scorer import resolve_model_dir

        root = resolve_model_dir(path)
        first = next(iter(self.precisions.values()), self.precision)
        return self.build(self.models.get(root) or Model.load(root), self.precisions.get(root, first))


def run_workers(workers: int, sock: socket.socket, serve_one: Callable[[], None]) -> int:
    """Fork `workers` processes that each run `serve_one()` (a uvicorn server on `sock`) and supervise them until
    SIGTERM or SIGINT; the exit status: 0, or 1 if a worker failed at startup."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    gc.collect()
    gc.freeze()  # what is loaded now lives for the whole run: the collector never writes to (and so copies) its pages
    children: dict[int, float] = {}  # pid -> when it was forked
    state = {"stopping": False, "failed": False}

    def stop(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not state["stopping"]:
            log.info("stopping %d workers (signal %d)", len(children), signum)
        state["stopping"] = True
        for pid in list(children):
            _kill(pid)

    def fork() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no signal between the fork and the child's own handlers
        pid = os.fork()
        if pid == 0:
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own when it starts
            _exit_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            code = 1
            try:
                serve_one()
                code = 0
            except BaseException:  # noqa: BLE001 -- logged; the parent sees the exit status
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                # Leave without running the parent's cleanup (atexit handlers, its finally blocks) a second time.
                os._exit(code)
        children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    old = {sig: signal.signal(sig, stop) for sig in _SIGNALS}
    try:
        for _ in range(workers):
            fork()
        log.info("%d workers started (pids %s)", workers, ", ".join(map(str, children)))
        while children:
            pid, status = os.wait()
            started = children.pop(pid, None)
            if started is None or state["stopping"]:
                continue
            code = os.waitstatus_to_exitcode(status)
            if time.monotonic() - started < STARTUP_S:
                log.error("worker %d exited at startup (status %d); stopping the server", pid, code)
                state["failed"] = True
                stop()
            else:
                log.warning("worker %d exited (status %d); starting another", pid, code)
                fork()
    finally:
        for pid in children:  # only on an error in the loop itself
            _kill(pid)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        sock.close()
    return 1 if state["failed"] else 0


def _exit_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux prctl PR_SET_PDEATHSIG), so that a killed
    supervisor never leaves workers serving without it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the workers outlive a killed parent


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def memory(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of a process in bytes, from /proc/<pid>/smaps_rollup (Linux)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) << 10
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}
