"""Backend registry and selection.

Backends are looked up by name in ``REGISTRY``; each entry knows how to tell whether it can run
here (a cached probe, run on first need, never at import) and how to build the backend. The
current backend lives in a ``ContextVar``, so ``use_backend`` is safe with threads and asyncio.
The environment variable ``FASTNN_BACKEND`` is read the first time a backend is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from ..errors import BackendUnavailable
from .base import Backend

AUTO_ORDER = ("cupy", "numba", "numpy")
"""``"auto"`` picks the first usable backend in this order."""


@dataclass(frozen=True)
class BackendEntry:
    name: str
    factory: str  # "module:Class", imported only when the backend is first used
    probe: Callable[[], str | None]  # None if usable, else the reason (with how to fix it)


def _numpy_probe() -> str | None:
    return None


def _numba_probe() -> str | None:
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install 'fastnn[jit]')"
    try:
        import numba  # noqa: F401  (importing compiles nothing)
    except Exception as exc:  # a broken install (e.g. llvmlite mismatch) is a reason, not a crash
        return f"numba is installed but cannot be imported: {exc}"
    return None


_PROBE_KERNEL = 'extern "C" __global__ void fastnn_probe(float* x) { x[threadIdx.x] += 1.0f; }'


def _cupy_probe() -> str | None:
    """Once (cached by ``_probe``), never at import: a device must exist, NVRTC must compile and
    run a tiny kernel, and cuBLAS must multiply, since the backend needs all three. (Counting
    devices alone let ``auto`` pick CuPy on a machine with a driver but no NVRTC, and the first
    launch then failed with "CuPy failed to load libnvrtc.so.12".)"""
    if importlib.util.find_spec("cupy") is None:
        return ("CuPy is not installed (pip install 'fastnn[cuda12]' or 'fastnn[cuda13]' on a machine "
                "with an NVIDIA GPU)")
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, a broken install: all say why
        return f"CuPy is installed but no CUDA device is usable: {exc}"
    if count < 1:
        return "CuPy is installed but no CUDA device is usable: the driver reports 0 devices"
    from .cuda_libraries import preload

    preload()  # NVRTC and cuBLAS from NVIDIA's wheels (the cuda12/cuda13 extras) where the system has none
    steps = (("compile and run a kernel (NVRTC)", _probe_kernel), ("multiply with cuBLAS", _probe_cublas))
    for what, step in steps:
        try:
            step(cupy)
        except Exception as exc:  # a missing libnvrtc/libcublas, an unsupported GPU, ...
            return (f"CuPy sees {count} CUDA device(s) but cannot {what}: {type(exc).__name__}: {exc} "
                    "(pip install 'fastnn[cuda12]' or 'fastnn[cuda13]' brings NVIDIA's NVRTC and cuBLAS "
                    "wheels, which fastnn loads; or install a CUDA toolkit)")
    return None


def _probe_kernel(cupy) -> None:
    x = cupy.zeros(32, dtype=cupy.float32)
    cupy.RawKernel(_PROBE_KERNEL, "fastnn_probe")((1,), (32,), (x,))
    if float(x.sum()) != 32.0:
        raise RuntimeError(f"the probe kernel computed {float(x.sum())} instead of 32")


def _probe_cublas(cupy) -> None:
    a = cupy.ones((4, 4), dtype=cupy.float32)
    if float((a @ a).sum()) != 64.0:
        raise RuntimeError("a 4x4 product of ones did not sum to 64")


REGISTRY: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry("numpy", "fastnn.backends.numpy_backend:NumpyBackend", _numpy_probe),
        BackendEntry("numba", "fastnn.backends.numba_backend:NumbaBackend", _numba_probe),
        BackendEntry("cupy", "fastnn.backends.cupy_backend:CupyBackend", _cupy_probe),
    )
}
VALID_NAMES = (*REGISTRY, "auto")


_probes: dict[str, str | None] = {}
_probes_lock = threading.Lock()


def _probe(name: str) -> str | None:
    """The probe's verdict for ``name``, run once per process (under a lock)."""
    if name not in _probes:
        with _probes_lock:
            if name not in _probes:
                _probes[name] = REGISTRY[name].probe()
    return _probes[name]


def available_backends() -> dict[str, str | None]:
    """Every known backend name -> ``None`` if it is usable here, else the reason it is not."""
    return {name: _probe(name) for name in REGISTRY}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in VALID_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {list(VALID_NAMES)}")
    return name


def resolve_auto() -> str:
    """The backend ``"auto"`` stands for on this machine."""
    return next(name for name in AUTO_ORDER if _probe(name) is None)


_instances: dict[str, Backend] = {}
_instances_lock = threading.Lock()


def _instance(name: str) -> Backend:
    """The one instance of backend ``name`` in this process (built under a lock: threads that
    ask at once all get the same instance, so their layers combine)."""
    instance = _instances.get(name)
    if instance is None:
        with _instances_lock:
            instance = _instances.get(name)
            if instance is None:
                module_name, class_name = REGISTRY[name].factory.split(":")
                instance = _instances[name] = getattr(importlib.import_module(module_name), class_name)()
    return instance


def backend_for(name: str | Backend) -> Backend:
    """The backend instance for a name (``"auto"`` resolved), raising ``BackendUnavailable``
    with the reason and an install hint when it cannot run here."""
    if isinstance(name, Backend):
        return name
    name = _check_name(name)
    if name == "auto":
        name = resolve_auto()
    reason = _probe(name)
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return _instance(name)


_current: ContextVar[Backend | None] = ContextVar("fastnn_backend", default=None)


def default_backend_name() -> str:
    """The backend name ``FASTNN_BACKEND`` selects (``"auto"`` when unset), checked: an unknown
    value raises ``ValueError`` naming the variable."""
    name = os.environ.get("FASTNN_BACKEND", "auto").strip() or "auto"
    if name not in VALID_NAMES:
        raise ValueError(f"FASTNN_BACKEND={name!r} is not a backend; expected one of {list(VALID_NAMES)}")
    return name


def get_backend() -> Backend:
    """The current backend; on first use, the one named by ``FASTNN_BACKEND`` (default ``auto``)."""
    backend = _current.get()
    if backend is None:
        backend = backend_for(default_backend_name())
        _current.set(backend)
    return backend


def set_backend(name: str) -> Backend:
    """Make ``name`` (``"numpy" | "numba" | "cupy" | "auto"``) the current backend and return it."""
    backend = backend_for(name)
    _current.set(backend)
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """``with use_backend("numpy"): ...`` selects a backend for the block only."""
    token = _current.set(backend_for(name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
