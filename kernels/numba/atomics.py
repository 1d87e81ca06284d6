"""Atomic counters for threads that cooperate inside one ``prange`` loop (LLVM atomics through
``@intrinsic``: Numba's CPU target has none).

``claim``, ``finish`` and ``wait`` make phases of tasks out of them. A phase is one row of an
int64 array, ``[tasks done, claimed flag of task 0, of task 1, ...]``. Each thread tries its own
task first and then the others, and runs the ones it claims; it waits for the whole phase only
after trying all of them. A thread that does not come (a ``prange`` iteration the runtime starts
late, or runs after the others on the same thread) therefore holds nobody up: the others run
its tasks, and it later finds them done. A task writes only to buffers chosen by its index,
never by the thread, so results do not depend on who ran what; trying its own task first keeps
a thread on the same buffers from one batch to the next while both are on time.
"""

from __future__ import annotations

import ctypes

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .jit import stamped
from .simd import declare

_X86 = llvm.get_process_triple().split("-")[0] in ("x86_64", "i386", "i686")


def _register_sched_yield() -> bool:
    """Make the C library's ``sched_yield`` known to the JIT's linker by name (also for code
    loaded from the cache); False where there is none (Windows: waiting then only spins)."""
    try:
        address = ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError, TypeError):
        return False
    llvm.add_symbol("sched_yield", address)
    return True


_SCHED_YIELD = _register_sched_yield()
# Pauses before a waiting thread starts handing its CPU back to the OS: ~27 us here (a pause is
# ~27 ns on these CPUs), about a digits step, so that with a CPU to itself it does not give way,
# while with more runnable threads than CPUs the thread it waits for gets to run (spinning only,
# a digits fit beside one busy process ran at half the speed of the old fork-join kernel: 0.57M
# vs 1.12M samples/s; spin then yield: 1.16M).
SPINS_BEFORE_YIELD = 1000


def _counters(counters, *integers) -> bool:
    """The operands the intrinsics are written for: an int64 C array and int64 scalars."""
    return (isinstance(counters, types.Array) and counters.dtype == types.int64 and counters.ndim == 1
            and counters.layout == "C" and all(value == types.int64 for value in integers))


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """``counters[index] += value`` as one sequentially consistent atomic step; returns the value
    before."""
    if not _counters(counters, index, value):
        return None
    sig = types.int64(counters, index, value)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def load(typingctx, counters, index):
    """``counters[index]``, read atomically (sequentially consistent: what a thread wrote before
    its ``fetch_add`` is visible once that add is)."""
    if not _counters(counters, index):
        return None
    sig = types.int64(counters, index)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "seq_cst", 8)

    return sig, codegen


def _emit_pause(builder) -> None:
    if _X86:
        builder.call(declare(builder.module, "llvm.x86.sse2.pause", ir.VoidType(), []), [])


@intrinsic
def pause(typingctx):
    """The spin-wait hint (x86 ``pause``): lets the sibling hyperthread and the memory system breathe."""

    def codegen(context, builder, signature, args):
        _emit_pause(builder)
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def yield_cpu(typingctx):
    """``sched_yield()``: let another runnable thread have this CPU (a ``pause`` where the C
    library has no ``sched_yield``)."""

    def codegen(context, builder, signature, args):
        if _SCHED_YIELD:
            builder.call(declare(builder.module, "sched_yield", ir.IntType(32), []), [])
        else:
            _emit_pause(builder)
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always", cache=True)
@stamped
def claim(phase, task):
    """True if this thread is the first to claim ``task`` of ``phase`` (then it must run it)."""
    return fetch_add(phase, 1 + task, 1) == 0


@njit(inline="always", cache=True)
@stamped
def finish(phase):
    """Mark one task of ``phase`` done (after its writes)."""
    fetch_add(phase, 0, 1)


@njit(inline="always", cache=True)
@stamped
def wait(phase, tasks):
    """Wait until all ``tasks`` of ``phase`` are done (every one is claimed by now, so each is
    being run by a thread that is running): spin, then yield the CPU between looks."""
    spins = 0
    while load(phase, 0) < tasks:
        if spins < SPINS_BEFORE_YIELD:
            pause()
            spins += 1
        else:
            yield_cpu()
