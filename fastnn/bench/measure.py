"""Timing: warm up, repeat, report the median with min and max so noise is visible."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


def settle() -> None:
    """Let the previous contender's thread pools go idle before the next is timed: OpenBLAS's
    workers spin for ~0.1 s after their last GEMM (measured with getrusage) and would take a
    core from whatever runs next."""
    time.sleep(0.3)


@contextlib.contextmanager
def busy_neighbour(enabled: bool = True) -> Iterator[None]:
    """A second process spinning on one CPU while the block runs (when ``enabled``): more
    runnable threads than CPUs, as on a shared machine, where threads that wait must give way
    rather than spin. The benchmarks' ``--busy`` mode."""
    process = None
    if enabled:  # it says when it spins, so that nothing is measured while it is still starting
        process = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                                   stdout=subprocess.PIPE, text=True)
        process.stdout.readline()
    try:
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()
            process.stdout.close()


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


# Another process using this much CPU (in cores, averaged over a row's timing) marks the row as
# measured on a busy machine: its figure says more about the neighbour than about the contender.
# (Half a core: in quiet full runs on this project's Intel Xeon VM, tick-based accounting put up
# to ~0.3 cores of fastnn's own threads outside process_time; a busy neighbour shows as ~1.)
BUSY_CORES = 0.5
# Repeats this far apart (slowest / fastest) mark a row as noisy.
NOISY_SPREAD = 1.5


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all CPUs have spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes kept busy around the measurements: the machine's busy CPU
    time (``/proc/stat``) minus this process's own (all its threads), over the wall time. The
    kernel counts in ticks (10 ms), so each reading spans at least ``window`` seconds, reaching
    back over earlier rows when a row is shorter than that."""

    def __init__(self, window: float = 0.5) -> None:
        self.window = window
        self.samples: list[tuple[float, float, float]] = []  # (wall, busy, own), oldest first
        self.mark()

    def mark(self) -> None:
        """Take a sample (at the start of each row)."""
        busy = _busy_cpu_seconds()
        if busy is not None:
            self.samples.append((time.perf_counter(), busy, time.process_time()))
            del self.samples[:-64]

    def cores(self) -> float | None:
        """Other processes' load, in cores, over the last ``window`` seconds or more."""
        busy = _busy_cpu_seconds()
        if busy is None or not self.samples:
            return None
        now, own = time.perf_counter(), time.process_time()
        older = [s for s in self.samples if now - s[0] >= self.window]
        wall0, busy0, own0 = older[-1] if older else self.samples[0]
        wall = now - wall0
        if wall < self.window / 2:  # too short to tell from the tick counts
            return None
        return min(os.cpu_count() or 1, max(0.0, (busy - busy0) - (own - own0)) / wall)


def flags(row: dict[str, Any]) -> list[str]:
    """Warnings a row carries: measured while other processes were busy, or with repeats far
    apart (either way its figure is not the contender's steady speed)."""
    found = []
    other = row["extra"].get("other_cores")
    if other is not None and other >= BUSY_CORES:
        found.append(f"BUSY: other processes used {other:.1f} cores")
    if row["low"] > 0 and row["high"] / row["low"] >= NOISY_SPREAD:
        found.append(f"NOISY: repeats {row['high'] / row['low']:.1f}x apart")
    return found
