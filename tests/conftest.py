"""Shared fixtures: every test that takes ``backend`` runs once per usable backend."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

import fastnn
from fastnn.backends import REGISTRY, backend_for
from support import fake_cupy

USABLE = [name for name, reason in fastnn.available_backends().items() if reason is None]
# The numba backend runs small problems with serial builds of its kernels and large ones with
# parallel builds; "numba-parallel" forces the parallel builds so both are checked everywhere.
# "cupy-standin" runs the CuPy backend's own code on a NumPy-backed CuPy whose kernels are the
# real CUDA source compiled for the host (tests/support/fake_cupy.py). A real GPU adds "cupy",
# marked gpu: `pytest -m gpu` runs the suite on the device alone.
#
# CI's second run (.ci/run) sets FASTNN_CUPY_STANDIN: every process, this one and those the tests
# start, then imports the strict stand-in as ``cupy`` (tests/support/standin_site), and
# FASTNN_BACKEND=cupy makes it the default backend, as on a machine with a GPU. Tests that take
# ``backend`` ran on the stand-in in the first run already, and tests marked own_backends build
# their own: that run leaves both out and runs the rest on the default backend.
STANDIN_RUN = bool(os.environ.get("FASTNN_CUPY_STANDIN"))
_GPU = pytest.mark.gpu
VARIANTS = [pytest.param(name, marks=_GPU) if name == "cupy" else name for name in USABLE if not
            (STANDIN_RUN and name == "cupy")]
VARIANTS += ["numba-parallel"] if "numba" in USABLE else []
VARIANTS += ["cupy-standin"] if fake_cupy.host_compiler() else []


@pytest.fixture(scope="session")
def host_cuda_library(tmp_path_factory):
    return fake_cupy.build_host_kernels(tmp_path_factory.mktemp("cuda-host"))


def _standin(library, monkeypatch, record):
    fake = fake_cupy.FakeCupy(library, record=record)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from fastnn.backends.cupy_backend import CupyBackend

    return CupyBackend(), fake


@pytest.fixture
def cupy_standin(host_cuda_library, monkeypatch):
    """The CuPy backend on the NumPy-backed stand-in, recording every launch:
    (backend, fake cupy module)."""
    return _standin(host_cuda_library, monkeypatch, record=True)


@pytest.fixture(params=VARIANTS)
def backend(request, monkeypatch):
    """A usable backend (or backend variant), made current for the test."""
    name = request.param
    if name == "numba-parallel":
        from fastnn.kernels.numba import jit

        monkeypatch.setattr(jit, "PARALLEL_MIN_ELEMENTS", 0)
        name = "numba"
    if name == "cupy-standin":
        instance = _standin(request.getfixturevalue("host_cuda_library"), monkeypatch, record=False)[0]
    else:
        instance = backend_for(name)
    with fastnn.use_backend(instance):
        yield instance


@pytest.fixture(autouse=True)
def _restore_backend_selection():
    """Tests may call set_backend; each starts from and leaves the session's selection."""
    from fastnn.backends import _current

    token = _current.set(_current.get())
    yield
    _current.reset(token)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for the test, as in a terminal: a test run started in the
    background inherits SIGINT ignored, and ``fit`` leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def tolerance(dtype) -> dict[str, float]:
    """Elementwise kernels against the float64 reference."""
    return {"rtol": 2e-5, "atol": 2e-6} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def pytest_collection_modifyitems(config, items):
    if not STANDIN_RUN:
        return
    elsewhere = [item for item in items if "backend" in getattr(getattr(item, "callspec", None), "params", {})
                 or item.get_closest_marker("own_backends")]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        left = set(map(id, elsewhere))
        items[:] = [item for item in items if id(item) not in left]


def pytest_report_header(config):
    unusable = {name: why for name, why in fastnn.available_backends().items() if why}
    names = [v if isinstance(v, str) else v.values[0] for v in VARIANTS]
    lines = [f"fastnn backends under test: {', '.join(names)}"]
    lines += [f"  not under test: {name} ({why})" for name, why in unusable.items()]
    if STANDIN_RUN:
        lines.append(f"the CuPy stand-in run: default backend {fastnn.get_backend().name!r} "
                     f"(FASTNN_BACKEND={os.environ.get('FASTNN_BACKEND')!r}), backend-parametrised tests left out")
    return lines


assert set(REGISTRY) >= {"numpy", "numba", "cupy"}
