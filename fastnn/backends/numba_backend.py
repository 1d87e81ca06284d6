"""The Numba backend: NumPy arrays, fused JIT kernels (``kernels/numba``), BLAS for large GEMMs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .numpy_backend import NumpyBackend


class NumbaBackend(NumpyBackend):
    name = "numba"
    compiles = True
    # the kernels `fastnn train digits` compiles from an empty cache: 6.6-9.2 s on an AMD EPYC
    # (Zen 4), 2 vCPUs, half of it in a helper process (``kernels/build_apart.py``); 27.7 s
    # before the kernel's tasks were called by address, 42 s before its passes were (when an
    # Intel Xeon, family 6 model 207, took 30-66 s)
    compile_estimate = "roughly 5-15 s on 2 cores"
    compiles_each_dtype = True

    def __init__(self) -> None:
        # Imported here, not at module level, so that even importing this module compiles and
        # probes nothing; the kernels themselves compile on first call.
        from ..kernels.numba.kernelset import NUMBA_KERNELS

        self.kernels = NUMBA_KERNELS

    def dense_trainer(self, plan: Any, params: Any, batch_size: int) -> Any:
        """Whole steps in one JIT call (``kernels/numba/dense_step.py``), where NumPy's BLAS is an
        OpenBLAS the kernels can call; otherwise None."""
        from ..kernels import blas
        from ..kernels.numba import trainer

        found = blas.find()
        return None if found is None else trainer.trainer_for(plan, self, params, found, batch_size)

    def whole_step_builds(self) -> Iterator[str]:
        """Every build of the whole-step kernel (``trainer.every_build``): float64's in a helper
        process while this one compiles float32's, then loaded from the cache."""
        from ..kernels import build_apart
        from ..kernels.numba import trainer

        helper = build_apart.start(trainer.__name__, "every_build", "float64")
        trainer.every_build("float32")
        yield "every whole-step build, float32"
        build_apart.join(helper)
        trainer.every_build("float64")
        yield "every whole-step build, float64"

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
