"""Atomic counters for threads that cooperate inside one ``prange`` loop (LLVM atomics through
``@intrinsic``: Numba's CPU target has none).

``claim``, ``finish`` and ``wait`` make phases of tasks out of them: each phase's tasks are
claimed from a shared counter by whichever thread gets there first, and a thread waits for the
whole phase only after claiming every task left. A thread that never arrives (a ``prange`` iteration the runtime runs
late, or after the others on the same thread) therefore holds nobody up: the others run its
tasks, and it later finds them done. A task writes only to buffers chosen by its index, never
by the thread, so results do not depend on who ran what.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .jit import stamped
from .simd import declare

_X86 = llvm.get_process_triple().split("-")[0] in ("x86_64", "i386", "i686")


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """``counters[index] += value`` as one sequentially consistent atomic step; returns the value
    before (``counters`` a C-contiguous int64 array)."""
    sig = types.int64(counters, index, value)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def load(typingctx, counters, index):
    """``counters[index]``, read atomically (sequentially consistent: what a thread wrote before
    its ``fetch_add`` is visible once that add is)."""
    sig = types.int64(counters, index)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "seq_cst", 8)

    return sig, codegen


@intrinsic
def pause(typingctx):
    """The spin-wait hint (x86 ``pause``): lets the sibling hyperthread and the memory system breathe."""

    def codegen(context, builder, signature, args):
        if _X86:
            builder.call(declare(builder.module, "llvm.x86.sse2.pause", ir.VoidType(), []), [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always", cache=True)
@stamped
def claim(counters, phase):
    """The next task of ``phase`` for this thread: the phase's claim counter, then incremented."""
    return fetch_add(counters, 2 * phase, 1)


@njit(inline="always", cache=True)
@stamped
def finish(counters, phase):
    """Mark one task of ``phase`` done (after its writes). Counters: ``[2 p]`` claims of phase
    ``p``, ``[2 p + 1]`` tasks done."""
    fetch_add(counters, 2 * phase + 1, 1)


@njit(inline="always", cache=True)
@stamped
def wait(counters, phase, tasks):
    """Spin until all ``tasks`` of ``phase`` are done (every one is claimed by now, so each is
    being run by a thread that is running)."""
    while load(counters, 2 * phase + 1) < tasks:
        pause()
