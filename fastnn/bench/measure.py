"""Timing: warm up, repeat, report the median with min and max so noise is visible."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


def settle() -> None:
    """Let the previous contender's thread pools go idle before the next is timed: OpenBLAS's
    workers spin for ~0.1 s after their last GEMM (measured with getrusage) and would take a
    core from whatever runs next."""
    time.sleep(0.3)


@dataclass
class Measurement:
    """One contender on one workload. ``value`` is in ``unit`` (higher is better), computed from
    the median time; ``low``/``high`` from the slowest and fastest repeats."""

    section: str
    workload: str
    contender: str
    unit: str
    value: float
    low: float
    high: float
    seconds: float
    repeats: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_time_call(cupy: Any, fn: Callable[[], Any], repeats: int, min_seconds: float = 0.02
                     ) -> tuple[float, list[float], float]:
    """Like ``time_call`` on a GPU: each round is timed with CUDA events on the stream (device
    time); the host time to enqueue a call, measured without waiting for the device, is returned
    separately as the launch overhead per call (seconds)."""
    warm, _ = time_call(fn, 0)
    cupy.cuda.Device().synchronize()
    calls = max(1, int(min_seconds / max(warm, 1e-7)))
    rounds, enqueue = [], []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        enqueue.append((time.perf_counter() - started) / calls)
        stop.record()
        stop.synchronize()
        rounds.append(cupy.cuda.get_elapsed_time(start, stop) / 1000.0 / calls)
    return warm, rounds, statistics.median(enqueue)


def time_call(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.02) -> tuple[float, list[float]]:
    """Per-call seconds of ``fn``: one warm-up call (JIT compilation, caches, first touches), then
    ``repeats`` timed rounds of as many calls as fill ``min_seconds``. Returns (warm-up seconds,
    per-call seconds of each round)."""
    if repeats == 0:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started, []
    started = time.perf_counter()
    fn()
    warm = time.perf_counter() - started
    calls = max(1, int(min_seconds / max(warm, 1e-7)))
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls)
    return warm, rounds


def measurement(section: str, workload: str, contender: str, unit: str, work: float, rounds: list[float],
                **extra: Any) -> Measurement:
    """``work`` units per call (flops, bytes, samples) divided by each round's seconds."""
    median = statistics.median(rounds)
    scale = {"GFLOP/s": 1e-9, "GB/s": 1e-9, "samples/s": 1.0}[unit]
    return Measurement(section, workload, contender, unit, work / median * scale, work / max(rounds) * scale,
                       work / min(rounds) * scale, median, len(rounds), extra)
