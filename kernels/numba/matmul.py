"""Batched products of many small matrices, parallel over the batch.

BLAS is tuned for one large product; NumPy's broadcasting matmul calls it (or its own loop) once
per small matrix, so for shapes like (100000, 2, 3) @ (3, 4) the per-call overhead dominates.
Here each thread takes a slice of the batch and runs a register-friendly i-p-j loop.
"""

from __future__ import annotations

from numba import prange

from .jit import serial_and_parallel


def _batched_matmul(a, b, out):
    """out[t] = a[t or 0] @ b[t or 0]: a (Ba, m, k), b (Bb, k, n), out (B, m, n), Ba, Bb in {1, B}."""
    batch, m, n = out.shape
    k = a.shape[2]
    a_step = 1 if a.shape[0] > 1 else 0
    b_step = 1 if b.shape[0] > 1 else 0
    for t in prange(batch):
        left = a[t * a_step]
        right = b[t * b_step]
        result = out[t]
        for i in range(m):
            for j in range(n):
                result[i, j] = 0
            for p in range(k):
                scale = left[i, p]
                for j in range(n):
                    result[i, j] += scale * right[p, j]


batched_matmul = serial_and_parallel(_batched_matmul, fastmath={"contract"})
