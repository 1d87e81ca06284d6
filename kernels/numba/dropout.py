"""Inverted dropout with the Philox4x32-10 mask of ``kernels/numpy/dropout.py``, bit for bit:
the same integer arithmetic, one group of four elements per loop iteration, parallel over groups."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numpy.dropout import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from .jit import serial_and_parallel

_M0, _M1, _W0, _W1 = (np.uint64(v) for v in (PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1))
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


@njit(inline="always", cache=True)
def philox4(group, step, seed):
    """All four words of Philox4x32-10 with counter (group, step) and key seed (all uint64)."""
    c0, c1 = group & _LOW, group >> _SHIFT
    c2, c3 = step & _LOW, step >> _SHIFT
    k0, k1 = seed & _LOW, seed >> _SHIFT
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _LOW, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _LOW
        k0 = (k0 + _W0) & _LOW
        k1 = (k1 + _W1) & _LOW
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def masked_copy(y, out, keep, first, seed, step, threshold, scale):
    """``out = y * m`` for the flat ``y`` whose first element is element ``first`` of the layer's
    output, ``m`` the mask ``_dropout`` draws for those elements (0 or ``scale``), one Philox call
    per group of four; ``keep`` (uint8) records which were kept, one byte each, for the backward
    (no float mask is stored). For the whole-step trainer, whose threads each hold a block of the
    batch's rows."""
    n = y.size
    zero = scale - scale
    e = 0
    while e < n:
        index = np.uint64(first + e)
        words = philox4(index >> np.uint64(2), step, seed)
        for j in range(int(index & np.uint64(3)), 4):
            if e >= n:
                break
            kept = words[j] >= threshold
            keep[e] = kept
            out[e] = y[e] * (scale if kept else zero)
            e += 1


def _dropout(x, out, seed, step, threshold, scale):
    """x, out 1-D; seed, step, threshold uint64; scale in x's dtype."""
    n = x.size
    zero = scale - scale
    for g in prange((n + 3) // 4):
        group = np.uint64(g)
        words = philox4(group, step, seed)
        for j in range(4):
            i = 4 * g + j
            if i < n:
                out[i] = x[i] * (scale if words[j] >= threshold else zero)


dropout = serial_and_parallel(_dropout)
