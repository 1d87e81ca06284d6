"""Backend selection: names, reasons, context variables, the environment, and a lazy import."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import fastnn
from fastnn.backends import AUTO_ORDER, REGISTRY, resolve_auto


def test_available_backends_lists_every_name_with_a_reason():
    available = fastnn.available_backends()
    assert set(available) == {"numpy", "numba", "cupy"}
    assert available["numpy"] is None  # the reference is always there
    for name, reason in available.items():
        assert reason is None or (isinstance(reason, str) and reason), name


@pytest.mark.parametrize("name", ["numpy", "numba", "cupy"])
def test_unusable_backend_raises_with_the_reason(name, monkeypatch):
    from fastnn import backends

    # this machine's reason, or (where the backend is usable here) one the probe could give
    reason = fastnn.available_backends()[name] or f"{name} made unusable for this test"
    monkeypatch.setitem(backends._probes, name, reason)
    with pytest.raises(fastnn.BackendUnavailable) as info:
        fastnn.set_backend(name)
    assert reason in str(info.value) and name in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_auto_picks_the_first_usable_in_order():
    available = fastnn.available_backends()
    expected = next(name for name in AUTO_ORDER if available[name] is None)
    assert resolve_auto() == expected
    with fastnn.use_backend("auto") as backend:
        assert backend.name == expected


def test_use_backend_restores_and_set_backend_returns_the_instance():
    before = fastnn.get_backend()
    with fastnn.use_backend("numpy") as backend:
        assert fastnn.get_backend() is backend and backend.name == "numpy"
    assert fastnn.get_backend() is before
    assert fastnn.set_backend("numpy") is fastnn.get_backend()


def test_selection_is_per_thread():
    seen = {}

    def worker():
        with fastnn.use_backend("numpy"):
            seen["inside"] = fastnn.get_backend().name
        seen["after"] = fastnn.get_backend().name

    main_backend = fastnn.get_backend()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"inside": "numpy", "after": resolve_auto()}
    assert fastnn.get_backend() is main_backend


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_environment_variable_is_read_lazily():
    ok = _python("import fastnn; print(fastnn.get_backend().name)", FASTNN_BACKEND="numpy")
    assert ok.returncode == 0 and ok.stdout.strip() == "numpy"
    bad = _python("import fastnn\nprint('imported')\nfastnn.get_backend()", FASTNN_BACKEND="tpu")
    assert "imported" in bad.stdout  # importing never fails on a bad setting
    assert "FASTNN_BACKEND='tpu' is not a backend" in bad.stderr


def test_import_probes_nothing_and_loads_no_kernels():
    code = ("import sys, fastnn, fastnn.backends as b\n"
            "print(len(b._probes), 'numba' in sys.modules, 'cupy' in sys.modules,\n"
            "      'fastnn.kernels.numpy.activations' in sys.modules)")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "False", "False", "False"]


def test_registry_factories_name_real_modules_for_usable_backends():
    for name, reason in fastnn.available_backends().items():
        if reason is None:
            assert fastnn.set_backend(name).name == name
    assert set(REGISTRY) <= set(fastnn.backends.VALID_NAMES)


class _CupyWithoutNvrtc:
    """Just enough of ``cupy`` for the probe: a device, and a kernel launch that fails the way
    CuPy does when NVRTC is missing (or, with ``cublas_broken``, a matmul that fails)."""

    def __init__(self, cublas_broken: bool = False) -> None:
        import importlib.machinery
        import types

        import numpy as np

        self.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        self.float32, self.zeros, self.cublas_broken = np.float32, np.zeros, cublas_broken

    def RawKernel(self, code, name):  # noqa: N802 (CuPy's name)
        if not self.cublas_broken:
            raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open shared "
                               "object file")

        def launch(grid, block, args):
            args[0][: block[0]] += 1

        return launch

    def ones(self, *args, **kwargs):
        raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")


@pytest.mark.parametrize("cublas_broken,what", [(False, "compile and run a kernel"), (True, "multiply with cuBLAS")])
def test_auto_falls_back_when_cupy_cannot_compile_or_multiply(monkeypatch, cublas_broken, what):
    """A driver and a device but no NVRTC (or no cuBLAS): the probe says why, and auto picks the
    next backend instead of crashing on the first launch."""
    import sys

    from fastnn import backends

    monkeypatch.setitem(sys.modules, "cupy", _CupyWithoutNvrtc(cublas_broken))
    monkeypatch.setattr(backends, "_probes", {})
    reason = backends.available_backends()["cupy"]
    assert reason is not None and f"cannot {what}" in reason
    assert backends.resolve_auto() != "cupy"
    assert "libnvrtc" in reason or "CUBLAS" in reason
