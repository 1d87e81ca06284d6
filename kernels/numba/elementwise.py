"""Fused elementwise kernels: activation forward/backward, bias + activation after a GEMM, and
the bias-gradient reduction. Arrays are C-contiguous; 2-D kernels take ``(rows, cols)`` views.

Activation kernels are specialised per activation: each table entry is built with that
activation's own scalar function (``scalar.FORWARD[code]``) as ``g``, so the loop holds no
switch and vectorises (a run-time switch over ten activations does not)."""

from __future__ import annotations

from numba import prange

from .jit import serial_and_parallel
from .scalar import BACKWARD, CODES, FORWARD

# ``g`` and ``g_backward``: the activation of one table entry. Each entry's builds read them as
# globals of their own (``serial_and_parallel(..., bind=...)``), not as closure cells: Numba's
# on-disk cache key pickles closure cells, and a jitted function pickles differently in every
# process, so a closure over one never loaded from the cache.
g, g_backward = FORWARD[0], BACKWARD[0]


def _forward(z, out, alpha):
    """out = g(z), both 1-D; alpha has z's type."""
    for i in prange(z.size):
        out[i] = g(z[i], alpha)


def _backward(dy, z, y, out, alpha):
    """out = dy * g'(z), all 1-D."""
    for i in prange(z.size):
        out[i] = g_backward(dy[i], z[i], y[i], alpha)


def _bias_activation(z, bias, y, alpha):
    """One pass after the GEMM: z += bias (written back) and y = g(z); z, y (rows, cols)."""
    rows, cols = z.shape
    for i in prange(rows):
        for j in range(cols):
            v = z[i, j] + bias[j]
            z[i, j] = v
            y[i, j] = g(v, alpha)


def _bias_add_inplace(z, bias):
    rows, cols = z.shape
    for i in prange(rows):
        for j in range(cols):
            z[i, j] += bias[j]


def _column_sums(dz, out):
    """out[j] = sum_i dz[i, j], parallel over blocks of columns and summed down the rows in a
    fixed order, so the result does not depend on the thread count."""
    rows, cols = dz.shape
    block = 64
    for b in prange((cols + block - 1) // block):
        start = b * block
        stop = min(start + block, cols)
        for j in range(start, stop):
            out[j] = 0
        for i in range(rows):
            for j in range(start, stop):
                out[j] += dz[i, j]


def _table(kernel):
    return {name: serial_and_parallel(kernel, suffix=name, bind={"g": FORWARD[code], "g_backward": BACKWARD[code]})
            for code, name in enumerate(CODES)}


forward = _table(_forward)
backward = _table(_backward)
bias_activation = _table(_bias_activation)
bias_add_inplace = serial_and_parallel(_bias_add_inplace)
column_sums = serial_and_parallel(_column_sums)
