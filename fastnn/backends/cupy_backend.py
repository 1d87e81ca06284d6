"""The CuPy backend: CuPy arrays on a CUDA device, cuBLAS GEMMs, the kernels of ``kernels/cuda``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Backend


class CapturedStep:
    """A CUDA graph of one step, the memory pool its allocations came from, and what the step
    returned (arrays the graph writes on every launch)."""

    def __init__(self, graph: Any, pool: Any, result: Any) -> None:
        self.graph, self.pool, self.result = graph, pool, result
        self.key: Any = None

    def launch(self) -> None:
        """One replay, on the current stream: ordered after the work queued before it."""
        self.graph.launch()


class CupyBackend(Backend):
    name = "cupy"
    compiles = True  # one RawModule, compiled by NVRTC on first use
    compile_estimate = "a few seconds"  # NVRTC on the module: 4-6 s here for sm_80 and sm_90 (test_cuda)
    defers_checks = True
    captures_steps = True

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

    def capture(self, step: Callable[[], Any]) -> CapturedStep:
        """``step()`` recorded by CuPy's stream capture as one CUDA graph. What it allocates
        comes from a memory pool of the graph's own (as PyTorch's CUDA graphs do): a temporary
        freed after the capture goes back to that pool, never to the one the rest of the program
        draws from, so no other array ever takes memory the graph writes."""
        cuda = self.xp.cuda
        pool = cuda.MemoryPool()
        stream = cuda.Stream(non_blocking=True)
        with stream, cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            try:
                result = step()
            finally:
                graph = stream.end_capture()
        return CapturedStep(graph, pool, result)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return self.xp.zeros(shape, dtype=dtype)
