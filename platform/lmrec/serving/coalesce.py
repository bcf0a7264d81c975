"""Continuous batching (coalescing) of concurrent requests, for the hops between deployments.

A call to another deployment costs milliseconds of CPU here whatever its payload (router, gRPC,
serialisation, the replica's request bookkeeping), so the ingress sends the stages *batches* of
requests: one call per stage per batch, not per request.

Unlike ``@serve.batch`` there is no timer. A batch leaves as soon as one of ``max_concurrent_batches``
slots is free, carrying everything queued by then (up to ``max_batch_size``): a lone request goes at once,
and under load the batches grow with the queue. (``@serve.batch`` with a zero wait sends whatever is queued
when its loop next runs, mostly batches of one or two; with a wait, every request pays it.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
R = TypeVar("R")


class BatchConfig(BaseModel):
    """The ingress's ``user_config``: how requests are batched through the stages."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=1024)
    # batches in flight at once: 2 keeps every stage busy while the next batch queues (1 gave the largest
    # batches but left stages idle between them)
    max_concurrent_batches: int = Field(2, ge=1, le=64)


class Coalescer(Generic[T, R]):
    """``await coalescer(item)`` -> the result for ``item`` of ``fn(batch)``.

    ``fn`` takes a list of items and returns a list of the same length; an entry that is an exception is
    raised to that item's caller only, an exception raised by ``fn`` to every caller in the batch."""

    def __init__(self, fn: Callable[[list[T]], Awaitable[list[R]]], max_batch_size: int = BatchConfig().max_batch_size,
                 max_concurrent_batches: int = BatchConfig().max_concurrent_batches):
        if max_batch_size < 1 or max_concurrent_batches < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and max_concurrent_batches ({max_concurrent_batches}) must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: deque[tuple[T, asyncio.Future]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task] = set()  # strong references until done

    async def __call__(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._running < self.max_concurrent_batches and self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            batch = [(item, f) for item, f in batch if not f.cancelled()]  # the client went away while queued
            if not batch:
                continue
            self._running += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            results = await self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 (every waiting caller gets it; nothing is left hanging)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._dispatch()
