"""Continuous batching (serving/batching.py), without Ray: batches form from whatever is queued when a slot
frees, a lone call never waits, and errors reach only the callers they belong to."""

import asyncio

import pytest

from lmrec.serving.coalesce import BatchConfig, Coalescer


class Recorder:
    """A batch function that takes ``delay`` seconds and records the batches it saw."""

    def __init__(self, delay: float = 0.01):
        self.batches: list[list] = []
        self.delay = delay
        self.running = self.peak = 0

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return [ValueError(f"bad {x}") if isinstance(x, int) and x < 0 else x * 10 for x in items]


def test_a_lone_call_goes_at_once():
    async def main():
        fn = Recorder(delay=0)
        co = Coalescer(fn, max_batch_size=8, max_concurrent_batches=2)
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert await co(3) == 30
        return fn.batches, loop.time() - t

    batches, took = asyncio.run(main())
    assert batches == [[3]] and took < 0.05  # no timer to wait out


def test_batches_grow_with_the_queue_and_keep_order():
    async def main():
        fn = Recorder(delay=0.02)
        co = Coalescer(fn, max_batch_size=16, max_concurrent_batches=2)
        results = await asyncio.gather(*(co(i) for i in range(40)))
        return fn, results

    fn, results = asyncio.run(main())
    assert results == [i * 10 for i in range(40)]
    # the first two calls take the two slots alone; the rest queue and leave in batches of up to 16
    assert [len(b) for b in fn.batches] == [1, 1, 16, 16, 6]
    assert [x for b in fn.batches for x in b] == list(range(40))
    assert fn.peak == 2


def test_an_item_error_reaches_its_caller_only():
    async def main():
        co = Coalescer(Recorder(), max_batch_size=8, max_concurrent_batches=1)
        return await asyncio.gather(co(1), co(-2), co(3), return_exceptions=True)

    one, two, three = asyncio.run(main())
    assert one == 10 and three == 30
    assert isinstance(two, ValueError) and str(two) == "bad -2"


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = []

    async def flaky(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("stage down")
        return [x + 1 for x in items]

    async def main():
        co = Coalescer(flaky, max_batch_size=8, max_concurrent_batches=1)
        first = asyncio.gather(co(1), return_exceptions=True)
        await asyncio.sleep(0)  # the first batch leaves alone
        rest = asyncio.gather(co(2), co(3), return_exceptions=True)
        return await first, await rest

    first, rest = asyncio.run(main())
    assert isinstance(first[0], RuntimeError) and "stage down" in str(first[0])
    assert rest == [3, 4] and calls == [[1], [2, 3]]


def test_a_wrong_number_of_results_is_an_error_not_a_hang():
    async def short(items):
        return items[:-1]

    async def main():
        co = Coalescer(short, max_batch_size=4, max_concurrent_batches=1)
        return await asyncio.wait_for(asyncio.gather(co(1), co(2), return_exceptions=True), 5)

    errors = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "0 results for 1 items" in str(e) for e in errors)


def test_a_caller_that_gave_up_is_left_out_of_the_batch():
    async def main():
        fn = Recorder(delay=0.02)
        co = Coalescer(fn, max_batch_size=8, max_concurrent_batches=1)
        first = asyncio.ensure_future(co(1))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(co(2))
        kept = asyncio.ensure_future(co(3))
        await asyncio.sleep(0)
        gone.cancel()
        return fn, await first, await kept

    fn, first, kept = asyncio.run(main())
    assert (first, kept) == (10, 30) and fn.batches == [[1], [3]]


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_concurrent_batches"):
        BatchConfig(max_concurrent_batches=0)
    with pytest.raises(ValueError, match="extra"):
        BatchConfig(batch_size=8)
    with pytest.raises(ValueError, match=">= 1"):
        Coalescer(Recorder(), max_batch_size=0)
