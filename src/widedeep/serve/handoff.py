"""The threads that run the ranking routes' work (parse, check, score) off the event loop.

A request's work goes to an idle thread, or to a new one while fewer than `size` run (else it waits its turn). The thread
hands the outcome to the event loop in one call and goes straight back to wait for the next: the event loop, woken by
that call, then finds the GIL free. (concurrent.futures' pool runs a few dozen lines of Python after the work, holding
the GIL while the woken event loop waits for it, and asyncio's run_in_executor chains two futures through three
callbacks.)
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[[Any], Any], Any]


class WorkThreads:
    """Up to `size` daemon threads named `name`-N, started as the work needs them."""

    def __init__(self, size: int, name: str):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.name = size, name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._closed = False

    def run(self, work: Callable[[Any], T], arg: Any) -> asyncio.Future[T]:
        """`work(arg)` on one of the threads; a future of the running event loop that gets its result or exception."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the work threads are closed")
            if self._idle:
                self._idle -= 1  # taken: the next job starts a thread unless another one is idle
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._jobs.put((loop, done, work, arg))
        return done

    def close(self) -> None:
        """Let every thread end once it finishes its job (jobs not yet started are dropped)."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, done, work, arg = job
            out, error = None, None
            try:
                out = work(arg)
            except BaseException as e:  # noqa: BLE001 -- raised again in the request that awaits it
                error = e
            _hand(loop, done, out, error)
            del job, done, arg, out, error  # the event loop holds them now, and frees them there
            with self._lock:
                self._idle += 1


def _hand(loop: asyncio.AbstractEventLoop, done: asyncio.Future, out: Any, error: BaseException | None) -> None:
    try:
        loop.call_soon_threadsafe(_settle, done, out, error)
    except RuntimeError:  # the event loop has closed: nobody waits for the answer
        pass


def _settle(done: asyncio.Future, out: Any, error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(out)
