"""The Numba backend: NumPy arrays, fused JIT kernels (``kernels/numba``), BLAS for large GEMMs."""

from __future__ import annotations

from .numpy_backend import NumpyBackend


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self) -> None:
        # Imported here, not at module level, so that even importing this module compiles and
        # probes nothing; the kernels themselves compile on first call.
        from ..kernels.numba.kernelset import NUMBA_KERNELS

        self.kernels = NUMBA_KERNELS
