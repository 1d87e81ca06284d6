"""The memory roofline of the activation-backward kernels on 4096 x 1024 float32.

    python benchmarks/roofline.py

For relu and sigmoid backward it prints the Numba kernel and the NumPy backend beside the floor
of any such pass: ``c = a * b`` over the same arrays (read two, write one), on one thread and on
all. A pass that streams from memory gains over NumPy's in-place passes about (NumPy's bytes /
the fused bytes, write-allocate reads included) x (the all-thread over one-thread bandwidth of
``c = a * b``), since NumPy's ufuncs run on one thread: the "estimate" printed. Part of NumPy's
traffic can hit the L3 (its in-place passes re-read an array just written), which moves the
measured ratio above the estimate.
"""

from __future__ import annotations

import timeit

import numba
import numpy as np
from numba import njit, prange

from fastnn.backends import backend_for

SHAPE = (4096, 1024)
MB = SHAPE[0] * SHAPE[1] * 4 / 1e6
# Traffic in array-sized units: reads + writes + write-allocate reads of outputs not yet cached.
FUSED_UNITS = 4  # read dy and y, write out (+ its write-allocate read)
NUMPY_UNITS = {"relu": 7, "sigmoid": 9}  # sign + multiply; subtract + multiply + multiply


@njit(parallel=True, cache=True)
def _product(a, b, c):
    for i in prange(a.size):
        c[i] = a[i] * b[i]


def _best(fn) -> float:
    fn()
    return min(timeit.repeat(fn, number=5, repeat=7)) / 5


def main() -> dict[str, float]:
    rng = np.random.default_rng(0)
    dy, z = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    out = np.empty(SHAPE, np.float32)
    threads = numba.get_num_threads()
    results = {}
    try:
        numba.set_num_threads(1)
        results["c = a * b, 1 thread"] = _best(lambda: _product(dy.ravel(), z.ravel(), out.ravel()))
    finally:
        numba.set_num_threads(threads)
    results[f"c = a * b, {threads} threads"] = _best(lambda: _product(dy.ravel(), z.ravel(), out.ravel()))
    for name, seconds in results.items():
        print(f"{name:28s} {seconds * 1e3:7.3f} ms  {FUSED_UNITS * MB / seconds / 1e3:6.1f} GB/s")
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
