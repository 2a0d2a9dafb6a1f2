"""WorkThreads: results and errors reach the awaiting request; a job stuck in its thread never holds up the next one; at
most `size` threads; close ends them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from widedeep.serve.handoff import WorkThreads


def test_results_errors_and_a_stuck_job():
    threads = WorkThreads(3, "test-work")
    gate = threading.Event()

    async def main():
        stuck = threads.run(lambda _: gate.wait(10), None)
        assert await threads.run(lambda x: x * 2, 21) == 42  # answered while the first job is stuck
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda x: 1 / x, 0)
        assert not stuck.done()
        gate.set()
        assert await stuck is True
        results = await asyncio.gather(*(threads.run(lambda x: x + 1, i) for i in range(20)))
        assert results == list(range(1, 21))
        names = await asyncio.gather(*(threads.run(lambda _: threading.current_thread().name, None) for _ in range(10)))
        assert set(names) <= {"test-work-0", "test-work-1", "test-work-2"}

    asyncio.run(main())
    assert len(threads._threads) <= 3
    threads.close()
    for t in threads._threads:
        t.join(5)
        assert not t.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(_run_one(threads))


async def _run_one(threads: WorkThreads):
    return await threads.run(lambda x: x, 1)
