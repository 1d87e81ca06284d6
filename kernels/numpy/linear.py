"""Matrix-core kernels on NumPy: matmul, bias-add, and the fused linear forward/backward.

Shapes (PyTorch's ``nn.Linear`` convention): ``x (*, in)``, ``weight (out, in)``, ``bias (out,)``,
``z = x @ weight.T + bias``; the leading dims of ``x`` are flattened into one batch axis so every
product is a single BLAS GEMM (NumPy's broadcasting matmul would loop one GEMM per matrix).
"""

from __future__ import annotations

import functools

import numpy as np

from .activations import FORWARD


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


def matmul(a, b, out=None):
    return np.matmul(a, b, out=out)


def bias_add(x, bias, out):
    return np.add(x, bias, out=out)


def _rows(a: np.ndarray) -> np.ndarray:
    """``(*, n) -> (prod(*), n)``; a view when the leading dims are contiguous."""
    return a.reshape(-1, a.shape[-1])


def bias_activation(z, bias, activation, alpha, y):
    """The pass after the GEMM: ``z += bias`` (when there is one) and ``y = g(z)``; ``y`` may be
    ``z`` for the identity activation. NumPy needs two passes; a JIT backend fuses them."""
    if bias is not None:
        z += bias
    if y is not z:
        FORWARD[activation](z, y, alpha)
    return z, y


def linear_forward(x, weight, bias, activation, alpha, z, y):
    """GEMM then the bias+activation pass: ``z = x @ weight.T + bias`` and ``y = g(z)``.

    ``y`` may be ``z`` itself for the identity activation (no copy)."""
    np.matmul(_rows(x), weight.T, out=_rows(z))
    return bias_activation(z, bias, activation, alpha, y)


def linear_backward(x, weight, dz, dx, dweight, dbias):
    """``dweight = dz^T x`` and ``dbias = sum(dz)`` over every leading dim; ``dx = dz @ weight``.

    ``dx`` or ``dbias`` may be ``None`` to skip them (first layer; no bias)."""
    dz2 = _rows(dz)
    np.matmul(dz2.T, _rows(x), out=dweight)
    if dbias is not None:
        # ones @ dz is a BLAS GEMV: about 3x faster than np.sum(axis=0) on small batches.
        np.matmul(_ones(dz2.shape[0], dz2.dtype), dz2, out=dbias)
    if dx is not None:
        np.matmul(dz2, weight, out=_rows(dx))
    return dx, dweight, dbias
