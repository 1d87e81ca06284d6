"""Data-parallel training on MPI (mpi4py) and, for the CuPy backend, NCCL.

fastnn decides what to reduce and when; the engine moves the bytes. ``pip install 'fastnn[mpi]'``
brings mpi4py and MPICH; the same mpi4py also runs on Open MPI, Intel MPI or a cluster's MPI.

- ``init(comm=None)`` returns the ``World``: under ``mpiexec`` the MPI world (or ``comm``, any
  mpi4py communicator), otherwise a world of size 1 in which every collective is a no-op, so one
  script runs alone or on many ranks unchanged. It also gives each rank its share of the node's
  cores for Numba and BLAS (unless ``NUMBA_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` /
  ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` say otherwise) and, with more than one rank, an
  ``excepthook`` that aborts every rank when one dies of an exception (so none waits forever
  in a collective).
- ``Network.fit(..., distributed=True)`` trains on this world (``distributed=comm`` on a given
  communicator). See ``fastnn.training.fit`` for what is guaranteed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from typing import Any

import numpy as np

# Variables by which MPI launchers tell a process the world's size, before MPI is initialised:
# MPICH and Intel MPI (Hydra's PMI), Open MPI, MVAPICH.
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# A user who set any of these chose the thread counts; ``init`` then leaves them alone.
_NUMBA_THREAD_VARIABLES = ("NUMBA_NUM_THREADS",)
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

INSTALL_HINT = "pip install 'fastnn[mpi]' (mpi4py and MPICH)"
# Seconds a rank dying of an exception waits, its traceback written, before it aborts the world
ABORT_GRACE_S = 0.2


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 when none did)."""
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


