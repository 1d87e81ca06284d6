"""A NumPy-backed stand-in for CuPy, for CPU-only CI, as strict as CuPy where it matters.

Device arrays are ``strict_device.DeviceArray``: NumPy holds their data but NumPy code may not
read it (see that module for CuPy's rules it enforces, stream capture's among them).
``RawModule`` checks the source and the kernel symbols the backend asks for, and its kernels
run the *real* kernel source (``kernels/cuda/fastnn_kernels.cu`` with ``fastnn_math.cuh``)
compiled for the host by ``build_host_kernels`` (g++), called through ctypes with the same
arguments a launch passes (device arrays only, as CuPy's launches). So the CuPy backend's Python
(checks, allocation, launch arguments, kernel selection by dtype, reductions, optimizer
bookkeeping) and the kernels' maths are exercised together; only the device execution itself is
not (``tests/test_cuda_blocks.py`` runs the kernels with real grids and blocks).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
import time
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .strict_device import CaptureError, DeviceArray, _Capture, _unwrap, _wrap, real_cupy_names

__all__ = ["CaptureError", "DeviceArray", "FakeCupy", "build_block_kernels", "build_host_kernels"]

REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "kernels" / "cuda"
HOST_SOURCE = Path(__file__).with_name("cuda_host.cpp")


def host_compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


# Both builds compile with -fno-gnu-unique: a kernel's __shared__ arrays are static locals of a
# template, which g++ otherwise makes "unique" symbols that the dynamic linker binds once per
# process, so two builds loaded together (the tests load both) would share them.


def build_host_kernels(directory: Path) -> Path:
    """Compile the CUDA kernel source for the host (warnings as errors); return the library."""
    library = directory / "fastnn_cuda_host.so"
    command = [host_compiler(), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               "-fno-gnu-unique", f"-I{CUDA_DIR}", str(HOST_SOURCE), "-o", str(library)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return library


def host_library(folder: str | os.PathLike) -> Path:
    """``build_host_kernels`` into ``folder`` once for every process that asks (processes started
    together, such as ``mpiexec`` ranks, wait on a lock for the one that builds); rebuilt when a
    kernel source is newer than the library."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / "fastnn_cuda_host.so"
    sources = [HOST_SOURCE, *CUDA_DIR.glob("*.cu*")]
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not library.exists() or library.stat().st_mtime < max(p.stat().st_mtime for p in sources):
            building = folder / "building"
            building.mkdir(exist_ok=True)
            os.replace(build_host_kernels(building), library)
    return library


def hip_cpu_include() -> Path | None:
    """AMD's HIP-CPU headers: ``$FASTNN_HIP_CPU``, else ``shared/vendor/hip-cpu`` beside the
    repository or above it (where this project's machines keep their vendored tools)."""
    candidates = [Path(os.environ["FASTNN_HIP_CPU"])] if os.environ.get("FASTNN_HIP_CPU") else []
    candidates += [parent / "shared" / "vendor" / "hip-cpu" for parent in REPO.parents]
    return next((path / "include" for path in candidates if (path / "include" / "hip" / "hip_runtime.h").exists()),
                None)


def tbb_prefix() -> Path | None:
    """Where the environment's TBB headers and libtbb.so are (the ``tbb-devel`` wheel)."""
    prefix = Path(sys.prefix)
    return prefix if (prefix / "include" / "tbb").is_dir() and (prefix / "lib" / "libtbb.so").exists() else None


def build_block_kernels(directory: Path, cuda_dir: Path = CUDA_DIR, optimise: str = "-O2") -> Path:
    """Compile the unmodified kernels (from ``cuda_dir``) against AMD's HIP-CPU runtime: each
    launch runs its real grid of blocks (in parallel, on TBB) of real threads (fibers, switching at
    ``__syncthreads``). The grid and block of each call come from ``fastnn_set_launch``."""
    library = directory / "fastnn_cuda_blocks.so"
    tbb = tbb_prefix()
    command = [host_compiler(), "-std=c++17", optimise, "-DFASTNN_BLOCKS", "-shared", "-fPIC", "-fno-gnu-unique",
               f"-I{hip_cpu_include()}", f"-I{tbb}/include", f"-I{cuda_dir}", str(HOST_SOURCE), "-o", str(library),
               f"-L{tbb}/lib", "-ltbb", f"-Wl,-rpath,{tbb}/lib", "-pthread"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return library


_SCALARS = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int64: ctypes.c_longlong,
            np.int32: ctypes.c_int}

