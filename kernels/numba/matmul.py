"""Batched products of many small matrices, parallel over the batch.

BLAS is tuned for one large product; NumPy's broadcasting matmul calls it (or its own loop) once
per small matrix, so for shapes like (100000, 2, 3) @ (3, 4) the per-call overhead dominates.
Here each thread takes a slice of the batch, and the kernel is specialised on the matrix shape
``(m, k, n)``: with the loop bounds compile-time constants LLVM unrolls them completely and keeps
the accumulators in registers (a generic-shape kernel measured 15x slower on 8x16x8).
Each shape compiles once (cached on disk); only small shapes come here (``kernelset``).
"""

from __future__ import annotations

import functools

from numba import prange

from .jit import serial_and_parallel
from .scalar import like


def _batched_matmul(m: int, k: int, n: int):
    def batched_matmul(a, b, out):
        """out[t] = a[t or 0] @ b[t or 0]: a (Ba, m, k), b (Bb, k, n), out (B, m, n), Ba, Bb in {1, B}."""
        batch = out.shape[0]
        a_step = 1 if a.shape[0] > 1 else 0
        b_step = 1 if b.shape[0] > 1 else 0
        for t in prange(batch):
            ta, tb = t * a_step, t * b_step
            for i in range(m):
                for j in range(n):
                    acc = like(out[0, 0, 0], 0.0)
                    for p in range(k):
                        acc += a[ta, i, p] * b[tb, p, j]
                    out[t, i, j] = acc

    return batched_matmul


@functools.lru_cache(maxsize=64)
def batched_matmul(m: int, k: int, n: int):
    """(serial, parallel) builds for (m, k) @ (k, n) matrices."""
    return serial_and_parallel(_batched_matmul(m, k, n), suffix=f"{m}x{k}x{n}", fastmath={"contract"})
