"""Micro-batching: concurrent requests share one call of a batched function. It knows nothing of models:
it is handed `forward(batch) -> rows`, one output row per input row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

IDLE_EXIT_S = 5.0

Forward = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[int, float], None]  # (images, seconds) after every forward pass


@dataclass
class _Request:
    pixels: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Runs the queued requests through `forward` at once, up to `max_batch` images, on its own
    threads. A batch waits for more only while a request is known to be on its way (`expect()`, e.g.
    while its images decode), and at most `max_wait_s` after its first request: a lone request runs
    at once instead of idling out the wait. Up to `concurrency` batches run at the same time; past
    that, later requests queue for the next. (A small batch's forward pass leaves cores idle between
    its many small ops; a second batch fills them: with 8 clients on 2 cores, 2 gave ~18% more
    requests/s than 1.) Its loop ends when idle, so an evicted model is not kept alive by its batcher."""

    def __init__(
        self,
        forward: Forward,
        *,
        name: str = "batch",
        max_batch: int,
        max_wait_s: float,
        concurrency: int = 1,
        on_batch: BatchObserver | None = None,
    ):
        self.forward, self.max_batch, self.max_wait_s = forward, max_batch, max_wait_s
        self.concurrency = max(1, concurrency)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._coming = 0  # requests announced by expect() and not yet queued (event-loop thread only)
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"predict-{name}")

    def expect(self) -> None:
        """A request is on its way (call `predict(..., expected=True)` or `unexpect()` later)."""
        self._coming += 1

    def unexpect(self) -> None:
        """An expected request will not come (its images failed to decode, say)."""
        self._coming = max(0, self._coming - 1)

    async def predict(self, pixels: np.ndarray, *, expected: bool = False) -> np.ndarray:
        if expected:
            self.unexpect()
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        request = _Request(pixels, loop.create_future())
        await self._queue.put(request)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await request.future

    async def _collect(self) -> list[_Request] | None:
        try:
            first = await asyncio.wait_for(self._queue.get(), IDLE_EXIT_S)
        except TimeoutError:
            return None
        batch, size = [first], len(first.pixels)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            if self._queue.empty():
                if self._coming <= 0:  # nothing on its way: waiting would only add latency
                    break
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                request = self._queue.get_nowait()
            batch.append(request)
            size += len(request.pixels)
        return batch

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await slots.acquire()
            batch = await self._collect()
            if batch is None:
                return
            task = asyncio.get_running_loop().create_task(self._forward(batch, slots))
            self._running.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._running.discard)

    async def _forward(self, batch: list[_Request], slots: asyncio.Semaphore) -> None:
        try:
            pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([request.pixels for request in batch])
            started = time.perf_counter()
            try:
                probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self.forward, pixels)
            except Exception as error:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                return
            if self.on_batch is not None:
                self.on_batch(len(pixels), time.perf_counter() - started)
            start = 0
            for request in batch:
                end = start + len(request.pixels)
                if not request.future.done():
                    request.future.set_result(probabilities[start:end])
                start = end
        finally:
            slots.release()
