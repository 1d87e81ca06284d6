"""Inverted dropout from a counter-based generator, so every backend draws the same mask.

The mask of element ``i`` at training step ``step`` of a layer seeded ``seed`` is word ``i % 4`` of
Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) with counter
``(i // 4 low, i // 4 high, step low, step high)`` and key ``(seed low, seed high)``: element
``i`` is kept when that word is at least ``threshold = int(p * 2**32)``, so with probability
``1 - p``. ``y = x * m`` with ``m`` either 0 or ``scale = 1 / (1 - p)`` in the data's dtype (NaN in
``x`` stays NaN, as in PyTorch's ``x * mask * scale``). Nothing is stored between forward and
backward: the backward is the same call on ``dy``. The Numba and CUDA kernels compute the same
integers, hence the same masks, bit for bit.
"""

from __future__ import annotations

import numpy as np

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)


def threshold_and_scale(p: float, dtype) -> tuple[int, float]:
    """The integer keep threshold and the kept elements' scale (0 when everything is dropped)."""
    threshold = int(p * 2.0**32)
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    return threshold, float(np.dtype(dtype).type(scale))


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Ten Philox rounds on counters held in uint64 arrays (each < 2**32); returns the 4 words."""
    k0, k1 = np.uint64(k0), np.uint64(k1)
    m0, m1, w0, w1 = (np.uint64(v) for v in (PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1))
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK)
        k0, k1 = (k0 + w0) & _MASK, (k1 + w1) & _MASK
    return c0, c1, c2, c3


def keep_words(n: int, seed: int, step: int) -> np.ndarray:
    """The Philox word deciding each of ``n`` elements (uint64 values < 2**32)."""
    groups = np.arange(-(-n // 4), dtype=np.uint64)
    step_lo = np.full_like(groups, step & 0xFFFFFFFF)
    step_hi = np.full_like(groups, (step >> 32) & 0xFFFFFFFF)
    words = philox4x32_10(groups & _MASK, groups >> np.uint64(32), step_lo, step_hi, seed & 0xFFFFFFFF,
                          (seed >> 32) & 0xFFFFFFFF)
    return np.stack(words, axis=1).reshape(-1)[:n]


def dropout(x, out, seed, step, p):
    """``out = x * mask * scale`` (see the module docstring); ``x`` and ``out`` any shape."""
    threshold, scale = threshold_and_scale(p, x.dtype)
    if x.size == 0:
        return out
    factors = np.where(keep_words(x.size, seed, step) >= threshold, x.dtype.type(scale), x.dtype.type(0))
    np.multiply(x, factors.reshape(x.shape), out=out)
    return out
