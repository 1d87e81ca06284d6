"""A NumPy-backed stand-in for CuPy, for CPU-only CI.

Arrays are NumPy arrays; ``RawModule`` checks the source and the name expressions the backend
asks for, and its kernels run the *real* kernel source (``kernels/cuda/fastnn_kernels.cu`` with
``fastnn_math.cuh``) compiled for the host by ``build_host_kernels`` (g++), called through ctypes
with the same arguments a launch passes. So the CuPy backend's Python (checks, allocation, launch
arguments, kernel selection by dtype, reductions, optimizer bookkeeping) and the kernels' maths
are exercised together; only the device execution itself is not.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "kernels" / "cuda"
HOST_SOURCE = Path(__file__).with_name("cuda_host.cpp")


def host_compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


def build_host_kernels(directory: Path) -> Path:
    """Compile the CUDA kernel source for the host (warnings as errors); return the library."""
    library = directory / "fastnn_cuda_host.so"
    command = [host_compiler(), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               f"-I{CUDA_DIR}", str(HOST_SOURCE), "-o", str(library)]
    subprocess.run(command, check=True, capture_output=True, text=True)
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


def build_block_kernels(directory: Path, cuda_dir: Path = CUDA_DIR) -> Path:
    """Compile the unmodified kernels (from ``cuda_dir``) against AMD's HIP-CPU runtime: each
    launch runs its real grid of blocks (in parallel, on TBB) of real threads (fibers, switching at
    ``__syncthreads``). The grid and block of each call come from ``fastnn_set_launch``."""
    library = directory / "fastnn_cuda_blocks.so"
    tbb = tbb_prefix()
    command = [host_compiler(), "-std=c++17", "-O2", "-DFASTNN_BLOCKS", "-shared", "-fPIC", f"-I{hip_cpu_include()}",
               f"-I{tbb}/include", f"-I{cuda_dir}", str(HOST_SOURCE), "-o", str(library), f"-L{tbb}/lib", "-ltbb",
               f"-Wl,-rpath,{tbb}/lib", "-pthread"]
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

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        assert all(isinstance(d, int) and d > 0 for d in (*grid, *block)), (grid, block)
        assert grid[0] * block[0] >= 1 and block[0] <= 1024, (grid, block)
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous, f"{self.name}: a non-contiguous array reached a kernel"
                if arg.dtype.kind == "f":
                    assert arg.dtype == (np.float32 if self.ctype == "float" else np.float64), \
                        f"{self.name}<{self.ctype}> got a {arg.dtype} array"
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                scalar = _SCALARS.get(type(arg))
                assert scalar is not None, f"{self.name}: argument {arg!r} of type {type(arg).__name__} " \
                                           "has no fixed C type (a Python scalar would be ambiguous)"
                converted.append(scalar(arg))
        if self.launches is not None:
            self.launches.append((self.name, self.ctype, grid, block))
        self.set_launch(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]))
        self.function(*converted)


class _RawModule:
    def __init__(self, library: ctypes.CDLL, launches: list | None, code: str, options=(), name_expressions=()):
        assert "__global__ void softmax_xent_labels" in code and "namespace fastnn" in code, \
            "RawModule was not given the kernel source with its header inlined"
        self.library, self.launches = library, launches
        self.name_expressions = set(name_expressions)

    def get_function(self, name_expression: str) -> _HostKernel:
        assert name_expression in self.name_expressions, f"{name_expression} was not compiled by the RawModule"
        return _HostKernel(self.library, name_expression, self.launches)


class _Event:
    """A CUDA event on the host: the stand-in runs every kernel synchronously."""

    def __init__(self) -> None:
        self.at = None

    def record(self) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        assert self.at is not None, "synchronize() on an event never recorded"


class FakeCupy(types.ModuleType):
    """``import cupy`` as seen by fastnn: NumPy underneath, plus what the backend uses of CuPy."""

    def __init__(self, library_path: Path, record: bool = True, multiprocessors: int = 2) -> None:
        super().__init__("cupy")
        library = ctypes.CDLL(str(library_path))
        self.launches: list | None = [] if record else None  # every launch, for tests that read them
        self.modules_built = 0

        def raw_module(**kwargs):
            self.modules_built += 1
            return _RawModule(library, self.launches, **kwargs)

        self.RawModule = raw_module
        self.asnumpy = np.asarray
        self.current_device = None
        device = types.SimpleNamespace(attributes={"MultiProcessorCount": multiprocessors}, synchronize=lambda: None,
                                       use=lambda: setattr(self, "current_device", 0))
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
                                          Device=lambda index=0: device, Event=_Event,
                                          get_elapsed_time=lambda start, stop: (stop.at - start.at) * 1000.0)

    def __getattr__(self, name: str):
        return getattr(np, name)