class World:
    """The processes that train one model together: ``rank`` of ``size``, over ``comm`` (an
    mpi4py communicator; None in a world of one, where every collective returns at once).

    Collectives work on host NumPy arrays in place and are called by every rank in the same
    order, as MPI requires."""

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank = 0 if comm is None else int(comm.Get_rank())
        self.size = 1 if comm is None else int(comm.Get_size())
        self.local_rank, self.local_size = (0, 1) if comm is None else _node_place(comm)

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that writes checkpoints and prints."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, ranks on this node={self.local_size})"

    def allreduce(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` (a contiguous host array) over every rank, in place; returns it."""
        if self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        return buffer

    def broadcast(self, buffer: np.ndarray) -> np.ndarray:
        """Overwrite ``buffer`` (a contiguous host array) with rank 0's, in place; returns it."""
        if self.size > 1:
            self.comm.Bcast(buffer, root=0)
        return buffer

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` (anything picklable), on every rank."""
        return value if self.size == 1 else self.comm.bcast(value, root=0)

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's part of ``range(start, stop)``: contiguous, sizes differing by at most one
        (a rank's part may be empty when there are fewer items than ranks)."""
        count = stop - start
        return start + count * self.rank // self.size, start + count * (self.rank + 1) // self.size


def _node_place(comm: Any) -> tuple[int, int]:
    """``(rank among the ranks on this node, how many there are)``, from MPI's
    ``COMM_TYPE_SHARED`` split of ``comm``."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank()), int(node.Get_size())
    finally:
        node.Free()


_lock = threading.Lock()
_world: World | None = None
_hook_installed = False


def init(comm: Any = None, share_cores: bool = True) -> World:
    """The world to train on: ``comm`` (an mpi4py communicator) if given, else MPI's world when
    an MPI launcher started this process (or mpi4py is already initialised), else a world of 1.

    Without ``comm`` the result is cached, so ``rank()``, ``size()`` and ``fit`` agree.
    ``share_cores``: set this rank's Numba and BLAS threads to its share of the node's cores
    (``cores // ranks on the node``) where the user has not set them."""
    global _world
    if comm is not None:
        world = comm if isinstance(comm, World) else World(_check_comm(comm))
    else:
        with _lock:
            if _world is None:
                _world = World(_world_comm())
            world = _world
    if world.size > 1:
        _use_own_gpu(world)  # first: importing CuPy loads SciPy's OpenBLAS, whose threads need sharing too
        if share_cores:
            _share_cores(world)
        _abort_on_uncaught_exception(world)
    return world


def _check_comm(comm: Any) -> Any:
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Allreduce", "Bcast")):
        raise TypeError(f"distributed= expects True, False, a fastnn.distributed.World or an mpi4py "
                        f"communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    return comm


def _world_comm() -> Any:
    """MPI.COMM_WORLD where MPI is in play, else None (without importing mpi4py at all)."""
    size = launched_size()
    if size == 1 and "mpi4py.MPI" not in sys.modules:
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"this process was started by an MPI launcher as one of {size} ranks, but mpi4py "
                          f"cannot be imported ({exc}); {INSTALL_HINT}") from None
    return MPI.COMM_WORLD


def resolve(distributed: Any) -> World | None:
    """``fit``'s ``distributed=`` argument as a world of more than one rank, or None (alone)."""
    if distributed is False or distributed is None:
        return None
    world = init() if distributed is True else init(distributed)
    return world if world.size > 1 else None


def rank() -> int:
    """This process's rank in the world ``init()`` found (0 when alone)."""
    return init().rank


def size() -> int:
    """The number of ranks in the world ``init()`` found (1 when alone)."""
    return init().size


def is_main() -> bool:
    """True on rank 0 (and when alone)."""
    return init().is_main


def _share_cores(world: World) -> None:
    """Numba and BLAS threads to ``cores // ranks on this node`` (at least 1), unless set by the
    user: ranks that each start a thread per core oversubscribe the node (measured: 2 ranks x
    (2 Numba + 2 OpenBLAS threads) on 2 cores ran ~15x slower than with one thread each). BLAS
    libraries loaded later (SciPy's, which importing CuPy loads) follow OPENBLAS_NUM_THREADS and
    MKL_NUM_THREADS, set here for them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // world.local_size)
    if not any(name in os.environ for name in _NUMBA_THREAD_VARIABLES):
        try:
            import numba

            from .kernels import numba as _kernels  # noqa: F401  (chooses the TBB before Numba's pool starts)
        except ImportError:
            pass
        else:
            numba.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))
    if not any(name in os.environ for name in _BLAS_THREAD_VARIABLES):
        # BLAS libraries loaded from now on read these; those loaded already are limited below
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(share)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(share, user_api="blas")


def _use_own_gpu(world: World) -> None:
    """Where CuPy sees GPUs, make device ``local_rank % count`` this rank's current device (NCCL
    takes one device per rank), before anything is allocated on one. Nothing without CuPy or GPUs."""
    if "cupy" not in sys.modules and importlib.util.find_spec("cupy") is None:
        return
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001  (no driver, no device: the CPU backends train)
        return
    if count > 0:
        cupy.cuda.Device(world.local_rank % count).use()


def _abort_on_uncaught_exception(world: World) -> None:
    """Print an uncaught exception as usual, then abort every rank: the others would otherwise
    wait forever in the next collective (what ``python -m mpi4py`` does, for plain scripts too)."""
    global _hook_installed
    with _lock:
        if _hook_installed:
            return
        _hook_installed = True
        previous = sys.excepthook

    def hook(kind, value, traceback):
        # The launcher forwards a rank's output asynchronously and may kill every rank before it
        # has forwarded the traceback's last line, the one that says what happened (seen once in
        # CI under MPICH): say it first, in one line, and give the launcher a moment before the
        # abort.
        print(f"fastnn: rank {world.rank} of {world.size}: {kind.__name__}: {value}; aborting every rank",
              file=sys.stderr, flush=True)
        previous(kind, value, traceback)
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        world.comm.Abort(1)

    sys.excepthook = hook
