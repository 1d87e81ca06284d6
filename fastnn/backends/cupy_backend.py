"""The CuPy backend: CuPy arrays on a CUDA device, cuBLAS GEMMs, the kernels of ``kernels/cuda``."""

from __future__ import annotations

import importlib
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
        from .cuda_libraries import preload

        preload()  # before CuPy first opens NVRTC or cuBLAS by name

        self.xp = cupy
        self.kernels = kernel_set(cupy)
        # id(world) -> (world, NCCL communicator, NCCL's dtype codes, its sum code)
        self._communicators: dict[int, tuple[Any, Any, dict[Any, int], int]] = {}

    def allreduce(self, world: Any, buffer: Any) -> Any:
        """NCCL's in-place sum of ``buffer`` over ``world``'s ranks, queued on the current stream:
        no host synchronisation. The communicator is built once per world: rank 0 creates the
        unique id and MPI broadcasts it (``NcclCommunicator(size, id, rank)``); each rank uses the
        device ``fastnn.distributed.init`` chose for it (one per rank on its node)."""
        entry = self._communicators.get(id(world))
        if entry is None:  # once per world: the communicator and NCCL's codes
            nccl = importlib.import_module("cupy.cuda.nccl")
            unique_id = world.broadcast_object(nccl.get_unique_id() if world.is_main else None)
            types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
            entry = self._communicators[id(world)] = (world, nccl.NcclCommunicator(world.size, unique_id, world.rank),
                                                      types, nccl.NCCL_SUM)
        _, communicator, types, total = entry
        if buffer.dtype not in types or not buffer.flags.c_contiguous:
            raise TypeError(f"allreduce takes a C-contiguous float32 or float64 array, got {buffer.dtype} "
                            f"(contiguous: {buffer.flags.c_contiguous})")
        address = buffer.__cuda_array_interface__["data"][0]
        communicator.allReduce(address, address, buffer.size, types[buffer.dtype], total,
                               self.xp.cuda.get_current_stream().ptr)
        return buffer

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)
