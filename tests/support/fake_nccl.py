"""A stand-in for ``cupy.cuda.nccl`` on the CuPy stand-in's host memory, routed through MPI.

It mirrors the real module's signatures and constants (NCCL's ``ncclDataType_t`` and
``ncclRedOp_t`` values) and checks what NCCL would need: every rank of one communicator was
given the same unique id, its own rank and the world's size; buffers are addresses with an
element count; the operation is a sum of float32 or float64. The sum itself is MPI's in-place
``Allreduce`` over the addresses' memory (the stand-in's device memory is host memory).
"""

from __future__ import annotations

import ctypes
import os
import types

import numpy as np

NCCL_SUM = 0
NCCL_FLOAT32, NCCL_FLOAT64 = 7, 8
_CTYPES = {NCCL_FLOAT32: ctypes.c_float, NCCL_FLOAT64: ctypes.c_double}
UNIQUE_ID_BYTES = 128


def get_unique_id() -> tuple[int, ...]:
    """NCCL's ``ncclUniqueId``: 128 bytes, as CuPy returns them (a tuple of ints)."""
    return tuple(int(b) for b in os.urandom(UNIQUE_ID_BYTES))


class NcclCommunicator:
    made: list[NcclCommunicator] = []  # every communicator built, for the tests to inspect

    def __init__(self, ndev: int, commId: tuple[int, ...], rank: int) -> None:  # noqa: N803  (NCCL's names)
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        assert isinstance(commId, tuple) and len(commId) == UNIQUE_ID_BYTES, "commId must be a unique id"
        assert ndev == comm.Get_size() and rank == comm.Get_rank(), (ndev, rank)
        ids = comm.allgather(commId)
        assert all(other == ids[0] for other in ids), "the ranks were given different unique ids"
        self.comm, self.calls = comm, 0
        NcclCommunicator.made.append(self)

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                  stream: int) -> None:
        from mpi4py import MPI

        assert isinstance(sendbuf, int) and isinstance(recvbuf, int) and sendbuf == recvbuf, "in place, by address"
        assert op == NCCL_SUM and datatype in _CTYPES and isinstance(count, int) and count > 0
        assert isinstance(stream, int)
        memory = np.ctypeslib.as_array((_CTYPES[datatype] * count).from_address(recvbuf))
        self.comm.Allreduce(MPI.IN_PLACE, memory, op=MPI.SUM)
        self.calls += 1


def install(fake_cupy: types.ModuleType) -> None:
    """Register this module as the CuPy stand-in's ``cupy.cuda.nccl`` (its device arrays give
    their addresses through ``__cuda_array_interface__``, as CuPy's do)."""
    import sys

    fake_cupy.cuda.nccl = sys.modules[__name__]
    sys.modules["cupy.cuda.nccl"] = sys.modules[__name__]


def module() -> types.ModuleType:
    """This stand-in as a module object, for ``sys.modules["cupy.cuda.nccl"]``."""
    import sys

    return sys.modules[__name__]