class _HostKernel:
    def __init__(self, library: ctypes.CDLL, name_expression: str, launches: list | None) -> None:
        match = re.fullmatch(r"(\w+)<(float|double)>", name_expression)
        assert match, f"unexpected name expression {name_expression!r}"
        self.function = getattr(library, f"{match[1]}_{match[2]}")
        self.set_launch = library.fastnn_set_launch  # the grid and block of the next call (blocks build)
        self.name, self.ctype = match[1], match[2]
        self.launches = launches

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        assert all(isinstance(d, int) and d > 0 for d in (*grid, *block)), (grid, block)
        assert grid[0] * block[0] >= 1 and block[0] <= 1024, (grid, block)
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):  # as CuPy: a kernel argument is a device array or a scalar
                raise TypeError(f"Unsupported type {type(arg)}")
            if isinstance(arg, DeviceArray):
                data = arg._data
                assert data.flags.c_contiguous, f"{self.name}: a non-contiguous array reached a kernel"
                if data.dtype.kind == "f":
                    assert data.dtype == (np.float32 if self.ctype == "float" else np.float64), \
                        f"{self.name}<{self.ctype}> got a {data.dtype} array"
                converted.append(ctypes.c_void_p(data.ctypes.data))
            else:
                scalar = _SCALARS.get(type(arg))
                assert scalar is not None, f"{self.name}: argument {arg!r} of type {type(arg).__name__} " \
                                           "has no fixed C type (a Python scalar would be ambiguous)"
                converted.append(scalar(arg))
        if self.launches is not None:
            self.launches.append((self.name, self.ctype, grid, block))
        _Capture.run(self._run, grid[0], block[0], tuple(converted), _writes=True)

    def _run(self, grid: int, block: int, converted: tuple) -> None:
        self.set_launch(ctypes.c_uint(grid), ctypes.c_uint(block))
        self.function(*converted)


class _RawModule:
    def __init__(self, library: ctypes.CDLL, launches: list | None, code: str, options=(), name_expressions=()):
        assert "__global__ void softmax_xent_labels" in code and "namespace fastnn" in code, \
            "RawModule was not given the kernel source with its header inlined"
        assert not name_expressions, "with name_expressions CuPy skips its on-disk cache: look symbols up instead"
        self.library, self.launches = library, launches

    def get_function(self, name: str) -> _HostKernel:
        from fastnn.kernels.cuda.symbols import SYMBOLS

        expressions = {symbol: expression for expression, symbol in SYMBOLS.items()}
        assert name in expressions, f"{name} is not a symbol of the module (a mangled name from symbols.py)"
        return _HostKernel(self.library, expressions[name], self.launches)


class _Event:
    """A CUDA event on the host: the stand-in runs every kernel synchronously."""

    def __init__(self) -> None:
        self.at = None

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        _Capture.forbid("synchronising an event")
        assert self.at is not None, "synchronize() on an event never recorded"


class _Graph:
    """An instantiated CUDA graph: the operations one capture recorded, replayed in order; it
    must not outlive the private pool its allocations came from."""

    def __init__(self, operations: list, pool: Any) -> None:
        self.operations, self.launched = operations, 0
        self.pool = None if pool is None else weakref.ref(pool)

    def launch(self, stream=None) -> None:
        _Capture.forbid("launching a graph")
        if self.pool is not None and self.pool() is None:
            raise CaptureError("the graph writes memory from a pool that was freed: keep the pool as long as the graph")
        for operation in self.operations:
            operation()
        self.launched += 1
        _Capture.operations += 1


class _MemoryPool:
    """``cupy.cuda.MemoryPool``: here only an identity for ``using_allocator``."""

    def malloc(self, size: int):
        raise NotImplementedError("the stand-in allocates through NumPy")


@contextlib.contextmanager
def _using_allocator(allocator=None):
    previous = _Capture.allocator
    _Capture.allocator = allocator
    try:
        yield
    finally:
        _Capture.allocator = previous

    def upload(self, stream=None) -> None:
        pass


class _Stream:
    """``cupy.cuda.Stream``: a context that makes itself current; capture only off the null stream."""

    def __init__(self, cuda: types.SimpleNamespace, null: bool = False, non_blocking: bool = False) -> None:
        self.cuda, self.null, self.ptr = cuda, null, 0 if null else id(self)
        self._previous: list = []

    def __enter__(self) -> _Stream:
        self._previous.append(self.cuda.current)
        self.cuda.current = self
        return self

    def __exit__(self, *exc) -> None:
        self.cuda.current = self._previous.pop()

    def begin_capture(self, mode=None) -> None:
        if self.null:
            raise CaptureError("cudaErrorStreamCaptureUnsupported: the null stream cannot capture")
        if _Capture.recording is not None:
            raise CaptureError("cudaErrorIllegalState: a capture is already open")
        if self.cuda.current is not self:
            raise CaptureError("capture a stream while it is the current stream (`with stream:`), or CuPy's "
                               "operations go to another stream")
        _Capture.recording, self.cuda.capturing = [], self

    def end_capture(self) -> _Graph:
        if self.cuda.capturing is not self:
            raise CaptureError("cudaErrorIllegalState: this stream is not capturing")
        operations, _Capture.recording, self.cuda.capturing = _Capture.recording, None, None
        allocator = _Capture.allocator
        return _Graph(operations, getattr(allocator, "__self__", None))

    def is_capturing(self) -> bool:
        return self.cuda.capturing is self

    def synchronize(self) -> None:
        _Capture.forbid("synchronising a stream")


