"""The CPU's cycle counter inside jitted code, for timing the phases of a kernel.

``ticks()`` reads the time-stamp counter (``rdtsc`` on x86-64: ~20-40 cycles, no system call),
so a kernel can time pieces of a few microseconds without disturbing them. On the CPUs this
project runs on the counter ticks at a constant rate whatever the clock speed (the
``constant_tsc`` flag), so ``ticks_per_second`` converts ticks to seconds. Where LLVM has no
counter for the target it reads 0, and every phase then reads as 0 s.
"""

from __future__ import annotations

import functools
import time

from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .jit import stamped
from .simd import I64, declare


@intrinsic
def ticks(typingctx):
    """The cycle counter (int64), via LLVM's ``llvm.readcyclecounter``."""

    def codegen(context, builder, signature, args):
        return builder.call(declare(builder.module, "llvm.readcyclecounter", I64, []), [])

    return types.int64(), codegen


@njit(cache=True)
@stamped
def now() -> int:
    """``ticks()`` from Python."""
    return ticks()


@njit(inline="always", cache=True)
@stamped
def lap(marks, phase, since):
    """Add the ticks since ``since`` to ``marks[phase]`` and return the counter now; with an
    empty ``marks`` (timing off) do nothing and return ``since``."""
    if marks.size == 0:
        return since
    now_ = ticks()
    marks[phase] += now_ - since
    return now_


@njit(inline="always", cache=True)
@stamped
def start(marks):
    """The counter, where ``marks`` is recording (else 0, without reading it)."""
    return ticks() if marks.size else 0


@functools.cache
def ticks_per_second(seconds: float = 0.05) -> float:
    """The counter's rate, measured against ``time.perf_counter`` over ``seconds`` (0.0 where
    the target has no counter)."""
    now()  # compiled (or loaded) before the measurement
    t0, c0 = time.perf_counter(), now()
    while time.perf_counter() - t0 < seconds:
        pass
    t1, c1 = time.perf_counter(), now()
    return (c1 - c0) / (t1 - t0)
