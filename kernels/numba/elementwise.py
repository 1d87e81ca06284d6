"""Fused elementwise kernels: activation forward/backward, bias + activation after a GEMM, and
the bias-gradient reduction. Arrays are C-contiguous; 2-D kernels take ``(rows, cols)`` views."""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import serial_and_parallel
from .scalar import activation, activation_backward


def _forward(z, out, alpha, code):
    """out = g(z), both 1-D."""
    for i in prange(z.size):
        out[i] = activation(code, np.float64(z[i]), alpha)


def _backward(dy, z, y, out, alpha, code):
    """out = dy * g'(z), all 1-D."""
    for i in prange(z.size):
        out[i] = activation_backward(code, np.float64(dy[i]), np.float64(z[i]), np.float64(y[i]), alpha)


def _bias_activation(z, bias, y, alpha, code):
    """One pass after the GEMM: z += bias (written back) and y = g(z); z, y (rows, cols)."""
    rows, cols = z.shape
    for i in prange(rows):
        for j in range(cols):
            v = np.float64(z[i, j]) + np.float64(bias[j])
            z[i, j] = v
            y[i, j] = activation(code, v, alpha)


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


forward = serial_and_parallel(_forward)
backward = serial_and_parallel(_backward)
bias_activation = serial_and_parallel(_bias_activation)
bias_add_inplace = serial_and_parallel(_bias_add_inplace)
column_sums = serial_and_parallel(_column_sums)
