"""Measure the two dispatch crossovers of the Numba backend on this machine.

1. Serial vs parallel builds of an elementwise kernel, by array size: below the crossover a
   parallel launch (waking the worker threads) costs more than it saves.
2. The shape-specialised batched-matmul kernel vs NumPy's matmul (BLAS per matrix), by matrix
   size m = k = n at a fixed total of multiply-adds.
3. The whole-step trainer's register-tiled GEMM vs single-threaded BLAS, on one thread's row
   block times a layer's (transposed) weights, by weight size.

    python benchmarks/crossover.py

The constants in kernels/numba/jit.py (PARALLEL_MIN_ELEMENTS) and kernels/numba/kernelset.py
(SMALL_MATMUL_MACS) and kernels/numba/small_gemm.py (SMALL_GEMM_MAX_BYTES) come from this
script's output.
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


def small_gemm_crossover() -> int | None:
    print("one row block @ a layer's weights (k x n), float32, one thread: JIT GEMM vs BLAS, GFLOP/s")
    from numba import njit
    from threadpoolctl import threadpool_limits

    from fastnn.kernels.numba.small_gemm import gemm

    @njit
    def jit_rounds(a, b, c, rounds):
        m, k = a.shape
        n = b.shape[1]
        for _ in range(rounds):
            gemm(a.ctypes.data, k, 1, b.ctypes.data, n, c.ctypes.data, n, m, n, k, np.float32(1))

    rng = np.random.default_rng(2)
    largest = None
    for rows in (32, 128):
        for k, n in ((64, 128), (128, 256), (256, 256), (384, 384), (512, 512), (784, 1024), (1024, 1024)):
            a, b = rng.random((rows, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
            c = np.empty((rows, n), np.float32)
            rounds = max(3, 300_000_000 // (2 * rows * k * n))
            t_jit = _best(functools.partial(jit_rounds, a, b, c, rounds), 1) / rounds
            with threadpool_limits(1, user_api="blas"):
                t_blas = _best(functools.partial(np.matmul, a, b, out=c), rounds)
            flops = 2 * rows * k * n
            if t_jit < t_blas and rows == 32:
                largest = max(largest or 0, k * n * 4)
            print(f"  {rows:>3} rows, weights {k}x{n} ({k * n * 4 // 1024:>5} KiB)  jit {flops / t_jit / 1e9:6.0f}"
                  f"  blas {flops / t_blas / 1e9:6.0f}  {'jit' if t_jit < t_blas else 'blas'} wins")
    return largest


if __name__ == "__main__":
    first_parallel = parallel_crossover()
    largest_jit = matmul_crossover()
    largest_small = small_gemm_crossover()
    print(f"parallel builds pay from {first_parallel:,} elements; "
          f"the JIT batched matmul wins up to {largest_jit:,} multiply-adds per matrix; "
          f"the trainer's JIT GEMM wins up to weights of {largest_small or 0:,} bytes")
