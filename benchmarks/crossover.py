"""Measure the two dispatch crossovers of the Numba backend on this machine.

1. Serial vs parallel builds of an elementwise kernel, by array size: below the crossover a
   parallel launch (waking the worker threads) costs more than it saves.
2. The shape-specialised batched-matmul kernel vs NumPy's matmul (BLAS per matrix), by matrix
   size m = k = n at a fixed total of multiply-adds.

    python benchmarks/crossover.py

The constants in kernels/numba/jit.py (PARALLEL_MIN_ELEMENTS) and kernels/numba/kernelset.py
(SMALL_MATMUL_MACS) come from this script's output.
"""

from __future__ import annotations

import functools
import timeit

import numpy as np

from fastnn.kernels.numba import elementwise, matmul


def _best(fn, number):
    fn()
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def parallel_crossover() -> int | None:
    print("elementwise (sigmoid backward, float32): serial vs parallel build")
    serial, parallel = elementwise.backward["sigmoid"]
    rng = np.random.default_rng(0)
    first = None
    for power in range(10, 23):
        n = 1 << power
        dy, z = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
        args = (dy, z, z, np.empty_like(z), np.float32(0))
        number = max(10, 2_000_000 // n)
        t_serial = _best(functools.partial(serial, *args), number)
        t_parallel = _best(functools.partial(parallel, *args), number)
        wins = t_parallel < t_serial
        first = first if first is not None or not wins else n
        print(f"  {n:>9,} elements  serial {t_serial * 1e6:9.1f} us  parallel {t_parallel * 1e6:9.1f} us"
              f"  {'parallel' if wins else 'serial'} wins")
    return first


def matmul_crossover(total_macs: int = 1 << 24) -> int | None:
    print(f"batched matmul, float32, {total_macs:,} multiply-adds in all: JIT kernel vs NumPy")
    rng = np.random.default_rng(1)
    last_jit = None
    for size in (2, 4, 8, 12, 16, 24, 32, 48, 64):
        batch = max(1, total_macs // size**3)
        a = rng.random((batch, size, size), dtype=np.float32)
        b = rng.random((batch, size, size), dtype=np.float32)
        out = np.empty_like(a)
        _, parallel = matmul.batched_matmul(size, size, size)
        t_jit = _best(functools.partial(parallel, a, b, out), 5)
        t_numpy = _best(functools.partial(np.matmul, a, b, out=out), 5)
        if t_jit < t_numpy:
            last_jit = size**3
        print(f"  {size:>3}x{size:<3} x {batch:>7,}  jit {t_jit * 1e3:8.2f} ms  numpy {t_numpy * 1e3:8.2f} ms"
              f"  {'jit' if t_jit < t_numpy else 'numpy'} wins")
    return last_jit


if __name__ == "__main__":
    first_parallel = parallel_crossover()
    largest_jit = matmul_crossover()
    print(f"parallel builds pay from {first_parallel:,} elements; "
          f"the JIT batched matmul wins up to {largest_jit:,} multiply-adds per matrix")
