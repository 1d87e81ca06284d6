"""The Numba backend: NumPy arrays, fused JIT kernels (``kernels/numba``), BLAS for large GEMMs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .numpy_backend import NumpyBackend


class NumbaBackend(NumpyBackend):
    name = "numba"
    compiles = True
    # a digits fit from an empty cache: 27.7 s on an AMD EPYC (Zen 4), 2 vCPUs (42 s before the
    # passes were compiled apart, when an Intel Xeon, family 6 model 207, took 30-66 s); nearly
    # all of it the whole-step kernel
    compile_estimate = "roughly 25-50 s on 2 cores"

    def __init__(self) -> None:
        # Imported here, not at module level, so that even importing this module compiles and
        # probes nothing; the kernels themselves compile on first call.
        from ..kernels.numba.kernelset import NUMBA_KERNELS

        self.kernels = NUMBA_KERNELS

    def dense_trainer(self, plan: Any, params: Any, batch_size: int) -> Any:
        """Whole steps in one JIT call (``kernels/numba/dense_step.py``), where NumPy's BLAS is an
        OpenBLAS the kernels can call; otherwise None."""
        from ..kernels import blas
        from ..kernels.numba.trainer import DenseTrainer

        found = blas.find()
        return None if found is None else DenseTrainer(plan, self, params, found, batch_size)

    def kernel_builds(self) -> Iterator[str]:
        """The serial builds (what small arrays use), then the parallel ones (forced by setting
        the size threshold to 0 for the duration)."""
        from ..kernels.numba import jit

        threshold = jit.PARALLEL_MIN_ELEMENTS
        try:
            yield "serial"
            jit.PARALLEL_MIN_ELEMENTS = 0
            yield "parallel"
        finally:
            jit.PARALLEL_MIN_ELEMENTS = threshold
