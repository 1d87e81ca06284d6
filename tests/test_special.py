"""NumPy-only special functions behind the reference kernels, against the math module."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn.kernels.numpy import special

# relative error bounds (float32's is a few ulp: its Chebyshev series is truncated to 13 terms)
ERFC_RTOL = {np.float64: 5e-13, np.float32: 1e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_erfc_matches_math_erfc(dtype):
    x = np.concatenate([np.linspace(-7, 27, 100001), [0.0, 0.5, -0.5, 0.4999999, 0.5000001, 1e-300, -1e-30]])
    x = x.astype(dtype)
    out = special.erfc(x.copy(), np.empty_like(x))
    truth = np.array([math.erfc(float(v)) for v in x])
    resolvable = truth > np.finfo(dtype).tiny * 1e3  # below that the dtype cannot hold the value
    np.testing.assert_allclose(out[resolvable], truth[resolvable], rtol=ERFC_RTOL[dtype])
    assert np.all(np.abs(out[~resolvable]) <= np.finfo(dtype).tiny * 1e3)


def test_erfc_special_values_and_aliasing():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 1.0])
    expected = [0.0, 2.0, np.nan, 1.0, math.erfc(1.0)]
    np.testing.assert_allclose(special.erfc(x, np.empty_like(x)), expected, rtol=1e-14)
    np.testing.assert_allclose(special.erfc(x, x), expected, rtol=1e-14)  # out may alias x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_and_softplus_are_exact_everywhere(dtype):
    z = np.array([-1e30, -745.0, -100.0, -30.0, -1.0, 0.0, 1e-8, 2.0, 30.0, 800.0, 1e30], dtype=dtype)
    sig = np.array([1 / (1 + math.exp(-v)) if v > -700 else math.exp(v) if v > -745 else 0.0 for v in z.astype(float)])
    soft = np.array([max(v, 0) + math.log1p(math.exp(-abs(v))) for v in z.astype(float)])
    tiny = np.finfo(dtype).tiny
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no warning may escape
        np.testing.assert_allclose(special.sigmoid(z, np.empty_like(z)), sig, rtol=4 * np.finfo(dtype).eps, atol=tiny)
        np.testing.assert_allclose(special.softplus(z, np.empty_like(z)), soft, rtol=4 * np.finfo(dtype).eps, atol=tiny)


def test_fastnn_needs_nothing_but_numpy():
    """Import, train and save with SciPy (and every optional package) made unimportable."""
    code = (
        "import sys\n"
        "for name in ('scipy', 'sklearn', 'numba', 'cupy', 'tqdm', 'matplotlib', 'threadpoolctl'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np, fastnn\n"
        "X, y = fastnn.datasets.xor()\n"
        "net = fastnn.Network([fastnn.Linear(2, 8, 'gelu', seed=0), fastnn.Linear(8, 1, 'sigmoid', seed=1)])\n"
        "net.fit(X, y, 'bce', fastnn.Adam(0.05), epochs=300, batch_size=4, progress=False)\n"
        "print((net.predict(X) > 0.5).astype(int).ravel().tolist())\n"
        "try:\n"
        "    fastnn.datasets.digits()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}  # auto: whatever is importable
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[0, 1, 1, 0]"
    assert "pip install 'fastnn[data]'" in lines[1]
