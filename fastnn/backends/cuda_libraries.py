"""The CUDA libraries CuPy opens by name (NVRTC, cuBLAS), from NVIDIA's pip wheels where the
system has none.

CuPy 13 loads ``libnvrtc.so.12`` and ``libcublas.so.12`` by soname when it first compiles or
multiplies. On a machine with a driver but no CUDA toolkit the loader finds neither, and the
first launch fails with "CuPy failed to load libnvrtc.so.12", although the ``cuda12`` extra
installed NVIDIA's ``nvidia-cuda-nvrtc-cu12`` and ``nvidia-cublas-cu12`` wheels (their files sit
under ``site-packages/nvidia/*/lib``, on no search path). ``preload`` loads each library the
system cannot supply from those wheels by its full path, with ``RTLD_GLOBAL``: when CuPy later
asks for the soname, the loader hands it the copy already in the process. A library the system
does supply is left to the system.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
from pathlib import Path

# In load order (a library after those it needs); globs, since builtins carry the minor version.
LIBRARIES = {
    12: ("libnvrtc-builtins.so.12*", "libnvrtc.so.12", "libcublasLt.so.12", "libcublas.so.12"),
    13: ("libnvrtc-builtins.so.13*", "libnvrtc.so.13", "libcublasLt.so.13", "libcublas.so.13"),
}
_loaded: dict[str, str] = {}


def cupy_cuda_major() -> int | None:
    """The CUDA major version of the installed CuPy wheel (``cupy-cuda12x`` -> 12), or None."""
    for major in LIBRARIES:
        try:
            importlib.metadata.version(f"cupy-cuda{major}x")
        except importlib.metadata.PackageNotFoundError:
            continue
        return major
    return None


def wheel_library_dirs() -> list[Path]:
    """``site-packages/nvidia/<component>/lib`` of every NVIDIA wheel installed."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or spec.submodule_search_locations is None:
        return []
    return sorted(lib for root in spec.submodule_search_locations for lib in Path(root).glob("*/lib") if lib.is_dir())


def preload(major: int | None = None) -> dict[str, str]:
    """Load from the wheels each CUDA library of ``major`` (default: CuPy's) that the system's
    loader cannot find; returns ``{pattern: path}`` of what came from a wheel (for ``fastnn info``)."""
    major = cupy_cuda_major() if major is None else major
    if major not in LIBRARIES:
        return {}
    directories = wheel_library_dirs()
    for pattern in LIBRARIES[major]:
        if pattern in _loaded:
            continue
        if "*" not in pattern:
            try:
                ctypes.CDLL(pattern, mode=ctypes.RTLD_GLOBAL)  # the system has it: CuPy will get that one
                continue
            except OSError:
                pass
        found = [path for directory in directories for path in sorted(directory.glob(pattern))
                 if ".alt." not in path.name]
        if found:
            ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
            _loaded[pattern] = str(found[0])
    return dict(_loaded)
