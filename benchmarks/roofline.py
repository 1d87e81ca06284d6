"""The memory roofline of the activation-backward kernels on 4096 x 1024 float32.

    python benchmarks/roofline.py

For relu and sigmoid backward it prints the Numba kernel and the NumPy backend beside the floor
of any such pass: ``c = a * b`` over the same arrays (read two, write one), on one thread and on
all. A pass that streams from memory gains over NumPy's in-place passes about (NumPy's bytes /
the fused bytes, write-allocate reads included) x (the all-thread over one-thread bandwidth of
``c = a * b``), since NumPy's ufuncs run on one thread: the "estimate" printed. Part of NumPy's
traffic can hit the L3 (its in-place passes re-read an array just written), which moves the
measured ratio above the estimate.

The last floor line writes ``c`` with non-temporal stores (``vmovntps``: no write-allocate read,
three units instead of four), computing each 256-byte tile in a buffer that stays in L1 and then
streaming it out: how much a kernel could still gain by skipping the write-allocate read.
"""

from __future__ import annotations

import timeit

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from fastnn.backends import backend_for
from fastnn.kernels.numba import simd

SHAPE = (4096, 1024)
MB = SHAPE[0] * SHAPE[1] * 4 / 1e6
# Traffic in array-sized units: reads + writes + write-allocate reads of outputs not yet cached.
FUSED_UNITS = 4  # read dy and y, write out (+ its write-allocate read)
NUMPY_UNITS = {"relu": 7, "sigmoid": 9}  # sign + multiply; subtract + multiply + multiply


@njit(parallel=True, cache=True)
def _product(a, b, c):
    for i in prange(a.size):
        c[i] = a[i] * b[i]


TILE = 64  # floats per streamed tile: four 64-byte vectors, computed in L1


@intrinsic
def _stream_tile(typingctx, destination, source):
    """Copy ``TILE`` float32 from ``source`` to the 64-byte-aligned ``destination`` (addresses)
    with non-temporal vector stores. The stores need the alignment to be stated: a store LLVM
    cannot prove aligned is split into scalar ``movnti``, several times slower than a plain
    store (that, not the stores themselves, is what an earlier try here measured)."""

    def codegen(context, builder, signature, args):
        vector_type = ir.VectorType(ir.FloatType(), simd.lanes(ir.FloatType()))
        destination, source = (builder.inttoptr(a, vector_type.as_pointer()) for a in args)
        nontemporal = builder.module.add_metadata([ir.Constant(simd.I32, 1)])
        for k in range(TILE // vector_type.count):
            at = ir.Constant(simd.I64, k)
            value = builder.load(builder.gep(source, [at]), align=4)
            builder.store(value, builder.gep(destination, [at]), align=64).set_metadata("nontemporal", nontemporal)
        return context.get_dummy_value()

    return types.void(destination, source), codegen


@intrinsic
def _store_fence(typingctx):
    """``sfence``: the streamed stores are done before anything after it (once per thread, not
    per tile: a fence waits for the write-combining buffers to drain)."""

    def codegen(context, builder, signature, args):
        builder.call(simd.declare(builder.module, "llvm.x86.sse.sfence", ir.VoidType(), []), [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(parallel=True, cache=True)
def _product_streamed(a, b, c, threads):
    """``c = a * b``, each thread over its share of tiles, each tile computed in an L1 buffer and
    streamed out; ``c`` page-aligned and a whole number of tiles long."""
    tiles = c.size // TILE
    for thread in prange(threads):
        tile = np.empty(TILE, np.float32)
        for t in range(tiles * thread // threads, tiles * (thread + 1) // threads):
            start = t * TILE
            a_tile, b_tile = a[start:start + TILE], b[start:start + TILE]
            for i in range(TILE):
                tile[i] = a_tile[i] * b_tile[i]
            _stream_tile(c[start:].ctypes.data, tile.ctypes.data)
        _store_fence()


def _best(fn) -> float:
    fn()
    return min(timeit.repeat(fn, number=5, repeat=7)) / 5


def main() -> dict[str, float]:
    rng = np.random.default_rng(0)
    dy, z = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    out = backend_for("numpy").empty(SHAPE, np.float32)  # page-aligned, as the streamed stores need
    threads = numba.get_num_threads()
    results, units = {}, {}
    try:
        numba.set_num_threads(1)
        results["c = a * b, 1 thread"] = _best(lambda: _product(dy.ravel(), z.ravel(), out.ravel()))
    finally:
        numba.set_num_threads(threads)
    results[f"c = a * b, {threads} threads"] = _best(lambda: _product(dy.ravel(), z.ravel(), out.ravel()))
    streamed = f"c = a * b, {threads} threads, non-temporal stores"
    _product_streamed(dy.ravel(), z.ravel(), out.ravel(), threads)
    if not np.array_equal(out, dy * z):
        raise AssertionError("the streamed product is wrong")
    results[streamed] = _best(lambda: _product_streamed(dy.ravel(), z.ravel(), out.ravel(), threads))
    units[streamed] = FUSED_UNITS - 1  # no write-allocate read
    for name, seconds in results.items():
        print(f"{name:48s} {seconds * 1e3:7.3f} ms  {units.get(name, FUSED_UNITS) * MB / seconds / 1e3:6.1f} GB/s")
    bandwidth_gain = results["c = a * b, 1 thread"] / results[f"c = a * b, {threads} threads"]
    for activation in ("relu", "sigmoid"):
        times = {}
        for backend_name in ("numpy", "numba"):
            backend = backend_for(backend_name)
            y = backend.activation(activation, z)
            kernel = backend.kernels.backward[activation]
            times[backend_name] = _best(lambda: kernel(dy, z, y, out, None))  # noqa: B023
        estimate = NUMPY_UNITS[activation] / FUSED_UNITS * bandwidth_gain
        print(f"{activation} backward: NumPy {times['numpy'] * 1e3:.3f} ms, Numba {times['numba'] * 1e3:.3f} ms "
              f"= {times['numpy'] / times['numba']:.2f}x; estimate from bytes x thread bandwidth "
              f"{NUMPY_UNITS[activation] / FUSED_UNITS:.2f} x {bandwidth_gain:.2f} = {estimate:.2f}x")
        results[f"{activation} speed-up"] = times["numpy"] / times["numba"]
        results[f"{activation} estimate"] = estimate
    return results


if __name__ == "__main__":
    main()
