"""Shared fixtures: every test that takes ``backend`` runs once per usable backend."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.backends import REGISTRY, backend_for

USABLE = [name for name, reason in fastnn.available_backends().items() if reason is None]
# The numba backend runs small problems with serial builds of its kernels and large ones with
# parallel builds; "numba-parallel" forces the parallel builds so both are checked everywhere.
VARIANTS = USABLE + (["numba-parallel"] if "numba" in USABLE else [])


@pytest.fixture(params=VARIANTS)
def backend(request, monkeypatch):
    """A usable backend (or backend variant), made current for the test."""
    name = request.param
    if name == "numba-parallel":
        from fastnn.kernels.numba import jit

        monkeypatch.setattr(jit, "PARALLEL_MIN_ELEMENTS", 0)
        name = "numba"
    with fastnn.use_backend(name):
        yield backend_for(name)


@pytest.fixture(autouse=True)
def _restore_backend_selection():
    """Tests may call set_backend; each starts from and leaves the session's selection."""
    from fastnn.backends import _current

    token = _current.set(_current.get())
    yield
    _current.reset(token)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def tolerance(dtype) -> dict[str, float]:
    """Elementwise kernels against the float64 reference."""
    return {"rtol": 2e-5, "atol": 2e-6} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def pytest_report_header(config):
    unusable = {name: why for name, why in fastnn.available_backends().items() if why}
    lines = [f"fastnn backends under test: {', '.join(VARIANTS)}"]
    lines += [f"  not under test: {name} ({why})" for name, why in unusable.items()]
    return lines


assert set(REGISTRY) >= {"numpy", "numba", "cupy"}
