"""The CuPy backend: CuPy arrays on a CUDA device, cuBLAS GEMMs, the kernels of ``kernels/cuda``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


class CupyBackend(Backend):
    name = "cupy"
    compiles = True  # one RawModule, compiled by NVRTC on first use
    defers_checks = True

    def __init__(self) -> None:
        import cupy

        from ..kernels.cuda.launch import kernel_set

        self.xp = cupy
        self.kernels = kernel_set(cupy)


    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)
