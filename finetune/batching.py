"""Micro-batching: concurrent prediction requests for one model share one forward pass."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

IDLE_EXIT_S = 5.0


@dataclass
class _Request:
    pixels: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Waits at most `max_wait_s` after the first request for more, up to `max_batch` images, then
    runs them through the predictor at once on its own thread. Its loop ends when idle, so an
    evicted model is not kept alive by its batcher."""

    def __init__(self, predictor, *, max_batch: int, max_wait_s: float):
        self.predictor, self.max_batch, self.max_wait_s = predictor, max_batch, max_wait_s
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{predictor.model_id}")

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
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
        except asyncio.TimeoutError:
            return None
        batch, size = [first], len(first.pixels)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                request = self._queue.get_nowait()
            batch.append(request)
            size += len(request.pixels)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._collect()) is not None:
            pixels = np.concatenate([request.pixels for request in batch])
            try:
                probabilities = await loop.run_in_executor(self._executor, self.predictor.predict_pixels, pixels)
            except Exception as error:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            start = 0
            for request in batch:
                end = start + len(request.pixels)
                if not request.future.done():
                    request.future.set_result(probabilities[start:end])
                start = end
