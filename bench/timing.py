"""Timing helpers shared by the ceilings, the seed recipe and the project's run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(
    fn: Callable[[], object], *, warmup: int = 2, calls: int = 20, max_seconds: float = 20.0, min_calls: int = 3
) -> list[float]:
    """Wall seconds of each of up to ``calls`` timed calls of ``fn()``, after ``warmup`` untimed ones.

    Stops early once ``max_seconds`` have passed and at least ``min_calls`` were timed.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < calls and (len(times) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed_threads(target: Callable[[], object], count: int) -> float:
    """Wall seconds for ``count`` threads running ``target`` at once, from the first start to the last end."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def steady_ips(epochs: Sequence[Sequence[tuple[float, int]]]) -> float:
    """Training images/s from batch-end clocks: ``epochs`` holds, per epoch, (clock, batch size) per batch.

    Each epoch's first batch is left out (it carries epoch start-up and, in the first
    epoch, graph tracing); every later batch counts from the previous batch's end to
    its own end, so input pipeline and augmentation are in, validation is out.
    """
    images, seconds = 0, 0.0
    for batches in epochs:
        for (previous, _), (clock, size) in zip(batches, batches[1:]):
            images += size
            seconds += clock - previous
    return images / seconds if seconds > 0 else float("nan")
