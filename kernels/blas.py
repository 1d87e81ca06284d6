"""NumPy's own OpenBLAS, callable from jitted code: ``cblas_sgemm``/``cblas_dgemm`` and the
thread-count setter, found through threadpoolctl (the library that knows where NumPy's BLAS is
and what its symbols are called).

Calling GEMM from inside a kernel is what lets a whole training step run as one JIT call
(``dense_step``) instead of ~25 Python-level kernel calls. Only OpenBLAS is looked for (NumPy's
wheels ship it); with any other BLAS ``find()`` returns None and callers keep the per-kernel path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


@dataclass(frozen=True)
class Blas:
    """ctypes functions of one OpenBLAS: ``gemm[dtype.char]`` and its thread count."""

    sgemm: Any
    dgemm: Any
    set_num_threads: Any
    get_num_threads: Any
    ilp64: bool  # 64-bit integer arguments
    path: str


def _symbol(lib: ctypes.CDLL, names: list[str]) -> Any:
    for name in names:
        try:
            return getattr(lib, name)
        except AttributeError:
            continue
    return None


@functools.cache
def find() -> Blas | None:
    """NumPy's OpenBLAS, or None where NumPy uses another BLAS or threadpoolctl is missing."""
    try:
        import numpy  # noqa: F401  (loads the BLAS threadpoolctl is to find)
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for info in threadpool_info():
        if info.get("internal_api") != "openblas" or "numpy" not in info.get("filepath", ""):
            continue
        lib = ctypes.CDLL(info["filepath"])
        # scipy-openblas wheels prefix every symbol with scipy_ and, for 64-bit integers
        # (ILP64), suffix it with 64_; a plain OpenBLAS has neither.
        for prefix, suffix, int_t in (("scipy_", "64_", ctypes.c_int64), ("", "64_", ctypes.c_int64),
                                      ("scipy_", "", ctypes.c_int32), ("", "", ctypes.c_int32)):
            sgemm = _symbol(lib, [f"{prefix}cblas_sgemm{suffix}"])
            dgemm = _symbol(lib, [f"{prefix}cblas_dgemm{suffix}"])
            setter = _symbol(lib, [f"{prefix}openblas_set_num_threads{suffix}"])
            getter = _symbol(lib, [f"{prefix}openblas_get_num_threads{suffix}"])
            if None in (sgemm, dgemm, setter, getter):
                continue
            enum = ctypes.c_int
            for fn, scalar in ((sgemm, ctypes.c_float), (dgemm, ctypes.c_double)):
                fn.restype = None
                fn.argtypes = [enum, enum, enum, int_t, int_t, int_t, scalar, ctypes.c_void_p, int_t,
                               ctypes.c_void_p, int_t, scalar, ctypes.c_void_p, int_t]
            setter.restype, setter.argtypes = None, [ctypes.c_int]
            getter.restype, getter.argtypes = ctypes.c_int, []
            return Blas(sgemm, dgemm, setter, getter, int_t is ctypes.c_int64, info["filepath"])
    return None


_single_lock = threading.Lock()
_single_holders: dict[str, int] = {}  # per library path: how many sections are open
_single_saved: dict[str, int] = {}  # per library path: its thread count before the first


@contextlib.contextmanager
def single_threaded(blas: Blas) -> Iterator[None]:
    """While any such section is open (in any thread), ``blas`` runs on one thread; the first to
    enter saves the thread count and the last to leave restores it. (Each section saving and
    restoring on its own left BLAS on one thread for good when two fits overlapped: A enters,
    B enters and saves 1, A restores, B restores the 1.)"""
    with _single_lock:
        if _single_holders.get(blas.path, 0) == 0:
            _single_saved[blas.path] = blas.get_num_threads()
            blas.set_num_threads(1)
        _single_holders[blas.path] = _single_holders.get(blas.path, 0) + 1
    try:
        yield
    finally:
        with _single_lock:
            _single_holders[blas.path] -= 1
            if _single_holders[blas.path] == 0:
                blas.set_num_threads(_single_saved.pop(blas.path))
