"""The Numba backend: NumPy arrays, fused JIT kernels (``kernels/numba``), BLAS for large GEMMs."""

from __future__ import annotations

from ..kernels.numba.kernelset import NUMBA_KERNELS
from .numpy_backend import NumpyBackend


class NumbaBackend(NumpyBackend):
    name = "numba"
    kernels = NUMBA_KERNELS