_TRANSFERS = {"asarray", "array", "asanyarray"}  # the functions that take host data


class FakeCupy(types.ModuleType):
    """``import cupy`` as seen by fastnn: NumPy underneath, CuPy's rules on top (see
    ``strict_device``), plus what the backend uses of ``cupy.cuda``."""

    ndarray = DeviceArray

    def __init__(self, library_path: Path, record: bool = True, multiprocessors: int = 2) -> None:
        super().__init__("cupy")
        _Capture.recording, _Capture.allocator = None, None  # a new stand-in starts with no capture open
        library = ctypes.CDLL(str(library_path))
        self.launches: list | None = [] if record else None  # every launch, for tests that read them
        self.modules_built = 0
        self.names = real_cupy_names()

        def raw_module(**kwargs):
            self.modules_built += 1
            return _RawModule(library, self.launches, **kwargs)

        self.RawModule = raw_module
        self.current_device = None

        def synchronize_device() -> None:
            _Capture.forbid("synchronising the device")

        device = types.SimpleNamespace(attributes={"MultiProcessorCount": multiprocessors},
                                       synchronize=synchronize_device,
                                       use=lambda: setattr(self, "current_device", 0))
        cuda = self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
                                                 Device=lambda index=0: device, Event=_Event,
                                                 get_elapsed_time=lambda start, stop: (stop.at - start.at) * 1e3,
                                                 capturing=None, graph=types.SimpleNamespace(Graph=_Graph))
        cuda.Stream = functools.partial(_Stream, cuda)
        cuda.MemoryPool, cuda.using_allocator = _MemoryPool, _using_allocator
        cuda.Stream.null = cuda.current = _Stream(cuda, null=True)
        cuda.get_current_stream = lambda: cuda.current

    # -- transfers ---------------------------------------------------------------------------
    def asarray(self, a, dtype=None, order=None):
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        _Capture.forbid("copying host data to the device")
        return DeviceArray(np.array(a, dtype=dtype, order=order or "K", copy=True))

    def array(self, a, dtype=None, copy=True, order="K", **kwargs):
        if isinstance(a, DeviceArray):
            return a.astype(dtype or a.dtype, order=order) if copy else self.asarray(a, dtype)
        return self.asarray(a, dtype, order)

    asanyarray = asarray

    def asnumpy(self, a, stream=None, order="C", out=None) -> np.ndarray:
        if isinstance(a, DeviceArray):
            return a.get(order=order)
        return np.asarray(a, order=order)

    def get_array_module(self, *args):
        return self if any(isinstance(a, DeviceArray) for a in args) else np

    def take(self, a, indices, axis=None, out=None):
        """CuPy wraps indices past either end around the axis (NumPy would raise)."""
        result = _Capture.run(np.take, _unwrap(a), _unwrap(indices), axis=axis, out=_unwrap(out), mode="wrap",
                              _writes=out is not None)
        return out if out is not None else _wrap(result)

    def RawKernel(self, code: str, name: str, **kwargs):  # noqa: N802  (CuPy's name)
        """Only the backend probe's kernel (``x[threadIdx.x] += 1``) is a RawKernel in fastnn."""
        if name != "fastnn_probe" or "x[threadIdx.x] += 1.0f" not in code:
            raise NotImplementedError(f"the stand-in runs fastnn's own kernels only, not {name!r}")

        def probe(grid, block, args):
            (x,) = args
            _unwrap(x)[: grid[0] * block[0]] += 1

        return probe

    def __getattr__(self, name: str):
        if name.startswith("__") or name not in self.names:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        value = getattr(np, name)
        if isinstance(value, (type, np.dtype, int, float)) or value is None or not callable(value):
            return value
        return _device_function(value)


@functools.cache
def _device_function(function):
    """A NumPy function as CuPy's: device arrays in (host arrays refused), device arrays out."""

    @functools.wraps(function)
    def on_device(*args, **kwargs):
        out = kwargs.get("out")
        result = _Capture.run(function, *_unwrap(args), _writes=out is not None or function.__name__ == "copyto",
                              **{k: _unwrap(v) for k, v in kwargs.items()})
        return out if isinstance(out, DeviceArray) else _wrap(result)

    return on_device
